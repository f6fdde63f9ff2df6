"""What a pipeline returns: the samples in data space, as uint8 images, and the settings that drew them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.checkpoint import MARK, atomic_write, guard_output, mark
from diffusa.errors import DiffusaError

SUFFIXES = (".png", ".npz")


def check_out(path: str | Path, force: bool = False) -> Path:
    """A file to save samples to: a PNG grid or an .npz of arrays (`checkpoint.guard_output`: never a run's own
    file, nor without `force` a file diffusa did not write)."""
    path = guard_output(path, force=force)
    if path.suffix not in SUFFIXES:
        raise DiffusaError(f"samples are saved as .png (a grid) or .npz (arrays), got {path.name!r}")
    return path


def write_samples(x: torch.Tensor, path: str | Path, is_image: bool, force: bool = False) -> Path:
    """A PNG grid (images; a scatter plot of points), or an .npz with `samples` (float32) and, for images,
    `images` (uint8 (N, H, W, C)), and the `diffusa` mark; written to a temporary file of this write alone
    (two processes saving to one --out must not share one), then renamed into place."""
    from diffusa.data import unit_to_uint8
    from diffusa.viz import save_samples

    path = check_out(path, force)
    if path.suffix == ".png":
        save_samples(x, path)
        return path
    arrays = {"samples": x.detach().cpu().numpy().astype(np.float32), MARK: np.array(mark())}
    if is_image:
        arrays["images"] = unit_to_uint8(x)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary's name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


@dataclass
class Samples:
    """Samples drawn by a pipeline.

    samples: float (N, C, H, W) images in [-1, 1] (decoded for a latent model) or (N, D) points, on the CPU.
    settings: how they were drawn (model, n, sampler, steps, spacing, guidance, seed, nfe, ...).
    labels / prompts: the class or prompt asked of each sample, when there was one.
    stopped_at: the step (0-based) at which a callback stopped sampling; the samples are then the x0 predicted
    at that step. None when every step ran.
    """

    samples: torch.Tensor
    settings: dict[str, Any]
    data_kind: str = "image"  # "image" or "points"
    labels: torch.Tensor | None = None
    prompts: list[str] | None = None
    stopped_at: int | None = None

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def is_image(self) -> bool:
        return self.data_kind == "image"

    @property
    def images(self) -> np.ndarray:
        """uint8 (N, H, W, C) pixels."""
        from diffusa.data import unit_to_uint8

        if not self.is_image:
            raise DiffusaError("these samples are points, not images: use .samples")
        return unit_to_uint8(self.samples)

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write a PNG grid (FILE.png) or the arrays (FILE.npz: samples, and images as uint8), atomically; an
        existing file diffusa did not write is replaced only with `force`."""
        return write_samples(self.samples, path, self.is_image, force)


__all__ = ["Samples", "check_out", "write_samples"]
