"""L_simple: regression of the network output on its parameterization's target, with a loss weighting.

Every weighting is defined as a weight w(t) on the x0-space error ||x0 - x0_hat||^2 and moved into the model's
own target space with the exact factor of that parameterization (`Denoiser.x0_error_gain`), so the same weighting
gives the same loss whatever the network predicts.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import as_time, expand_as

WEIGHTINGS = ("none", "min_snr", "sigma2", "likelihood", "edm")


def x0_weight(weighting: str, denoiser: Denoiser, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """The weight w(t) on ||x0 - x0_hat||^2 (float64, shape of t) of a named weighting.

    With ||score error||^2 = alpha^2 / sigma^4 ||x0 error||^2, Song et al. 2021's DSM weight lambda(t) on the
    score error (eq. 7) is lambda alpha^2 / sigma^4 on the x0 error:
    - sigma2: lambda = sigma^2 (Song et al. 2021; unweighted eps-MSE, Ho et al. 2020): w = alpha^2 / sigma^2 = SNR.
    - likelihood: lambda = g(t)^2 (Song, Durkan et al. 2021, Thm. 1, the ELBO weighting): w = g^2 alpha^2 / sigma^4.
    - edm: Karras et al. 2022, eq. 8, lambda(s) = (s^2 + sd^2) / (s sd)^2 at s = sigma / alpha, i.e.
      w = (sigma^2 + alpha^2 sd^2) / (sigma sd)^2 = 1 / c_out^2: unit weight on EDM's F target.
    - min_snr: Hang et al. 2023: w = min(SNR, gamma).
    """
    proc = denoiser.process
    if weighting in ("min_snr", "sigma2"):
        snr = torch.exp(proc.log_snr(t))
        return torch.minimum(snr, torch.full_like(snr, gamma)) if weighting == "min_snr" else snr
    a, s = proc.alpha_sigma(t)
    if weighting == "likelihood":
        _, g2 = proc.sde(t)
        return g2 * a**2 / s**4
    if weighting == "edm":
        sd = denoiser.sigma_data
        return (s**2 + a**2 * sd**2) / (s * sd) ** 2
    raise DiffusaError(f"unknown loss weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


class SimpleLoss:
    """L_simple (Ho et al. 2020, eq. 14), generalised to any parameterization: ||target - net||^2 per example.

    Args:
        norm: "mse" (mean squared error) or "l1" (mean absolute error).
        weighting: "none" (unit weight on the model's own target), or an x0-space weighting of `x0_weight`:
            "min_snr" (Hang et al. 2023), "sigma2", "likelihood" (Song et al. 2021), "edm" (Karras et al. 2022),
            divided by the parameterization's x0_error_gain A^2 (by |A| for l1) so it holds exactly in x0 space.
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
        """Per-example weight (float32) on the target-space loss."""
        if self.weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        gain = denoiser.x0_error_gain(t)
        if self.norm == "l1":
            gain = gain.sqrt()
        return (x0_weight(self.weighting, denoiser, t, self.gamma) / gain).float()

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 cond: Any = None) -> torch.Tensor:
        t = as_time(t, x0.shape[0], x0.device)
        a, s = denoiser.process.alpha_sigma(t)
        x_t = expand_as(a, x0) * x0 + expand_as(s, x0) * noise
        return self.of_output(denoiser, denoiser.output(x_t, t, cond), x0, t, noise, cond)

    def of_output(self, denoiser: Denoiser, out: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                  noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The per-example loss of a raw output `out` already computed at x_t = alpha x0 + sigma noise, t (B,)
        (cond: for a residual model's target, `Denoiser.target`)."""
        if denoiser.learned_variance:
            out = out.chunk(2, dim=1)[0]
        diff = out - denoiser.target(x0, noise, t, cond)
        err = diff.square() if self.norm == "mse" else diff.abs()
        per_example = err.flatten(1).mean(dim=1)
        return per_example * self.weight(denoiser, t).to(per_example.device)
