"""Stateless samplers with one signature: sampler(denoiser, x_T, grid, *, cond, generator, callback, **opts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM
from diffusa.samplers.ancestral import sample_ancestral
from diffusa.samplers.common import Callback
from diffusa.samplers.ddim import sample_ddim
from diffusa.samplers.dpm_solver import sample_dpmpp_2m
from diffusa.samplers.euler import sample_euler, sample_euler_ancestral
from diffusa.samplers.heun import sample_heun
from diffusa.schedules import check_steps, discrete_grid, uniform_grid

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ancestral": sample_ancestral,
    "ddpm": sample_ancestral,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_ancestral": sample_euler_ancestral,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look a sampler up by name."""
    if name not in SAMPLERS:
        raise DiffusaError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def make_grid(denoiser: Denoiser, steps: int, spacing: str | None = None) -> torch.Tensor:
    """The default grid: the chain's own steps, trailing spacing (Lin et al. 2024); else uniform in t."""
    check_steps(steps)
    proc = denoiser.process
    if isinstance(proc, DiscreteDDPM):
        return discrete_grid(proc.num_steps, steps, spacing or "trailing")
    return uniform_grid(steps)


def sample(denoiser: Denoiser, shape: tuple[int, ...], sampler: str = "ddim", steps: int = 50, *,
           generator: torch.Generator | None = None, cond: Any = None, grid: torch.Tensor | None = None,
           spacing: str | None = None, callback: Callback | None = None, device: torch.device | str = "cpu",
           x_T: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """Draw samples: x_T from the prior (with `generator`), then `sampler` over the grid.

    The one entry point: `diffusa.sample(denoiser, (64, 1, 28, 28), sampler="ddim", steps=50, generator=g)`.
    """
    fn = get_sampler(sampler)
    if len(shape) < 1 or shape[0] < 1:
        raise DiffusaError(f"need a positive number of samples, got shape {tuple(shape)}")
    if grid is None:
        grid = make_grid(denoiser, steps, spacing)
    if x_T is None:
        x_T = denoiser.process.prior_sample(tuple(shape), generator=generator, device=device)
    with torch.no_grad():
        return fn(denoiser, x_T, grid, cond=cond, generator=generator, callback=callback, **options)


__all__ = ["SAMPLERS", "get_sampler", "make_grid", "sample", "sample_ancestral", "sample_ddim", "sample_dpmpp_2m",
           "sample_euler", "sample_euler_ancestral", "sample_heun"]
