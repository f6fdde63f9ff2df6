"""DPM-Solver++(2M) and (3M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and Appendix B): data-prediction
multistep solvers in log-SNR; and DPM-Solver++(2M) SDE, the same multistep for the reverse SDE (Sec. 5).

Lu et al. write lambda = log(alpha / sigma), half of diffusa's log-SNR, so step sizes here are
h = (lambda_s - lambda_t) / 2 in this library's units.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, check_eta, randn_like, step_times

# Lu et al. (and diffusers) lower the order of the last steps only for short grids, where it stabilises them
LOWER_ORDER_BELOW = 15


def step_order(i: int, n: int, order: int, history: int, lower_order_final: bool) -> int:
    """The order of step i of n: warm-up from first order as past estimates accumulate (`history` usable ones);
    with `lower_order_final`, the final step first order, and the one before at most second order on grids of
    fewer than 15 steps (diffusers' DPMSolverMultistepScheduler rule)."""
    k = min(order, history + 1)
    if lower_order_final and i == n - 1:
        return 1
    if lower_order_final and i == n - 2 and n < LOWER_ORDER_BELOW:
        return min(k, 2)
    return k


def multistep_direction(k: int, h: torch.Tensor, x0s: list[torch.Tensor], hs: list[torch.Tensor],
                        x: torch.Tensor) -> torch.Tensor:
    """The data-prediction term that replaces x0_hat in the first-order update, for order k.

    With D0 = m0 and divided differences D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, r_j = h_j / h:
    order 2: m0 + D1_0 / 2 (Alg. 2, line 6);
    order 3: m0 - phi_2 / phi_1 D1 + phi_3 / phi_1 D2 with D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1) / (r0 + r1), phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = (phi_1 + h) / h^2 - 1/2
    (Lu et al. 2022, Appendix B, the multistep third-order update).
    """
    m0 = x0s[-1]
    if k == 1:
        return m0
    r0 = hs[-1] / h
    d1_0 = (m0 - x0s[-2]) * expand_as(1 / r0, x)
    if k == 2:
        return m0 + d1_0 / 2
    r1 = hs[-2] / h
    d1_1 = (x0s[-2] - x0s[-3]) * expand_as(1 / r1, x)
    d1 = d1_0 + expand_as(r0 / (r0 + r1), x) * (d1_0 - d1_1)
    d2 = expand_as(1 / (r0 + r1), x) * (d1_0 - d1_1)
    phi_1 = torch.expm1(-h)
    phi_2 = phi_1 / h + 1
    phi_3 = (phi_1 + h) / h**2 - 0.5
    # x_s = (sigma_s / sigma_t) x - alpha_s phi_1 D0 + alpha_s phi_2 D1 - alpha_s phi_3 D2, written as -alpha_s phi_1 D
    return m0 - expand_as(phi_2 / phi_1, x) * d1 + expand_as(phi_3 / phi_1, x) * d2


def sample_dpmpp_multistep(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, order: int,
                           cond: Any = None, callback: Callback | None = None, lower_order_final: bool = True,
                           eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++ multistep of order 1, 2 or 3, one network evaluation per step.

    x_s = (sigma_s / sigma_t) e^{-eta h} x_t - alpha_s (e^{-(1 + eta) h} - 1) D + sigma_s sqrt(1 - e^{-2 eta h}) z,
    D from `multistep_direction`: the ODE solver at eta = 0, the SDE solver (Sec. 5) at eta = 1. A step to
    sigma = 0 is always first order (h is infinite there and x_s = x0_t).
    """
    if order not in (1, 2, 3):
        raise DiffusaError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order}")
    check_eta(eta)
    if eta > 0 and order > 2:  # the SDE's third-order multistep has other coefficients (Lu et al. 2022, App. B)
        raise DiffusaError("DPM-Solver++ with noise (eta > 0) is implemented for orders 1 and 2")
    proc = denoiser.process
    n = len(grid) - 1
    x0s: list[torch.Tensor] = []
    hs: list[torch.Tensor] = []  # hs[j] = step size that led to x0s[j + 1]
    for i in range(n):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        x0s = [*x0s[-(order - 1):], pred.x0] if order > 1 else [pred.x0]
        ts = grid[i : i + 2].to(torch.float64)
        (_, a_s), (s_t, s_s) = proc.alpha_sigma(ts)
        lam_t, lam_s = proc.log_snr(ts)
        if float(s_s) == 0:
            x = pred.x0
        else:
            h = (lam_s - lam_t) / 2
            k = step_order(i, n, order, min(len(hs), len(x0s) - 1), lower_order_final)
            d = multistep_direction(k, h, x0s, hs, x)
            x = (expand_as(s_s / s_t * torch.exp(-eta * h), x) * x
                 - expand_as(a_s * torch.expm1(-(1 + eta) * h), x) * d)
            if eta > 0:
                x = x + expand_as(s_s * (-torch.expm1(-2 * eta * h)).sqrt(), x) * randn_like(x, generator)
            hs = [*hs[-(order - 2):], h] if order > 2 else [h]
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M), one network evaluation per step.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, with D = x0_t on the first step (DDIM) and
    D = (1 + 1 / (2 r)) x0_t - 1 / (2 r) x0_prev, r = h_prev / h, after (Lu et al. 2022, Alg. 2, line 6).
    The final step is first order when `lower_order_final` (diffusers' default); a step to sigma = 0
    always is (h is infinite there and x_s = x0_t).
    """
    return sample_dpmpp_multistep(denoiser, x, grid, order=2, cond=cond, callback=callback,
                                  lower_order_final=lower_order_final)


def sample_dpmpp_3m(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, Appendix B), one network evaluation per step: first order, then second,
    then third as past estimates accumulate. With `lower_order_final` the final step is first order and, on
    grids of fewer than 15 steps, the one before it second order (diffusers' rule; Lu et al. recommend
    3M for unconditional sampling)."""
    return sample_dpmpp_multistep(denoiser, x, grid, order=3, cond=cond, callback=callback,
                                  lower_order_final=lower_order_final)


def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        eta: float = 1.0, lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", Sec. 5: the second-order multistep solver of the
    reverse diffusion SDE in data prediction, midpoint form), one network evaluation and fresh noise per step:

        x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) D + sigma_s sqrt(1 - e^{-2 eta h}) z

    with D as in DPM-Solver++(2M) and z ~ N(0, I). eta = 1 is the SDE (its first-order step samples DDPM's
    posterior q(x_s | x_t, x0_hat)); eta = 0 is DPM-Solver++(2M) exactly; between, part of the noise is kept, as
    DDIM's eta does. Lower order at the end and the step to sigma = 0 (x_s = x0_t) as in DPM-Solver++(2M).
    """
    return sample_dpmpp_multistep(denoiser, x, grid, order=2, cond=cond, callback=callback,
                                  lower_order_final=lower_order_final, eta=eta, generator=generator)
