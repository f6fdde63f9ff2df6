"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023): the consistency function as a Denoiser.

A consistency function maps any point x_t of a probability-flow ODE trajectory to the trajectory's end point at
the least noise level sigma_min. It is written in EDM's scaled variables x_hat = x / alpha, sigma_hat =
sigma / alpha (Karras et al. 2022, eq. 4 with s(t) = alpha(t)), where every process's ODE is the same, so one
parameterization serves ddpm, vp, subvp, ve, edm and flow alike:

    f(x, t) = c_skip(sh) x_hat + c_out(sh) F,   c_skip = sd^2 / ((sh - sh_min)^2 + sd^2),
                                                 c_out  = sd (sh - sh_min) / sqrt(sd^2 + sh^2)

(Song et al. 2023, Appendix C, eq. 27 in EDM's sigma), with F the network's output read as EDM's F. c_skip = 1
and c_out = 0 at sh = sh_min, so f(x, t_min) = x_hat: the boundary condition holds by construction, exactly
(`ConsistencyDenoiser` sets the coefficients to 1 and 0 there, rather than trusting sh(t_min) - sh_min to round
to 0).

The network behind F is any diffusa network with its own parameterization (eps, x0, v, velocity, edm): its
x0-prediction D = c_skip_edm x_hat + c_out_edm F (Karras et al. 2022, Table 1) gives F, so
f = c_skip x_hat + (c_out / c_out_edm) (D - c_skip_edm x_hat), c_out / c_out_edm = (sh - sh_min) / sh. For
sh >> sh_min f is close to D: a student started from its teacher's weights starts near the teacher's denoiser,
as the paper's students do.

`ConsistencyDenoiser` answers in the "x0" parameterization (its raw output is f), so samplers, guidance (which
mixes raw outputs) and clipping treat it as any Denoiser; `diffusa.samplers.sample_consistency` is Algorithm 1.

The grids of levels both trainings draw from are here too: distillation's N(k) (`levels_at`), and improved
consistency training's doubling N(k), discrete log-normal over the levels and weights lambda (Song & Dhariwal 2023;
`ict_levels_at`, `lognormal_level_probs`, `ict_level_weights`, used by `diffusa.tasks.ict`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, RawFn
from diffusa.process import Process, as_time, expand_as
from diffusa.schedules import karras_grid

RHO = 7.0  # Karras et al. 2022's spacing of the levels, Song et al. 2023's too


def consistency_scalings(sh: torch.Tensor, sigma_min: float,
                         sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of Song et al. 2023 (Appendix C) at sigma_hat = sh, for data std sigma_data."""
    d = (sh - sigma_min).clamp_min(0)
    return sigma_data**2 / (d**2 + sigma_data**2), sigma_data * d / (sigma_data**2 + sh**2).sqrt()


def level_times(process: Process, levels: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The times of `levels` noise levels sigma_hat on Karras et al.'s rho = 7 grid over [sigma_min, sigma_max],
    increasing: element 0 is the boundary t_min, element levels - 1 the top t_max (Song et al. 2023, Sec. 3:
    t_i = (eps^(1/rho) + (i - 1) / (N - 1) (T^(1/rho) - eps^(1/rho)))^rho)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise DiffusaError(f"a consistency model needs at least 2 noise levels, got {levels!r}")
    return karras_grid(process, levels, sigma_min, sigma_max, RHO)[:-1].flip(0)


def levels_at(step: int, total: int, levels: int, start: int | None) -> int:
    """N(k), the number of levels at training step k of K (Song et al. 2023, Appendix C):
    N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 with s0 = start, s1 = levels - 1, so N grows from
    `start` to `levels`; a fixed N (`start` None) is consistency distillation's."""
    if start is None or start >= levels:
        return levels
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return min(levels, math.ceil(math.sqrt(frac * (levels**2 - start**2) + start**2) - 1) + 1)


def ict_levels_at(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of improved consistency training (Song & Dhariwal 2023, Sec. 3.4), the exponential curriculum: the
    number of discretisation steps doubles every K' training steps, N(k) = min(s0 2^floor(k / K'), s1) + 1 with
    K' = floor(K / (log2 floor(s1 / s0) + 1)) for K = `total` steps (K' at least 1). Needs 1 <= s0 <= s1."""
    k_prime = max(1, math.floor(total / (math.log2(s1 // s0) + 1)))
    doublings = min(max(step, 0) // k_prime, s1.bit_length())  # s0 2^bit_length(s1) > s1: the cap is reached
    return min(s0 * 2**doublings, s1) + 1


def lognormal_level_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """p(sigma_i), i = 0 .. N - 2, over neighbouring pairs (sigma_i, sigma_{i+1}) of the increasing levels
    `sigmas` (Song & Dhariwal 2023, Sec. 3.5, eq. 10): proportional to
    erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) / (sqrt(2) P_std)), the
    log-normal N(P_mean, P_std^2)'s mass of ln sigma between the two levels, normalised to sum to 1."""
    cdf = torch.special.erf((sigmas.to(torch.float64).log() - p_mean) / (math.sqrt(2) * p_std))
    mass = cdf[1:] - cdf[:-1]
    total = float(mass.sum())
    if not total > 0:
        raise DiffusaError(f"the log-normal N({p_mean}, {p_std}^2) of ln sigma puts no mass between the levels "
                           f"{float(sigmas[0]):.4g} .. {float(sigmas[-1]):.4g}; move loss.ict.p_mean inside")
    return mass / total


def ict_level_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i), i = 0 .. N - 2, for increasing levels `sigmas` (Song &
    Dhariwal 2023, Sec. 3.1): small noise levels weigh more."""
    return 1.0 / (sigmas[1:] - sigmas[:-1])


class ConsistencyDenoiser(Denoiser):
    """The consistency function f of a network (through `base`, a Denoiser in any parameterization) with its
    boundary at time `t_min`, as a Denoiser whose x0 is f(x, t).

    Args:
        base: the network's Denoiser; its x0 is read as D, from which F follows (module docstring). Its clipping
            is applied to f, not to D.
        t_min: the boundary time (the least level of the training grid): f(x, t) = x / alpha(t) for t <= t_min.
        sigma_min, sigma_max: the training grid's range in sigma_hat (Karras's rho = 7 levels between them).
        levels: the training grid's number of levels N; multistep sampling picks its times among them.
    """

    def __init__(self, base: Denoiser, t_min: float, sigma_min: float, sigma_max: float, levels: int) -> None:
        self.base = base.derive(clip_x0=None)
        self.t_min, self.sigma_min, self.sigma_max, self.num_levels = float(t_min), float(sigma_min), \
            float(sigma_max), int(levels)
        super().__init__(self.consistency, base.process, "x0", clip_x0=base.clip_x0, sigma_data=base.sigma_data,
                         net=base.net)

    def consistency(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """f(x, t) (the raw output: an x0)."""
        t = as_time(t, x.shape[0], x.device)
        a, s = self.process.alpha_sigma(t)
        sh = s / a
        c_skip, _ = consistency_scalings(sh, self.sigma_min, self.sigma_data)
        at_boundary = t <= self.t_min
        c_skip = torch.where(at_boundary, torch.ones_like(c_skip), c_skip)
        # c_out / c_out_edm = (sh - sh_min) / sh: 0 at the boundary
        ratio = torch.where(at_boundary, torch.zeros_like(sh), (sh - self.sigma_min).clamp_min(0) / sh)
        c_skip_edm = self.sigma_data**2 / (sh**2 + self.sigma_data**2)
        d = self.base(x, t, cond).x0
        x_hat = x / expand_as(a, x)
        return expand_as(c_skip - ratio * c_skip_edm, x) * x_hat + expand_as(ratio, x) * d

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The consistency function of `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        base = self.base.derive(raw, **{k: v for k, v in settings.items() if k != "clip_x0"})
        den = ConsistencyDenoiser(base, self.t_min, self.sigma_min, self.sigma_max, self.num_levels)
        den.clip_x0 = settings.get("clip_x0", self.clip_x0)
        return den

    def level_times(self) -> torch.Tensor:
        """The times of the training grid's levels, increasing (element 0 is t_min)."""
        return level_times(self.process, self.num_levels, self.sigma_min, self.sigma_max)

    def table(self) -> dict[str, Any]:
        """What config.json records of it ("consistency"), for `from_table`."""
        return {"t_min": self.t_min, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "levels": self.num_levels}

    @classmethod
    def from_table(cls, base: Denoiser, table: Any, where: str | Path = "config.json") -> ConsistencyDenoiser:
        """Rebuild from a run's "consistency" table; a damaged table is one DiffusaError naming `where`."""
        if not isinstance(table, dict):
            raise DiffusaError(f"{where}: consistency must be a table; the file is damaged")
        for key in ("t_min", "sigma_min", "sigma_max"):
            v = table.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise DiffusaError(f"{where}: consistency.{key} must be a finite number > 0, got {v!r:.40}; the "
                                   "file is damaged")
        n = table.get("levels")
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 100_000:
            raise DiffusaError(f"{where}: consistency.levels must be an integer in [2, 100000], got {n!r:.40}; the "
                               "file is damaged")
        if not table["sigma_min"] < table["sigma_max"] or table["t_min"] > 1:
            raise DiffusaError(f"{where}: consistency needs sigma_min < sigma_max and t_min <= 1; the file is "
                               "damaged")
        return cls(base, table["t_min"], table["sigma_min"], table["sigma_max"], n)


def consistency_of(denoiser: Denoiser) -> ConsistencyDenoiser | None:
    """The consistency function inside `denoiser` (itself, or the base of a guidance wrapper), else None."""
    seen = 0
    while denoiser is not None and seen < 16:
        if isinstance(denoiser, ConsistencyDenoiser):
            return denoiser
        denoiser, seen = getattr(denoiser, "base", None), seen + 1
    return None


__all__ = ["RHO", "ConsistencyDenoiser", "consistency_of", "consistency_scalings", "ict_level_weights", "ict_levels_at",
           "level_times", "levels_at", "lognormal_level_probs"]
