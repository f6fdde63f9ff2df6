"""DDIM (Song, Meng & Ermon 2021, eq. 12), written in noise levels so it runs on any process.

x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
c^2 = eta^2 * sigma2_ts sigma_s^2 / sigma_t^2 (eta = 1 is the ancestral posterior variance; eta = 0 deterministic).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, check_eta, randn_like, step_times


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """Deterministic (eta = 0) or stochastic DDIM over a decreasing grid ending at 0."""
    check_eta(eta)
    proc = denoiser.process
    for i in range(len(grid) - 1):
        t, s = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        a_s, s_s = proc.alpha_sigma(s)
        if eta > 0:
            _, s_t = proc.alpha_sigma(t)
            _, sigma2_ts = proc.transition(t, s)
            # eta > 1 would ask for more fresh noise than sigma_s itself; cap it there (k-diffusion does too)
            c2 = torch.minimum(eta**2 * sigma2_ts * s_s**2 / s_t**2, s_s**2)
        else:
            c2 = torch.zeros_like(s_s)
        dir_coef = (s_s**2 - c2).clamp_min(0).sqrt()
        x = expand_as(a_s, x) * pred.x0 + expand_as(dir_coef, x) * pred.eps
        if eta > 0 and float(grid[i + 1]) > 0:
            x = x + expand_as(c2.sqrt(), x) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x
