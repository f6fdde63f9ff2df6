"""Pieces shared by the command-line modules: argument types, drawing samples from a run, writing them."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.cli_guidance import slice_cond
from diffusa.errors import DiffusaError


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def generate(run: Any, n: int, sampler: str, steps: int, seed: int, spacing: str | None,
             options: dict[str, Any], batch: int = 250, callback: Any = None, denoiser: Any = None,
             cond: Any = None) -> torch.Tensor:
    """n samples from a loaded run (or `denoiser`, e.g. a guided one), in batches, reproducible from the seed."""
    from diffusa.samplers import sample

    den = denoiser if denoiser is not None else run.denoiser
    g = torch.Generator().manual_seed(seed)
    x_T = den.process.prior_sample((n, *run.data_shape), generator=g)
    chunks = []
    for i in range(0, n, batch):
        chunks.append(sample(den, x_T[i:i + batch].shape, sampler, steps, generator=g, spacing=spacing,
                             x_T=x_T[i:i + batch], cond=slice_cond(cond, i, i + batch),
                             callback=callback if i == 0 else None, **options))
    return run.to_images(torch.cat(chunks))


def check_out(out: Path) -> None:
    """--out of sample / generate: a PNG grid or an npz of arrays."""
    if out.suffix not in (".png", ".npz"):
        raise DiffusaError(f"--out must end in .png (a grid) or .npz (arrays), got {out.name!r}")


def write_samples(x: torch.Tensor, out: Path, is_image: bool) -> None:
    """A PNG grid, or an npz with the samples (and images as uint8), written atomically."""
    from diffusa.data import unit_to_uint8
    from diffusa.viz import save_samples

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        save_samples(x, out)
        return
    arrays = {"samples": x.numpy().astype(np.float32)}
    if is_image:
        arrays["images"] = unit_to_uint8(x)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)


__all__ = ["check_out", "generate", "positive_int", "write_samples"]
