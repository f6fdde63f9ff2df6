"""Objectives (per-example losses) and time samplers.

An objective takes (denoiser, x0, t, noise, cond) and returns a loss per example; a time sampler
draws t and importance weights, and may be told the per-example losses back.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, target_of
from diffusa.process import DiscreteDDPM, Process, as_time, expand_as

WEIGHTINGS = ("none", "min_snr")


class UniformTimeSampler:
    """t uniform: over the chain's steps i/T for a discrete process (Ho et al. 2020, Alg. 1), else U(t_min, 1)."""

    def __init__(self, process: Process, t_min: float = 1e-3) -> None:
        self.process = process
        self.t_min = t_min

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight): times of shape (batch,) in float64 and unit importance weights."""
        if isinstance(self.process, DiscreteDDPM):
            T = self.process.num_steps
            i = torch.randint(1, T + 1, (batch,), generator=generator)
            t = i.to(torch.float64) / T
        else:
            t = self.t_min + (1 - self.t_min) * torch.rand(batch, generator=generator, dtype=torch.float64)
        return t.to(device), torch.ones(batch, dtype=torch.float32, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""


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
