"""What every dataset source shares: `Dataset` (a whole dataset in memory as tensors: images in [-1, 1]
(N, C, H, W) or points (N, D)), the uint8 <-> [-1, 1] conversions, the index `batches` of training steps, and
`SPLIT_SEED`, which fixes the held-out splits of the built-in datasets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 20240601  # fixes the held-out splits once and for all


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


def resize_images(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Images (N, C, H, W) resized to `size` (a side, or (H, W)): an integer shrink is the area average of each
    block (box filter, as SR3's and cascaded diffusion's low-resolution inputs are made: Saharia et al. 2021,
    Ho et al. 2022); any other size is bilinear with antialiasing. The one resize of built-in data and of
    super-resolution conditions (`diffusa.superres`)."""
    h, w = (size, size) if isinstance(size, int) else size
    if (h, w) == tuple(x.shape[-2:]):
        return x
    if x.shape[-2] % h == 0 and x.shape[-1] % w == 0:
        return F.avg_pool2d(x, (x.shape[-2] // h, x.shape[-1] // w))
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


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
