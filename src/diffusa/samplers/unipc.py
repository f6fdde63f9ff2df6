"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"):
the multistep predictor UniP-p and corrector UniC-p in their data-prediction form, with the paper's two choices of
B(h), B_1(h) = h ("bh1") and B_2(h) = e^h - 1 ("bh2"), written here for the step in -lambda; one network evaluation
per step, step for step as diffusers' UniPCMultistepScheduler (predict_x0=True).

Zhao et al. write lambda = log(alpha / sigma), half of diffusa's log-SNR, so h here is (lam_s - lam_t) / 2 in this
library's units, as in dpm_solver.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, step_times

VARIANTS = ("bh1", "bh2")

Estimate = tuple[torch.Tensor, torch.Tensor]  # (x0 estimate, its lambda = log(alpha / sigma))


def b_of_h(h: torch.Tensor, variant: str) -> torch.Tensor:
    """B(h) of the data-prediction update: h ("bh1") or 1 - e^{-h} ("bh2"); both h + O(h^2), which the order needs."""
    return h if variant == "bh1" else -torch.expm1(-h)


def order_conditions(h: torch.Tensor, k: int, variant: str) -> torch.Tensor:
    """The right-hand side g_j / B(h) = j! h phi_{j+1}(-h) / B(h), j = 1..k, of the order conditions R rho = g / B(h)
    (Zhao et al.'s order conditions, in data prediction), with phi_1(z) = (e^z - 1) / z and
    phi_{j+1}(z) = (phi_j(z) - 1 / j!) / z. Each entry is 1 / (j + 1) + O(h)."""
    z = -h
    phi = torch.expm1(z) / z
    out = []
    for j in range(1, k + 1):
        phi = (phi - 1 / math.factorial(j)) / z  # phi_{j+1}
        out.append(math.factorial(j) * h * phi)
    return torch.stack(out) / b_of_h(h, variant)


def rhos(rs: list[torch.Tensor], g: torch.Tensor) -> torch.Tensor:
    """The weights rho of the divided differences: solve sum_l rho_l r_l^(j - 1) = g_j for j = 1..len(rs).

    With one difference (UniP-2, or UniC-1 whose only r is 1) the weight is 1/2, the paper's (and diffusers')
    simplified choice: the exact g_1 / B(h) is 1/2 + O(h), which keeps the order."""
    if len(rs) == 1:
        return torch.full((1,), 0.5, dtype=torch.float64, device=g.device)
    r = torch.stack(rs)
    return torch.linalg.solve(torch.stack([r**j for j in range(len(rs))]), g[: len(rs)])


def uni_update(x: torch.Tensor, m0: torch.Tensor, others: list[Estimate], lam_t: torch.Tensor, lam_s: torch.Tensor,
               sigma_ratio: torch.Tensor, a_s: torch.Tensor, variant: str) -> torch.Tensor:
    """x_s from x_t and the estimate m0 at t, in the unified form shared by UniP and UniC:

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) m0 + alpha_s B(h) sum_k rho_k D_k,
        D_k = (m_k - m0) / r_k,  r_k = (lambda_k - lambda_t) / h,  h = lambda_s - lambda_t.

    `others` are (m_k, lambda_k): the earlier estimates (r_k < 0) for the predictor UniP-p (p = len + 1), and for
    the corrector UniC-p also the estimate at s itself (r = 1), last. With no others it is DDIM's step."""
    h = lam_s - lam_t
    out = expand_as(sigma_ratio, x) * x - expand_as(a_s * torch.expm1(-h), x) * m0
    if not others:
        return out
    rs = [(lam_k - lam_t) / h for _, lam_k in others]
    rho = rhos(rs, order_conditions(h, len(rs), variant))
    scale = a_s * b_of_h(h, variant)
    for (m_k, _), r_k, rho_k in zip(others, rs, rho, strict=True):
        out = out + expand_as(scale * rho_k / r_k, x) * (m_k - m0)
    return out


def sample_unipc(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None, order: int = 2,
                 variant: str = "bh2", lower_order_final: bool = True,
                 disable_corrector: Sequence[int] = ()) -> torch.Tensor:
    """UniPC-p (Zhao et al. 2023, multistep, data prediction), one network evaluation per step.

    Step i evaluates x0_i at x_i; the corrector UniC (of the order of step i - 1's predictor) first replaces x_i by
    its correction from x_{i-1} with x0_i included, then the predictor UniP of order k = min(order, i + 1) steps from
    the corrected x_i; x0_i itself is not re-evaluated (that is UniPC's free corrector). With `lower_order_final`
    (diffusers' default) k is also at most the number of steps left, on every grid (diffusers' UniPC has no
    15-step threshold, unlike its DPM-Solver). No corrector follows the final step (it would cost an evaluation);
    a step to sigma = 0 returns x0 (h is infinite there). `disable_corrector`: steps whose predicted output is not
    corrected, as diffusers' option (a large guidance scale can make UniC overshoot in the first steps).

    `order` 1, 2 or 3 (diffusers' default solver_order 2; it recommends 3 for unconditional sampling),
    `variant` "bh1" (B(h) = h) or "bh2" (B(h) = 1 - e^{-h}, diffusers' default). The callback's "x" is the
    predictor's x_s (corrected at the next step).
    """
    if order not in (1, 2, 3):
        raise DiffusaError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise DiffusaError(f"UniPC variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    skip = {int(i) for i in disable_corrector}
    proc = denoiser.process
    n = len(grid) - 1
    g = grid.to(torch.float64)
    alpha, sigma = proc.alpha_sigma(g)
    lam = proc.log_snr(g) / 2
    hist: list[Estimate] = []  # the last `order` estimates, most recent last
    x_prev: torch.Tensor | None = None  # where the last predictor started (None: nothing to correct)
    k_prev = 0  # the last predictor's order: the corrector's
    for i in range(n):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        pred = denoiser(x, t, cond)
        to_zero = float(sigma[i + 1]) == 0
        if x_prev is not None and not to_zero and i - 1 not in skip:
            others = [*reversed(hist[len(hist) - k_prev:-1]), (pred.x0, lam[i])]
            x = uni_update(x_prev, hist[-1][0], others, lam[i - 1], lam[i], sigma[i] / sigma[i - 1], alpha[i], variant)
        hist = [*hist, (pred.x0, lam[i])][-order:]
        if to_zero:
            x_prev, x = None, pred.x0
        else:
            k = min(order, len(hist), n - i) if lower_order_final else min(order, len(hist))
            x_prev, k_prev = x, k
            x = uni_update(x, pred.x0, list(reversed(hist[len(hist) - k:-1])), lam[i], lam[i + 1],
                           sigma[i + 1] / sigma[i], alpha[i + 1], variant)
        if not bool(torch.isfinite(lam[i])):  # started at alpha = 0: no difference to extrapolate nor to correct
            hist, x_prev = [], None
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0})
    return x
