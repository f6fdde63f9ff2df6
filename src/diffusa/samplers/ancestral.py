"""Ancestral sampling of the reverse chain (Ho et al. 2020, Algorithm 2), on any grid.

Each step t -> s draws x_s ~ N(mu(x_t, x0_hat), var) with the posterior mean of
q(x_s | x_t, x0_hat). On a sub-grid the step's beta is recomputed as 1 - alphabar_t / alphabar_s,
which is IDDPM's respacing (Nichol & Dhariwal 2021, Sec. 4).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, randn_like, step_times

VARIANCES = ("beta_tilde", "beta")


def ancestral_log_variance(denoiser: Denoiser, pred_v_var: torch.Tensor | None, post_log_var: torch.Tensor,
                           t: torch.Tensor, s: torch.Tensor, x: torch.Tensor, variance: str) -> torch.Tensor:
    """log of the reverse step's variance: beta-tilde, beta, or IDDPM's learned interpolation (eq. 15)."""
    _, sigma2_ts = denoiser.process.transition(t, s)
    log_beta = expand_as(torch.log(sigma2_ts.clamp_min(1e-20)), x)
    if pred_v_var is not None:
        return pred_v_var * log_beta + (1 - pred_v_var) * post_log_var
    if variance == "beta":
        return log_beta
    return post_log_var


def sample_ancestral(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     variance: str = "beta_tilde") -> torch.Tensor:
    """DDPM ancestral sampler: x_s = mu_theta(x_t) + exp(log_var / 2) z, no noise on the final step.

    variance: "beta_tilde" (posterior variance, sigma_t^2 = beta-tilde_t) or "beta" (sigma_t^2 = beta_t),
    Ho et al. 2020, Sec. 3.2; a learned-variance model uses its own.
    """
    if variance not in VARIANCES:
        raise DiffusaError(f"unknown variance {variance!r}; known: {', '.join(VARIANCES)}")
    proc = denoiser.process
    for i in range(len(grid) - 1):
        t, s = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        post = proc.posterior(x, pred.x0, t, s)
        if float(grid[i + 1]) > 0:
            log_var = ancestral_log_variance(denoiser, pred.v_var, post.log_var, t, s, x, variance)
            x = post.mean + torch.exp(0.5 * log_var) * randn_like(x, generator)
        else:
            x = post.mean
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x
