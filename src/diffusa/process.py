"""Forward processes in one currency: x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1].

Every process exposes alpha(t), sigma(t) and the log-SNR lambda(t) = log(alpha^2 / sigma^2),
so samplers, losses and likelihoods are written once against noise levels (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.schedules import make_betas


def expand_as(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example coefficient of shape (B,) or () to broadcast against x (B, ...)."""
    coef = coef.to(dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def as_time(t: torch.Tensor | float, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """A float64 time tensor of shape (batch,) from a scalar or a (batch,) tensor."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    return t


@dataclass
class Posterior:
    """q(x_s | x_t, x0) = N(mean, var I) (Ho et al. 2020, eqs. 6-7, for any s < t)."""

    mean: torch.Tensor
    var: torch.Tensor  # shape broadcastable to mean
    log_var: torch.Tensor


class Process:
    """A Gaussian forward process given by its noise levels alpha(t), sigma(t)."""

    name: str = "process"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) in float64 for a time tensor t."""
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        a, s = self.alpha_sigma(t)
        return 2 * (torch.log(a) - torch.log(s))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of log_snr."""
        raise NotImplementedError

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The noise-level input the network sees for time t."""
        raise NotImplementedError

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw x_T from the prior N(0, sigma(1)^2 I) (alpha(1) x0 is neglected, as usual)."""
        _, s = self.alpha_sigma(torch.ones((), dtype=torch.float64))
        gen_device = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
        return z * float(s)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise."""
        a, s = self.alpha_sigma(as_time(t, x0.shape[0], x0.device))
        return expand_as(a, x0) * x0 + expand_as(s, x0) * noise

    def transition(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_s) = N(alpha_ts x_s, sigma2_ts I) for s < t: (alpha_ts, sigma2_ts).

        alpha_ts = alpha_t / alpha_s, sigma2_ts = sigma_t^2 - alpha_ts^2 sigma_s^2 (Kingma et al. 2021, eq. 3).
        For a VP chain on adjacent steps sigma2_ts is beta_t.
        """
        a_t, s_t = self.alpha_sigma(t)
        a_s, s_s = self.alpha_sigma(s)
        alpha_ts = a_t / a_s
        sigma2_ts = (s_t**2 - alpha_ts**2 * s_s**2).clamp_min(0)
        return alpha_ts, sigma2_ts

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> Posterior:
        """q(x_s | x_t, x0) for any s < t (Kingma et al. 2021, eq. 27; Ho et al. 2020, eq. 7).

        mean = alpha_ts sigma_s^2 / sigma_t^2 x_t + alpha_s sigma2_ts / sigma_t^2 x0,
        var  = sigma2_ts sigma_s^2 / sigma_t^2  (beta-tilde).
        """
        b = x_t.shape[0]
        t = as_time(t, b, x_t.device)
        s = as_time(s, b, x_t.device)
        _, s_t = self.alpha_sigma(t)
        a_s, s_s = self.alpha_sigma(s)
        alpha_ts, sigma2_ts = self.transition(t, s)
        c_xt = alpha_ts * s_s**2 / s_t**2
        c_x0 = a_s * sigma2_ts / s_t**2
        var = sigma2_ts * s_s**2 / s_t**2
        mean = expand_as(c_xt, x_t) * x_t + expand_as(c_x0, x_t) * x0
        # beta-tilde is 0 at s = 0, where samplers add no noise; floor it so the log stays finite
        log_var = torch.log(var.clamp_min(1e-20))
        return Posterior(mean, expand_as(var, x_t), expand_as(log_var, x_t))

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the process (see `process_from_dict`)."""
        raise NotImplementedError


class DiscreteDDPM(Process):
    """A discrete DDPM / IDDPM chain of T steps (Ho et al. 2020; Nichol & Dhariwal 2021).

    Step i (1..T) sits at t = i / T with alpha = sqrt(alphabar_i), sigma = sqrt(1 - alphabar_i).
    Between steps, lambda(t) is interpolated linearly in t, so the chain answers any
    continuous time, and a respaced sampler is only a choice of grid. t = 0 is clean data.
    """

    name = "ddpm"

    def __init__(self, schedule: str = "linear", num_steps: int = 1000) -> None:
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.betas = make_betas(schedule, self.num_steps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        ab = self.alphas_cumprod
        self.lambdas = torch.log(ab) - torch.log1p(-ab)  # decreasing in i
        self.knots = torch.arange(1, self.num_steps + 1, dtype=torch.float64) / self.num_steps

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        lam, knots = self.lambdas.to(t.device), self.knots.to(t.device)
        T = self.num_steps
        if T == 1:
            out = lam[0].expand_as(t).clone()
        else:
            pos = (t * T - 1).clamp(0, T - 1)  # fractional 0-based index
            lo = pos.floor().long().clamp(max=T - 2)
            w = pos - lo
            out = lam[lo] * (1 - w) + lam[lo + 1] * w
            # below the first step, extrapolate the first segment's slope (finite for t > 0)
            below = t < knots[0]
            slope = (lam[1] - lam[0]) * T
            out = torch.where(below, lam[0] + (t - knots[0]) * slope, out)
        return torch.where(t <= 0, torch.full_like(out, float("inf")), out)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        # lambdas decrease along the chain; search in the increasing reversed copy
        rev = self.lambdas.flip(0).to(lam.device)
        T = self.num_steps
        j = torch.searchsorted(rev, lam.contiguous()).clamp(1, T - 1)
        lo, hi = rev[j - 1], rev[j]
        w = (lam - lo) / (hi - lo)
        idx_rev = (j - 1) + w  # fractional index into rev
        idx = (T - 1) - idx_rev  # fractional 0-based index into the chain
        return ((idx + 1) / T).clamp(0, 1)

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The 0-based (fractional) step index T t - 1, as in DDPM/diffusers timesteps."""
        return torch.as_tensor(t, dtype=torch.float64) * self.num_steps - 1

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """The 1-based step nearest to t."""
        return torch.round(torch.as_tensor(t, dtype=torch.float64) * self.num_steps).long()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule, "num_steps": self.num_steps}


PROCESSES: dict[str, type[Process]] = {"ddpm": DiscreteDDPM}


def process_from_dict(cfg: dict[str, Any]) -> Process:
    """Rebuild a process from `Process.to_dict()` output."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in PROCESSES:
        raise DiffusaError(f"unknown process {name!r}; known: {', '.join(sorted(PROCESSES))}")
    try:
        return PROCESSES[name](**cfg)
    except TypeError as e:
        raise DiffusaError(f"bad settings for process {name!r}: {e}") from None
