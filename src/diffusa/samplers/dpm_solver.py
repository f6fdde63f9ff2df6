"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): data-prediction multistep in log-SNR.

Lu et al. write lambda = log(alpha / sigma), half of diffusa's log-SNR, so the step size is
h = (lambda_s - lambda_t) / 2 in this library's units.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, step_times


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M), one network evaluation per step.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, with D = x0_t on the first step (DDIM) and
    D = (1 + 1 / (2 r)) x0_t - 1 / (2 r) x0_prev, r = h_prev / h, after (Lu et al. 2022, Alg. 2, line 6).
    The final step is first order when `lower_order_final` (diffusers' default); a step to sigma = 0
    always is (h is infinite there and x_s = x0_t).
    """
    proc = denoiser.process
    n = len(grid) - 1
    x0_prev, h_prev = None, None
    for i in range(n):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        ts = grid[i : i + 2].to(torch.float64)
        (_, a_s), (s_t, s_s) = proc.alpha_sigma(ts)
        lam_t, lam_s = proc.log_snr(ts)
        if float(s_s) == 0:
            x, h = pred.x0, None
        else:
            h = (lam_s - lam_t) / 2
            d = pred.x0
            if x0_prev is not None and h_prev is not None and not (lower_order_final and i == n - 1):
                half_inv_r = h / (2 * h_prev)
                d = expand_as(1 + half_inv_r, x) * pred.x0 - expand_as(half_inv_r, x) * x0_prev
            x = expand_as(s_s / s_t, x) * x - expand_as(a_s * torch.expm1(-h), x) * d
        x0_prev, h_prev = pred.x0, h
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x
