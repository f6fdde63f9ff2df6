"""`.npz` files: which array holds the examples, how it is read (uint8 images, float points, float images),
and the optional `labels` and `cond_images` that go with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffusa.data.base import Dataset, uint8_to_unit
from diffusa.errors import DiffusaError

# .npz arrays that go with the data, never the data itself ("diffusa": the mark of a file `diffusa sample` wrote)
AUX_ARRAYS = ("labels", "cond_images", "diffusa")
MAX_SCALE = 1e4  # |value| of float data: diffusion's noise levels assume data of about unit scale
PREFERRED_ARRAYS = ("images", "x")  # the data array when present (`diffusa sample` writes samples + images)


def _npz_data_key(path: Path, arrays: dict[str, np.ndarray], array: str | None) -> str:
    """The name of the array to train on: `array` if given, else images, else x, else the only other one."""
    if array is not None:
        if array in AUX_ARRAYS:
            raise DiffusaError(f"data.array={array!r} names an auxiliary array of {path}; name the examples instead")
        if array not in arrays:
            raise DiffusaError(f"{path} has no array {array!r} (data.array); it holds {', '.join(sorted(arrays))}")
        return array
    for key in PREFERRED_ARRAYS:
        if key in arrays:
            return key
    rest = sorted(k for k in arrays if k not in AUX_ARRAYS)
    if len(rest) == 1:
        return rest[0]
    if not rest:
        held = f"only {', '.join(sorted(arrays))}" if arrays else "no arrays"
        raise DiffusaError(f"{path} holds {held}; save the examples as 'images' (uint8) or 'x' (float)")
    raise DiffusaError(f"{path} holds several arrays that could be the examples ({', '.join(rest)}); "
                       "pick one with --set data.array=NAME")


def _npz_images_or_points(path: Path, key: str, a: np.ndarray) -> tuple[torch.Tensor, str]:
    """An .npz array -> (float32 tensor, kind), by dtype and rank: uint8 (N, H, W[, C]) images, float (N, D)
    points, float (N, C, H, W) images already in [-1, 1]. Non-finite values are refused."""
    if a.dtype == np.uint8 and a.ndim in (3, 4):
        if a.ndim == 4 and not 1 <= a.shape[3] <= 4:
            raise DiffusaError(f"{path}: uint8 array {key!r} has shape {a.shape}, read as (N, H, W, C) with "
                               f"{a.shape[3]} channels; if it is (N, C, H, W), save it transposed to (N, H, W, C)")
        return uint8_to_unit(a), "image"
    if np.issubdtype(a.dtype, np.floating) and a.ndim in (2, 4):
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            x = torch.from_numpy(a.astype(np.float32))
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DiffusaError(f"{path}: array {key!r} holds {bad} non-finite values (NaN or inf, or beyond "
                               "float32); replace them or drop those examples")
        if x.numel() and float(x.abs().max()) > MAX_SCALE:
            raise DiffusaError(f"{path}: array {key!r} holds values up to {float(x.abs().max()):.3g}; diffusion "
                               f"expects data of about unit scale (|x| <= {MAX_SCALE:g}): standardise it first")
        return x, "points" if a.ndim == 2 else "image"
    raise DiffusaError(f"{path}: array {key!r} is {a.dtype} of shape {a.shape}; expected uint8 images (N, H, W) or "
                       "(N, H, W, C), float points (N, D), or float images (N, C, H, W) in [-1, 1]")


def load_npz(path: Path, array: str | None = None) -> Dataset:
    """An .npz file: the examples (see `_npz_data_key` for which array, `_npz_images_or_points` for how it is
    read), optional `labels` (one integer per example) and `cond_images` (images to condition on, any size)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # whatever numpy or zipfile raise on a truncated or corrupt file
        raise DiffusaError(f"cannot read {path} as .npz: {type(e).__name__}: {e}") from None
    key = _npz_data_key(path, arrays, array)
    if arrays[key].ndim > 0 and len(arrays[key]) == 0:
        raise DiffusaError(f"{path} holds no examples (array {key!r} is empty)")
    x, kind = _npz_images_or_points(path, key, arrays[key])
    n = len(x)
    labels = None
    if "labels" in arrays:
        lab = arrays["labels"]
        if lab.ndim != 1 or len(lab) != n:
            raise DiffusaError(f"{path}: 'labels' must have one entry per example ({n}), got shape {lab.shape}")
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_) or (lab < 0).any():
            raise DiffusaError(f"{path}: 'labels' must be integers >= 0 (class indices), got {lab.dtype} with "
                               f"range [{lab.min()}, {lab.max()}]")
        labels = torch.from_numpy(lab.astype(np.int64))
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    cond_images = None
    if "cond_images" in arrays:
        cond_images, cond_kind = _npz_images_or_points(path, "cond_images", arrays["cond_images"])
        # any size: the network resizes it to its input (a low-resolution image for super-resolution, SR3)
        if kind != "image" or cond_kind != "image" or len(cond_images) != n:
            raise DiffusaError(f"{path}: 'cond_images' must be one image per example, i.e. ({n}, C, H, W) for "
                               f"{kind} data {tuple(x.shape)}; got {tuple(cond_images.shape)}")
    return Dataset(path.stem, x, labels, kind, num_classes, cond_images=cond_images)
