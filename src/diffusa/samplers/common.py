"""Helpers shared by samplers: noise draws and the callback contract."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffusa.errors import DiffusaError

Callback = Callable[[dict[str, Any]], None]


def check_eta(eta: float) -> float:
    """A sampler's stochasticity eta must be a finite number >= 0 (a negative or NaN one would silently mean 0)."""
    if not math.isfinite(eta) or eta < 0:
        raise DiffusaError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `generator` (on its device), then moved to x."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def step_times(grid: torch.Tensor, i: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, s) for step i of a decreasing grid, each as a float64 tensor of shape (batch,)."""
    t = grid[i].to(torch.float64).expand(batch).to(device)
    s = grid[i + 1].to(torch.float64).expand(batch).to(device)
    return t, s
