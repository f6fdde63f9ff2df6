"""Euler and Euler-ancestral samplers on noise levels (Karras et al. 2022; k-diffusion's sample_euler[_ancestral]).

Both work in EDM's scaled variables (Karras et al. 2022, Sec. 4, eq. 4 with s(t) = alpha(t)):
x_hat = x / alpha, sigma_hat = sigma / alpha = exp(-lambda / 2). There the probability-flow ODE reads
dx_hat / dsigma_hat = (x_hat - x0_hat) / sigma_hat = eps_hat, whatever the process. The steps below are
written back in x = alpha x_hat and never divide by alpha(t), so they stay exact where alpha(t) = 0
(Flow at t = 1, where sigma_hat is infinite).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, randn_like, step_times


def sample_euler(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE in the scaled variables (Karras et al. 2022, Alg. 1 without
    the correction; k-diffusion's sample_euler).

    x_hat_s = x_hat_t + (sigma_hat_s - sigma_hat_t) eps_hat = x0_hat + sigma_hat_s eps_hat, i.e.
    x_s = alpha_s x0_hat + sigma_s eps_hat: deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0), which is
    this Euler step exactly (Karras et al. 2022, Sec. 4). One network evaluation per step.
    """
    proc = denoiser.process
    for i in range(len(grid) - 1):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        a_s, s_s = proc.alpha_sigma(grid[i + 1].to(torch.float64))
        x = expand_as(a_s, x) * pred.x0 + expand_as(s_s, x) * pred.eps
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x


def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                           generator: torch.Generator | None = None, callback: Callback | None = None,
                           eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Euler ancestral (k-diffusion's sample_euler_ancestral) in the scaled variables.

    Each step splits sigma_hat_s into a deterministic part sigma_down and fresh noise sigma_up:
    sigma_up = min(sigma_hat_s, eta sigma_hat_s sqrt(1 - sigma_hat_s^2 / sigma_hat_t^2)),
    sigma_down = sqrt(sigma_hat_s^2 - sigma_up^2); x_hat_s = x0_hat + sigma_down eps_hat + s_noise sigma_up z.
    With eta = 1 this is the DDPM posterior variance (the same law as DDIM with eta = 1). No noise on the
    final step to t = 0; one N(0, I) draw from `generator` on every other step.
    """
    proc = denoiser.process
    for i in range(len(grid) - 1):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        a_t, s_t = proc.alpha_sigma(grid[i].to(torch.float64))
        a_s, s_s = proc.alpha_sigma(grid[i + 1].to(torch.float64))
        sh_s = s_s / a_s
        ratio2 = ((s_s * a_t) / (a_s * s_t)) ** 2  # (sigma_hat_s / sigma_hat_t)^2, 0 where alpha_t = 0
        sigma_up = torch.minimum(sh_s, eta * sh_s * (1 - ratio2).clamp_min(0).sqrt())
        sigma_down = (sh_s**2 - sigma_up**2).clamp_min(0).sqrt()
        x = expand_as(a_s, x) * pred.x0 + expand_as(a_s * sigma_down, x) * pred.eps
        if float(grid[i + 1]) > 0 and float(sigma_up) > 0:
            x = x + expand_as(a_s * sigma_up * s_noise, x) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x
