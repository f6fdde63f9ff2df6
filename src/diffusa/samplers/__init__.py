"""Stateless samplers with one signature: sampler(denoiser, x_T, grid, *, cond, generator, callback, **opts)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM, Process
from diffusa.samplers.ancestral import sample_ancestral
from diffusa.samplers.common import Callback
from diffusa.samplers.consistency import consistency_grid, sample_consistency
from diffusa.samplers.ddim import sample_ddim
from diffusa.samplers.dpm_solver import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m
from diffusa.samplers.euler import sample_euler, sample_euler_ancestral
from diffusa.samplers.heun import sample_heun
from diffusa.samplers.ode import sample_ode_euler, sample_ode_heun, sample_rk4, sample_rk45
from diffusa.samplers.sde import sample_euler_maruyama, sample_pc, sample_reverse_diffusion
from diffusa.samplers.unipc import sample_unipc
from diffusa.schedules import (
    check_steps,
    discrete_grid,
    karras_grid,
    log_snr_uniform_grid,
    times_of_log_snr,
    uniform_grid,
)

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ancestral": sample_ancestral,
    "ddpm": sample_ancestral,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_3m": sample_dpmpp_3m,
    "euler_maruyama": sample_euler_maruyama,
    "reverse_diffusion": sample_reverse_diffusion,
    "pc": sample_pc,
    "ode_euler": sample_ode_euler,
    "ode_heun": sample_ode_heun,
    "rk4": sample_rk4,
    "rk45": sample_rk45,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "consistency": sample_consistency,  # a consistency model's multistep sampling (docs/distillation.md)
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look a sampler up by name."""
    if name not in SAMPLERS:
        raise DiffusaError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def sampler_options(name: str) -> list[str]:
    """The sampler-specific keyword options of a sampler (beyond cond, generator, callback)."""
    params = inspect.signature(get_sampler(name)).parameters
    return [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("cond", "generator", "callback")]


# samplers whose default grid is EDM's: a trapezoid over the huge first interval of a chain's own grid
# (sigma/alpha ~ 2e4 at t = 1 for cosine DDPM) overshoots, so they start at sigma_hat <= 80 (Karras et al. 2022)
KARRAS_DEFAULT = {"heun"}
# score_sde's samplers (reverse SDE, and the probability-flow ODE in t) end their default grid near the data, as
# score_sde does: at t = 1e-3 for a continuous process, at the chain's first step for a discrete one, so the final
# denoising step starts at sigma ~ 0.01 (a uniform grid's last time 1 / steps leaves sigma ~ 0.2 on VP at 20 steps)
SCORE_SDE_DEFAULT = {"euler_maruyama", "reverse_diffusion", "pc", "ode_euler", "ode_heun", "rk4", "rk45"}
SCORE_SDE_T_EPS = 1e-3


def level_range(proc: Any, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """[sigma_min, sigma_max] of noise levels sigma_hat = sigma / alpha, narrowed to the process's trained levels
    (from its least, the chain's first step or t = 1e-5 for a continuous process, to its greatest, at t = 1)."""
    t_lo = 1.0 / proc.num_steps if isinstance(proc, DiscreteDDPM) else 1e-5
    lam_hi, lam_lo = proc.log_snr(torch.tensor([t_lo, 1.0], dtype=torch.float64)).tolist()
    return (max(sigma_min, math.exp(-lam_hi / 2) * (1 + 1e-6)),
            min(sigma_max, math.exp(-lam_lo / 2) * (1 - 1e-6)))


def default_karras_grid(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """Karras rho = 7 grid over sigma_hat = sigma / alpha in [0.002, 80] narrowed to the process's trained noise
    levels (`level_range`)."""
    return karras_grid(denoiser.process, steps, *level_range(denoiser.process, 0.002, 80.0))


# The "logsnr-unit" grid's noise levels sigma / alpha: data of unit scale (standardised points, diffusa.standardize)
# take their shape between these; below UNIT_SIGMA_MIN the last step's denoised estimate is the sample. With the
# exact denoisers of four user-like 2-D mixtures (narrow modes of std 0.05-0.2 after standardising), UniPC at 10
# steps on it (then with its top at 80) draws within 1.6x the energy-distance floor on every process, against 1.5-21x
# on the processes' default grids; a last level of 0.02 gives 2.0x, 0.12 gives 2.2x (docs/benchmarks.md, the 2-D
# points section; tests/test_mixture_oracle.py holds the top-20 grid under 2x). The
# top is 20, not EDM's 80: unit-scale data are noise long before (SNR 1/400), and the steps spent above 20 are taken
# from where the shape forms -- over 24 seeds on the toy benchmark's 48 trained cells, UniPC at 10 steps is within
# 2x the floor on all 48 (worst 1.76 +- 0.13) with the top at 20, on 47 with it at 80 (ddpm on `metres` 2.20 +- 0.33)
UNIT_SIGMA_MIN, UNIT_SIGMA_MAX = 0.05, 20.0


def unit_log_snr_grid(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """steps levels uniform in log-SNR (Lu et al. 2022's spacing) over sigma / alpha in [UNIT_SIGMA_MIN,
    UNIT_SIGMA_MAX] narrowed to the process's levels (`level_range`), then t = 0: the same levels on every process,
    where "logsnr" spans each process's own range (VP's 152 to 0.01, flow's 1e6 to 1e-3)."""
    check_steps(steps)
    lo, hi = level_range(denoiser.process, UNIT_SIGMA_MIN, UNIT_SIGMA_MAX)
    if not lo < hi:
        raise DiffusaError(f"spacing 'logsnr-unit' needs noise levels sigma/alpha in [{UNIT_SIGMA_MIN}, "
                           f"{UNIT_SIGMA_MAX}]; this process's levels {denoiser.process.to_dict()} do not reach them")
    lam = torch.linspace(-2 * math.log(hi), -2 * math.log(lo), steps, dtype=torch.float64)
    return times_of_log_snr(denoiser.process, lam, f"log-SNR grid on sigma [{lo:.3g}, {hi:.3g}]")


# grids of noise levels for any process; the others pick steps of a discrete chain
LEVEL_SPACINGS = ("uniform", "logsnr", "logsnr-unit", "karras")
CHAIN_SPACINGS = ("leading", "trailing", "even", "ddim")


def make_grid(denoiser: Denoiser, steps: int, spacing: str | None = None, sampler: str | None = None) -> torch.Tensor:
    """The time grid a sampler walks. `spacing`: "karras" (EDM's rho = 7 levels, `default_karras_grid`),
    "logsnr" (uniform in log-SNR from t = 1 to the least trained level: t = 1e-3, or a chain's first step),
    "logsnr-unit" (uniform in log-SNR over the levels where unit-scale data take shape, `unit_log_snr_grid`),
    "uniform" (uniform in t to 0) on any process; "leading", "trailing", "even" or "ddim" pick a discrete chain's
    steps. Default: Karras for Heun; for score_sde's samplers (SCORE_SDE_DEFAULT) uniform in t down to t = 1e-3,
    or the chain's steps from T down to 1 ("even"); otherwise the chain's own steps, trailing spacing (Lin et al.
    2024), for a discrete process, and uniform in t for a continuous one."""
    check_steps(steps)
    proc = denoiser.process
    discrete = isinstance(proc, DiscreteDDPM)
    if spacing is not None and spacing not in LEVEL_SPACINGS + CHAIN_SPACINGS:
        raise DiffusaError(f"unknown spacing {spacing!r}; known: {', '.join(LEVEL_SPACINGS + CHAIN_SPACINGS)}")
    if spacing in CHAIN_SPACINGS and not discrete:
        raise DiffusaError(f"spacing {spacing!r} picks steps of a discrete chain; this process is continuous: "
                           f"use {', '.join(LEVEL_SPACINGS)}")
    if sampler == "consistency" and spacing is None:  # T, then times among a consistency model's levels
        return consistency_grid(denoiser, steps)
    if spacing == "karras" or (sampler in KARRAS_DEFAULT and spacing is None):
        return default_karras_grid(denoiser, steps)
    if spacing == "logsnr-unit":
        return unit_log_snr_grid(denoiser, steps)
    if spacing == "logsnr":
        return log_snr_uniform_grid(proc, steps, t_min=1.0 / proc.num_steps if discrete else SCORE_SDE_T_EPS)
    if spacing == "uniform":
        return uniform_grid(steps)
    if sampler in SCORE_SDE_DEFAULT and spacing is None:
        if discrete:
            return discrete_grid(proc.num_steps, steps, "even")
        return torch.cat([torch.linspace(1, SCORE_SDE_T_EPS, steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])
    if discrete:
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
    known = sampler_options(sampler)
    for key in options:
        if key not in known:
            raise DiffusaError(f"sampler {sampler!r} has no option {key!r}; its options: {', '.join(known) or 'none'}")
    if len(shape) < 1 or shape[0] < 1:
        raise DiffusaError(f"need a positive number of samples, got shape {tuple(shape)}")
    if grid is None:
        grid = make_grid(denoiser, steps, spacing, sampler)
    if x_T is None:  # a given x_T is the state at grid[0] (the pipeline scales its own draw, img2img noises)
        x_T = denoiser.process.prior_sample(tuple(shape), generator=generator, device=device)
        x_T = x_T * start_scale(denoiser.process, grid)
    with torch.no_grad():
        return fn(denoiser, x_T, grid, cond=cond, generator=generator, callback=callback, **options)


def start_scale(process: Process, grid: torch.Tensor) -> float:
    """What x_T drawn from the prior at t = 1 (`Process.prior_sample`) is multiplied by to start a grid at
    t0 = grid[0]: sigma(t0) / sigma(1) on a variance-exploding process (alpha = 1: VE, EDM), whose prior at t0 is
    N(0, sigma(t0)^2) (Song et al. 2021, eq. 31; Karras et al. 2022, Algorithm 1) — a grid clipped below the
    trained top, e.g. Karras' sigma 80 on a VE of sigma_max 348, else starts an order of magnitude too loud; 1 where
    the grid starts at t = 1, and on the variance-preserving family and flow, whose marginals near t = 1 keep the
    prior's scale (alpha^2 + sigma^2 ~ 1 for data of unit scale)."""
    t0 = float(grid[0])
    if t0 >= 1.0:
        return 1.0
    one = torch.ones((), dtype=torch.float64)
    a1, s1 = process.alpha_sigma(one)
    if abs(float(a1) - 1.0) > 1e-9:
        return 1.0
    return float(process.alpha_sigma(one * t0)[1] / s1)


__all__ = [
    "CHAIN_SPACINGS",
    "LEVEL_SPACINGS",
    "SAMPLERS",
    "get_sampler",
    "level_range",
    "make_grid",
    "sample",
    "sample_ancestral",
    "sample_consistency",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_ode_euler",
    "sample_ode_heun",
    "sample_pc",
    "sample_reverse_diffusion",
    "sample_rk4",
    "sample_rk45",
    "sample_unipc",
    "sampler_options",
    "start_scale",
    "unit_log_snr_grid",
]
