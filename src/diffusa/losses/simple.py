"""L_simple: regression of the network output on its parameterization's target."""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, target_of
from diffusa.process import as_time, expand_as

WEIGHTINGS = ("none", "min_snr")


class SimpleLoss:
    """L_simple (Ho et al. 2020, eq. 14), generalised to any parameterization: ||target - net||^2 per example.

    Args:
        norm: "mse" (mean squared error) or "l1" (mean absolute error).
        weighting: "none", or "min_snr" (Hang et al. 2023, Min-SNR-gamma): the x0-space loss weight
            min(SNR, gamma), expressed for the model's own target so it trains faster at equal steps.
        gamma: the Min-SNR clip.
    """

    def __init__(self, norm: str = "mse", weighting: str = "none", gamma: float = 5.0) -> None:
        if norm not in ("mse", "l1"):
            raise DiffusaError(f"unknown loss norm {norm!r}; known: mse, l1")
        if weighting not in WEIGHTINGS:
            raise DiffusaError(f"unknown loss weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
        self.norm = norm
        self.weighting = weighting
        self.gamma = gamma

    def weight(self, denoiser: Denoiser, t: torch.Tensor) -> torch.Tensor:
        """Per-example weight on the target-space loss."""
        if self.weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        snr = torch.exp(denoiser.process.log_snr(t))
        clipped = torch.minimum(snr, torch.full_like(snr, self.gamma))
        # ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / snr = ||v - v_hat||^2 / (snr + 1) (VP)
        if denoiser.prediction == "eps":
            w = clipped / snr
        elif denoiser.prediction == "v":
            w = clipped / (snr + 1)
        else:
            w = clipped
        return w.float()

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: Any = None) -> torch.Tensor:
        t = as_time(t, x0.shape[0], x0.device)
        a, s = denoiser.process.alpha_sigma(t)
        x_t = expand_as(a, x0) * x0 + expand_as(s, x0) * noise
        out = denoiser.output(x_t, t, cond)
        if denoiser.learned_variance:
            out = out.chunk(2, dim=1)[0]
        target = target_of(denoiser.prediction, x0, noise, expand_as(a, x0), expand_as(s, x0))
        diff = out - target
        err = diff.square() if self.norm == "mse" else diff.abs()
        per_example = err.flatten(1).mean(dim=1)
        return per_example * self.weight(denoiser, t).to(per_example.device)
