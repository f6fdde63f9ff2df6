"""L_vlb and L_hybrid (Nichol & Dhariwal 2021, Sec. 3.1) on a discrete DDPM chain.

Both return, per example, T times the bound's term for the sampled step t = i/T (bits/dim, `vlb_term_bpd`):
E_t[T L_t] is the bound's sum of terms, the scale IDDPM trains on (its `RESCALED_KL`; with lambda = 0.001 and
T = 1000 the hybrid's vlb part is exactly IDDPM's `vb * T / 1000`). L_0, the decoder, is the term at t = 1/T.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.likelihood.bound import VARIANCES, vlb_term_bpd
from diffusa.losses.simple import SimpleLoss
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM, Process, as_time


def require_discrete(process: Process, what: str) -> DiscreteDDPM:
    """The process, if it is a discrete chain; else a DiffusaError naming `what`."""
    if not isinstance(process, DiscreteDDPM):
        raise DiffusaError(f"{what} needs a discrete DDPM chain (process.name=\"ddpm\"); this run's process is "
                           f"{process.name!r}")
    return process


def chain_steps(process: DiscreteDDPM, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(t, s, t_above) for times t = i/T on the chain: the step i -> i - 1 and the step above, i + 1."""
    T = process.num_steps
    i = torch.round(t * T)
    if bool(((t * T - i).abs() > 1e-6).any()) or bool((i < 1).any()) or bool((i > T).any()):
        raise DiffusaError("the variational bound's loss needs times on the chain's steps i/T (i = 1..T); use the "
                           "uniform or importance time sampler")
    return t, (i - 1) / T, ((i + 1) / T if T > 1 else None)


class VLBLoss:
    """L_vlb per example: T L_t for the sampled step (Nichol & Dhariwal 2021, Sec. 3.1; Ho et al. 2020, eq. 5).

    Trains the mean and, with model.learned_variance, the variance (eq. 15). `variance` is the fixed variance
    of a model that does not learn it: "beta_tilde" or "beta".
    """

    def __init__(self, process: Process, variance: str = "beta_tilde") -> None:
        require_discrete(process, "loss.kind=vlb")
        if variance not in VARIANCES:
            raise DiffusaError(f"unknown variance {variance!r}; known: {', '.join(VARIANCES)}")
        self.variance = variance

    def term(self, denoiser: Denoiser, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
             t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """T L_t (bits/dim) from a raw network output at (x_t, t) (cond: a residual model's anchor)."""
        proc = require_discrete(denoiser.process, "the vlb loss")
        t, s, t_above = chain_steps(proc, t)
        # without x0 clipping: IDDPM trains with clip_denoised=False
        pred = denoiser.derive(clip_x0=None).interpret(out.float(), x_t, t, cond)
        term = vlb_term_bpd(proc, x0, x_t, t, s, pred.x0, pred.v_var, variance=self.variance, t_above=t_above)
        return proc.num_steps * term

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: Any = None) -> torch.Tensor:
        t = as_time(t, x0.shape[0], x0.device)
        x_t = denoiser.process.q_sample(x0, t, noise)
        return self.term(denoiser, denoiser.output(x_t, t, cond), x0, x_t, t, cond)


class HybridLoss:
    """L_hybrid = L_simple + lambda L_vlb, lambda = 0.001 (Nichol & Dhariwal 2021, eq. 16).

    One network call: L_simple regresses the mean output; L_vlb sees the mean output detached (stop-gradient,
    Sec. 3.1), so it trains only the learned-variance channels. Needs model.learned_variance = true.
    """

    def __init__(self, process: Process, simple: SimpleLoss | None = None, vlb_weight: float = 0.001,
                 variance: str = "beta_tilde") -> None:
        self.vlb = VLBLoss(process, variance)
        self.simple = simple if simple is not None else SimpleLoss(weighting="none")
        if not vlb_weight >= 0:
            raise DiffusaError(f"loss.vlb_weight must be >= 0, got {vlb_weight}")
        self.vlb_weight = float(vlb_weight)

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: Any = None) -> torch.Tensor:
        if not denoiser.learned_variance:
            raise DiffusaError("loss.kind=hybrid trains a learned variance: set model.learned_variance=true "
                               "(or use loss.kind=simple / vlb)")
        t = as_time(t, x0.shape[0], x0.device)
        x_t = denoiser.process.q_sample(x0, t, noise)
        out = denoiser.output(x_t, t, cond)
        simple = self.simple.of_output(denoiser, out, x0, t, noise, cond)  # the same output: no second forward pass
        mean, var = out.chunk(2, dim=1)
        frozen = torch.cat([mean.detach(), var], dim=1)
        return simple + self.vlb_weight * self.vlb.term(denoiser, frozen, x0, x_t, t, cond)
