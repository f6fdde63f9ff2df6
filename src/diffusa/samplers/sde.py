"""Reverse-SDE samplers (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.2 and
Appendix F-G): Euler-Maruyama, the reverse-diffusion predictor, the Langevin corrector, and their
predictor-corrector combination.

The forward SDE dx = f(t) x dt + g(t) dW (process.sde) has the reverse dx = [f x - g^2 score] dt + g dW-bar
(eq. 6), with score = -eps_hat / sigma from the Denoiser, so every sampler here runs every process. Each step
t -> s of a decreasing grid first runs `corrector_steps` Langevin steps at t, then a predictor step to s
(score_sde's order). The last step, to s = 0, is the denoising step x = x0_hat(x, t) (Tweedie; score_sde's
"noise removal"), so the output carries no leftover noise.

Where alpha(t) = 0 (flow at t = 1) the SDE is singular: f = alpha'/alpha and g^2 are infinite. A step from
there is the DDPM posterior step x_s ~ q(x_s | x_t, x0_hat) (Ho et al. 2020, eq. 7), which is finite and, from
the exact prior, exact in law for Gaussian data.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, Prediction
from diffusa.process import Process, expand_as
from diffusa.samplers.common import Callback, randn_like, step_times

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")


def _posterior_step(proc: Process, x: torch.Tensor, pred: Prediction, t: torch.Tensor, s: torch.Tensor,
                    z: torch.Tensor) -> torch.Tensor:
    """x_s = mean + sqrt(var) z of q(x_s | x_t, x0_hat) (Ho et al. 2020, eq. 7)."""
    post = proc.posterior(x, pred.x0, t, s)
    return post.mean + post.var.sqrt() * z


def euler_maruyama_step(proc: Process, x: torch.Tensor, pred: Prediction, t: torch.Tensor, s: torch.Tensor,
                        z: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from t down to s (Song et al. 2021, eq. 6; score_sde's
    EulerMaruyamaPredictor): x_s = x - (f x - g^2 score) (t - s) + g sqrt(t - s) z, coefficients at t."""
    f, g2 = proc.sde(t[:1])
    if not bool(torch.isfinite(f).all() & torch.isfinite(g2).all()):
        return _posterior_step(proc, x, pred, t, s, z)
    h = (t[:1] - s[:1]).to(torch.float64)
    drift = expand_as(f, x) * x - expand_as(g2, x) * pred.score
    return x - expand_as(h, x) * drift + expand_as((g2 * h).sqrt(), x) * z


def reverse_diffusion_step(proc: Process, x: torch.Tensor, pred: Prediction, t: torch.Tensor, s: torch.Tensor,
                           z: torch.Tensor) -> torch.Tensor:
    """The reverse-diffusion predictor (Song et al. 2021, eq. 46; score_sde's ReverseDiffusionPredictor): the
    forward step x_t = a x_s + sqrt(b) z, a = alpha_t / alpha_s, b = sigma_t^2 - a^2 sigma_s^2, discretised as
    f_i = (a - 1) x, G_i^2 = b, is reversed as x_s = x - f_i + G_i^2 score + G_i z = (2 - a) x + b score + sqrt(b) z.
    For VP this is (2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z; for VE, f_i = 0 and
    G_i^2 = sigma_t^2 - sigma_s^2."""
    a_t, _ = proc.alpha_sigma(t[:1])
    if not bool((a_t > 0).all()):
        return _posterior_step(proc, x, pred, t, s, z)
    a, b = proc.transition(t[:1], s[:1])
    return expand_as(2 - a, x) * x + expand_as(b, x) * pred.score + expand_as(b.sqrt(), x) * z


PREDICTOR_STEPS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}


def _batch_norm(v: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of each example's Euclidean norm (score_sde's LangevinCorrector)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1).double(), dim=1).mean()


def langevin_step(x: torch.Tensor, pred: Prediction, snr: float, alpha_i: torch.Tensor,
                  z: torch.Tensor) -> torch.Tensor:
    """One Langevin corrector step at fixed noise level (Song et al. 2021, Algorithms 4 and 5):
    eps = 2 alpha_i (r ||z|| / ||score||)^2, x <- x + eps score + sqrt(2 eps) z.

    r is the signal-to-noise ratio; alpha_i = (alpha_t / alpha_s)^2 with s the next grid time (1 - beta_i for
    VP, 1 for VE, as in the paper). The norms are batch means of per-example norms, as in score_sde's code:
    per example, a 2-D score can be near 0 at a mode and the step would blow up.
    """
    score = pred.score
    grad_norm = _batch_norm(score)
    if float(grad_norm) == 0:
        return x
    step = 2 * alpha_i * (snr * _batch_norm(z) / grad_norm) ** 2
    return x + expand_as(step, x) * score + expand_as((2 * step).sqrt(), x) * z


def check_sde_options(predictor: str, corrector_steps: int, snr: float) -> None:
    """Validate the predictor-corrector options (users pass them by name)."""
    if predictor not in PREDICTORS:
        raise DiffusaError(f"unknown predictor {predictor!r}; known: {', '.join(PREDICTORS)}")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise DiffusaError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    if not snr > 0:
        raise DiffusaError(f"the corrector's snr must be positive, got {snr}")
    if predictor == "none" and corrector_steps == 0:
        raise DiffusaError("predictor 'none' with corrector_steps 0 would not move the samples; give one of them")


def sample_pc(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 1-3; score_sde's pc_sampler).

    At each grid time t: `corrector_steps` Langevin steps at t (signal-to-noise ratio `snr`), then one
    `predictor` step to the next grid time s ("euler_maruyama", "reverse_diffusion", or "none": annealed
    Langevin dynamics, Song & Ermon 2019). The step to s = 0 is the denoising step x0_hat.
    Network evaluations: corrector_steps + 1 per step (corrector_steps with predictor "none", plus 1 on the
    final denoising step). score_sde's defaults: reverse_diffusion + 1 Langevin step at snr = 0.16.
    """
    check_sde_options(predictor, corrector_steps, snr)
    proc = denoiser.process
    nfe = 0
    for i in range(len(grid) - 1):
        t, s = step_times(grid, i, x.shape[0], x.device)
        last = float(grid[i + 1]) <= 0
        if corrector_steps > 0:
            alpha_ts, _ = proc.transition(t[:1], s[:1])
            for _ in range(corrector_steps):
                pred = denoiser(x, t, cond)
                nfe += 1
                x = langevin_step(x, pred, snr, alpha_ts**2, randn_like(x, generator))
        if last:
            pred = denoiser(x, t, cond)
            nfe += 1
            x = pred.x0
        elif predictor != "none":
            pred = denoiser(x, t, cond)
            nfe += 1
            x = PREDICTOR_STEPS[predictor](proc, x, pred, t, s, randn_like(x, generator))
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0, "nfe": nfe})
    return x


def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                          generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6), one network evaluation per step, then the
    final denoising step: predictor-corrector with predictor "euler_maruyama" and no corrector."""
    return sample_pc(denoiser, x, grid, cond=cond, generator=generator, callback=callback,
                     predictor="euler_maruyama", corrector_steps=0)


def sample_reverse_diffusion(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                             generator: torch.Generator | None = None,
                             callback: Callback | None = None) -> torch.Tensor:
    """The reverse-diffusion sampler (Song et al. 2021, Sec. 4.2, eq. 46), one network evaluation per step:
    predictor-corrector with predictor "reverse_diffusion" and no corrector."""
    return sample_pc(denoiser, x, grid, cond=cond, generator=generator, callback=callback,
                     predictor="reverse_diffusion", corrector_steps=0)
