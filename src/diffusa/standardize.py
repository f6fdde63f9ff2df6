"""Points and user arrays are standardised for training and mapped back when sampled.

Each coordinate is shifted and scaled to mean 0 and standard deviation DATA_STD = 1, the scale of every process's
prior N(0, I) and of its noise levels; EDM's preconditioning is told so (process.sigma_data = 1 unless set;
Karras et al. 2022, Sec. 5). A user's array in other units (coordinates in the hundreds, or far from the origin)
otherwise trains against noise levels meant for unit-scale data (issue 17, item 6). The statistics are the run's
own, saved in config.json ("standardize"), so samples come back in the data's units. Images keep their [-1, 1]
range; `wanted` says when "auto" standardises.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusa.config import STANDARDIZE as CHOICES
from diffusa.data import Dataset
from diffusa.errors import DiffusaError

DATA_STD = 1.0  # the prior's scale


UNIT_SCALE = (1 / 3, 3.0)  # "auto" leaves points alone whose every coordinate has a std in this range and |mean| < std


def wanted(choice: str, data: Dataset) -> bool:
    """data.standardize: "on" standardises points, "off" never, "auto" points that are not already at about unit
    scale (a coordinate's std outside UNIT_SCALE, or its mean farther from 0 than its std): the built-in toys are,
    a user's array in other units (metres, pixels, degrees) is not. Images are never standardised."""
    if choice not in CHOICES:
        raise DiffusaError(f"unknown data.standardize {choice!r}; known: {', '.join(CHOICES)}")
    if data.kind != "points":
        if choice == "on":
            raise DiffusaError("data.standardize=\"on\" applies to points; images are already in [-1, 1]")
        return False
    if choice != "auto":
        return choice == "on"
    if data.x.numel() == 0:  # no coordinates to measure (the network's checks refuse such data)
        return False
    stats = data_stats(data.x)
    lo, hi = UNIT_SCALE
    return any(not lo <= s <= hi or abs(m) > s for m, s in zip(stats["mean"], stats["std"], strict=True))


def data_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per-coordinate mean and standard deviation of points (N, D); a constant coordinate keeps std 1."""
    x = x.double()
    mean, std = x.mean(0), x.std(0) if len(x) > 1 else torch.ones(x.shape[1:], dtype=torch.float64)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return {"mean": mean.tolist(), "std": std.tolist()}


def check_stats(stats: Any, dims: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of a run's "standardize" record: `dims` finite numbers each, std > 0."""
    ok = isinstance(stats, dict) and all(
        isinstance(stats.get(k), list) and len(stats[k]) == dims
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stats[k])
        for k in ("mean", "std"))
    if not ok or min(stats["std"]) <= 0:
        raise DiffusaError(f"{where}: standardize must hold {dims} finite means and {dims} positive stds; the file "
                           "is damaged")
    return torch.tensor(stats["mean"], dtype=torch.float32), torch.tensor(stats["std"], dtype=torch.float32)


def standardized(data: Dataset, stats: dict[str, list[float]]) -> Dataset:
    """The dataset with every coordinate at mean 0, std DATA_STD (labels and captions kept)."""
    mean, std = check_stats(stats, data.shape[0], "standardize")
    return Dataset(data.name, (data.x - mean) / std * DATA_STD, data.labels, data.kind, data.num_classes,
                   data.captions)


class Destandardize:
    """Model-space points -> the data's units: z / DATA_STD * std + mean (the inverse of `standardized`)."""

    def __init__(self, stats: dict[str, list[float]], dims: int | None = None, where: str = "standardize") -> None:
        self.mean, self.std = check_stats(stats, len(stats.get("mean", [])) if dims is None else dims, where)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z / DATA_STD * self.std.to(z.device) + self.mean.to(z.device)


__all__ = ["CHOICES", "DATA_STD", "Destandardize", "check_stats", "data_stats", "standardized", "wanted"]
