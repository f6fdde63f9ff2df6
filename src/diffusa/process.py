"""Forward processes in one currency: x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1].

Every process exposes alpha(t), sigma(t) and the log-SNR lambda(t) = log(alpha^2 / sigma^2),
so samplers, losses and likelihoods are written once against noise levels (DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.config import EDM_SIGMA_DATA
from diffusa.errors import DiffusaError
from diffusa.limits import MAX_CHAIN_STEPS
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

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha / dt, d sigma / dt), by automatic differentiation of `alpha_sigma` (exact, not finite
        differences; piecewise-linear tables give the slope of their segment)."""
        # inference_mode would silently give zero slopes, even under enable_grad
        with torch.inference_mode(False), torch.enable_grad():
            tt = torch.as_tensor(t, dtype=torch.float64).detach().clone().requires_grad_(True)
            a, s = self.alpha_sigma(tt)
            a, s = a.expand_as(tt), s.expand_as(tt)
            da, ds = (torch.autograd.grad(v.sum(), tt, retain_graph=True)[0] if v.requires_grad
                      else torch.zeros_like(tt) for v in (a, s))
        return da.detach(), ds.detach()

    def sde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and squared diffusion (f(t), g(t)^2) of dx = f x dt + g dW with this process's marginals.

        f = alpha' / alpha and g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, appendix; Song et al.
        2021, eq. 5). Singular where alpha = 0 (flow at t = 1); ODE samplers use `velocity` there instead.
        """
        a, s = self.alpha_sigma(t)
        da, ds = self.d_alpha_sigma(t)
        f = da / a
        return f, 2 * s * ds - 2 * f * s**2

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The probability-flow velocity dx/dt = alpha'(t) x0 + sigma'(t) eps, for x0, eps the denoiser's
        estimates at (x_t, t) (equal to f x - g^2 score / 2; finite for every process at every t)."""
        da, ds = self.d_alpha_sigma(as_time(t, x0.shape[0], x0.device))
        return expand_as(da, x0) * x0 + expand_as(ds, x0) * eps

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


def _vp_integral(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """B(t) = int_0^t beta(u) du for beta(u) = beta_min + u (beta_max - beta_min) (Song et al. 2021, eq. 33)."""
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2


def _vp_time_of_integral(b: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """The root t >= 0 of B(t) = b, written without cancellation (and valid for beta_min = beta_max)."""
    d = beta_max - beta_min
    return 2 * b / (beta_min + torch.sqrt(beta_min**2 + 2 * d * b))


class VP(Process):
    """The variance-preserving SDE (Song et al. 2021, eq. 11; the continuous DDPM).

    alpha(t) = exp(-B(t) / 2), sigma(t) = sqrt(1 - alpha^2), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2.
    t = 0 is clean data (alpha = 1, sigma = 0); at t = 1, alpha = exp(-5.025) ~ 0.0066 for the defaults.
    lambda(t) = -log(expm1(B(t))), inverted in closed form. The network sees c_noise = 999 t, score_sde's
    discrete-time conditioning for DDPM-style networks.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not (0 < beta_min <= beta_max):
            raise DiffusaError(f"VP needs 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) = int_0^t beta."""
        return _vp_integral(torch.as_tensor(t, dtype=torch.float64), self.beta_min, self.beta_max)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.integral(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        # alpha^2 / sigma^2 = 1 / (e^B - 1); inf at t = 0 (clean data)
        return -torch.log(torch.expm1(self.integral(t)))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        b = torch.nn.functional.softplus(-lam)  # B = log(1 + e^-lambda)
        return _vp_time_of_integral(b, self.beta_min, self.beta_max).clamp(0, 1)

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        return 999 * torch.as_tensor(t, dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


class SubVP(VP):
    """The sub-VP SDE (Song et al. 2021, eq. 17): alpha as VP, sigma(t) = 1 - alpha_VP(t)^2 = 1 - e^{-B(t)}.

    t = 0 is clean data; sigma(1) = 1 - e^{-B(1)} ~ 1. With u = alpha^2, lambda = log u - 2 log(1 - u),
    inverted by the root of e^lambda (1 - u)^2 = u in (0, 1).
    """

    name = "subvp"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.integral(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        b = self.integral(t)
        return -b - 2 * torch.log(-torch.expm1(-b))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        e = torch.exp(-lam)
        # u = 2 / (2 + e + sqrt(e (4 + e))), so B = -log u = log1p((e + sqrt(e (4 + e))) / 2)
        b = torch.log1p(0.5 * (e + torch.sqrt(e * (4 + e))))
        return _vp_time_of_integral(b, self.beta_min, self.beta_max).clamp(0, 1)


class VE(Process):
    """The variance-exploding SDE (Song et al. 2021, eq. 9; NCSN, Song & Ermon 2019).

    alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t for t in (0, 1], and sigma(0) = 0: t = 0 is
    clean data, as for every process here, so a grid ending at 0 ends with a denoising step from
    sigma(grid[-2]) >= sigma_min to 0 (score_sde's "noise removal" step). The prior is N(0, sigma_max^2 I).
    lambda = -2 log sigma; t_of_log_snr maps noise below sigma_min to t = 1e-12 (sigma ~ sigma_min).
    c_noise = log(sigma) / 4, from the log-linear formula (finite at t = 0).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not (0 < sigma_min < sigma_max):
            raise DiffusaError(f"{type(self).__name__} needs 0 < sigma_min < sigma_max, "
                               f"got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """log sigma on the log-linear branch (no t = 0 special case)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        sigma = torch.where(t <= 0, torch.zeros_like(t), torch.exp(self.log_sigma(t)))
        return torch.ones_like(t), sigma

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        lam = -2 * self.log_sigma(t)
        return torch.where(t <= 0, torch.full_like(lam, float("inf")), lam)

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        lam = torch.as_tensor(lam, dtype=torch.float64)
        t = (-0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        # finite noise is never clean data: sigma_min itself must not round to t = 0 (where sigma = 0)
        return torch.where(lam == float("inf"), torch.zeros_like(t), t.clamp(1e-12, 1))

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_sigma(t) / 4

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class EDM(VE):
    """EDM's noise levels (Karras et al. 2022): alpha = 1, sigma from sigma_min = 0.002 to sigma_max = 80.

    Time maps to sigma log-linearly, as for VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t on (0, 1],
    sigma(0) = 0 (clean data). EDM's own rho = 7 spacing is a sampling grid (schedules.karras_grid), not
    part of the process. c_noise = log(sigma) / 4 (Table 1). sigma_data is the data std used by EDM's
    preconditioning and loss weighting; it does not change the process.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = EDM_SIGMA_DATA) -> None:
        super().__init__(sigma_min, sigma_max)
        if not sigma_data > 0:
            raise DiffusaError(f"EDM needs sigma_data > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "sigma_data": self.sigma_data}


class Flow(Process):
    """Rectified flow / flow matching with the linear path (Liu et al. 2022; Lipman et al. 2023).

    alpha(t) = 1 - t, sigma(t) = t: t = 0 is data, t = 1 is the prior N(0, I) exactly (alpha(1) = 0).
    lambda(t) = 2 log((1 - t) / t) is +inf at t = 0 (like every process) and, to stay finite at the
    noise end, is evaluated at min(t, 1 - 1e-6) (lambda(1) ~ -27.6); t_of_log_snr = sigmoid(-lambda / 2)
    is its exact inverse. c_noise = 999 t, the DDPM timestep range.
    """

    name = "flow"
    T_MAX_LOG_SNR = 1 - 1e-6

    def __init__(self) -> None:
        pass

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1 - t, t.clone()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(max=self.T_MAX_LOG_SNR)
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-0.5 * torch.as_tensor(lam, dtype=torch.float64))

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        return 999 * torch.as_tensor(t, dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


PROCESSES: dict[str, type[Process]] = {"ddpm": DiscreteDDPM, "vp": VP, "subvp": SubVP, "ve": VE, "edm": EDM,
                                       "flow": Flow}


def process_from_dict(cfg: dict[str, Any]) -> Process:
    """Rebuild a process from `Process.to_dict()` output."""
    if not isinstance(cfg, dict):
        raise DiffusaError(f"a process is a table of settings (name = ...), got {cfg!r}")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if not isinstance(name, str) or name not in PROCESSES:
        raise DiffusaError(f"unknown process {name!r}; known: {', '.join(sorted(PROCESSES))}")
    for key, value in cfg.items():
        if key == "schedule":
            continue
        if key == "num_steps":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHAIN_STEPS:
                raise DiffusaError(f"process {name!r}: num_steps must be an integer in [1, {MAX_CHAIN_STEPS:,}], "
                                   f"got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise DiffusaError(f"process {name!r}: {key} must be a finite number > 0, got {value!r}")
    for lo, hi in (("beta_min", "beta_max"), ("sigma_min", "sigma_max")):
        if lo in cfg and hi in cfg and not cfg[lo] < cfg[hi]:
            raise DiffusaError(f"process {name!r}: {lo} ({cfg[lo]:g}) must be below {hi} ({cfg[hi]:g})")
    try:
        return PROCESSES[name](**cfg)
    except TypeError as e:
        raise DiffusaError(f"bad settings for process {name!r}: {e}") from None
