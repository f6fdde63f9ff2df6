"""Euler and Euler ancestral (Karras et al. 2022; k-diffusion's sample_euler[_ancestral]), by name.

In EDM's scaled variables x_hat = x / alpha, sigma_hat = sigma / alpha (Karras et al. 2022, Sec. 4, eq. 4
with s(t) = alpha(t)), the probability-flow ODE is dx_hat / dsigma_hat = eps_hat for every process. Its
Euler step x_hat_s = x_hat_t + (sigma_hat_s - sigma_hat_t) eps_hat = x0_hat + sigma_hat_s eps_hat, written
back in x, is x_s = alpha_s x0_hat + sigma_s eps_hat: deterministic DDIM. The ancestral split
sigma_up = eta sigma_hat_s sqrt(1 - sigma_hat_s^2 / sigma_hat_t^2), sigma_down = sqrt(sigma_hat_s^2 - sigma_up^2)
is, times alpha_s, DDIM's c and sqrt(sigma_s^2 - c^2) with the same eta. So both are DDIM, and are run as
DDIM rather than written twice; tests/test_continuous.py checks them against k-diffusion's step formulas
written out independently.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.prediction import Denoiser
from diffusa.samplers.common import Callback
from diffusa.samplers.ddim import sample_ddim


def sample_euler(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE in the scaled variables (Karras et al. 2022, Alg. 1 without the
    correction): one network evaluation per step; exactly DDIM with eta = 0."""
    return sample_ddim(denoiser, x, grid, cond=cond, generator=generator, callback=callback, eta=0.0)


def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                           generator: torch.Generator | None = None, callback: Callback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Euler ancestral (k-diffusion's sample_euler_ancestral): deterministic step to sigma_down, then fresh
    noise sigma_up; exactly DDIM with the same eta (eta = 1: the DDPM posterior variance)."""
    return sample_ddim(denoiser, x, grid, cond=cond, generator=generator, callback=callback, eta=eta)
