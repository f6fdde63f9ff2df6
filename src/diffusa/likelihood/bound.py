"""The variational bound of a DDPM chain in bits/dim (Ho et al. 2020, eqs. 5 and 13; Nichol & Dhariwal 2021).

    L = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x0) || p(x_T)),
    L_{t-1} = KL(q(x_s | x_t, x0) || p(x_s | x_t))   for a step t -> s > 0 of the grid,
    L_0     = -log p(x0 | x_t1)                      the discretized Gaussian decoder (eq. 13) at the last step.

The chain is any decreasing grid of times ending at 0 (the full chain of a DiscreteDDPM or a respaced one):
every step's beta is recomputed from the process's noise levels (`Process.transition`). The model's reverse
step has the posterior mean at the predicted x0 and a variance that is fixed (beta or beta-tilde of that
step) or learned (IDDPM eq. 15). Each term is a mean over dimensions in bits, so the terms sum to bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.cond import slice_cond
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM, Process, as_time, expand_as

VARIANCES = ("beta_tilde", "beta")
LOG2 = math.log(2.0)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor | float, mean2: torch.Tensor | float,
              logvar2: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (Ho et al. 2020, eq. 5's terms)."""
    logvar1 = torch.as_tensor(logvar1, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mean1.dtype, device=mean1.device)
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_normal_mass(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, evaluated in the tail nearer the mode (no cancellation)."""
    flip = (upper + lower) > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    tiny = torch.finfo(hi.dtype).tiny
    return log_hi + torch.log((-torch.expm1(torch.special.log_ndtr(lo) - log_hi)).clamp_min(tiny))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, *,
                                        num_bins: int = 256) -> torch.Tensor:
    """log P(x) elementwise (nats) for N(mean, e^(2 log_scale)) discretized to `num_bins` bins on [-1, 1].

    Ho et al. 2020, eq. 13: x is a pixel value k in 0..255 scaled to [-1, 1]; its bin is x +- 1/255, and the
    edge bins are open, (-inf, -1 + 1/255] and [1 - 1/255, inf), so the probabilities sum to 1. The normal CDF
    is exact (log_ndtr), not the tanh approximation of Ho's and IDDPM's code.
    """
    half = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = (centred + half) * inv_scale
    lower = (centred - half) * inv_scale
    middle = _log_normal_mass(upper, lower)
    left = torch.special.log_ndtr(upper)
    right = torch.special.log_ndtr(-lower)
    return torch.where(x < -1 + half, left, torch.where(x > 1 - half, right, middle))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(dim=1)


def _beta_tilde(process: Process, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The posterior variance of the step t -> s: beta_ts sigma_s^2 / sigma_t^2 (Ho et al. 2020, eq. 7)."""
    _, beta = process.transition(t, s)
    _, sig_t = process.alpha_sigma(t)
    _, sig_s = process.alpha_sigma(s)
    return beta * sig_s**2 / sig_t**2


def step_log_variance(process: Process, t: torch.Tensor, s: torch.Tensor, x: torch.Tensor, *,
                      v_var: torch.Tensor | None = None, variance: str = "beta_tilde",
                      t_above: torch.Tensor | None = None) -> torch.Tensor:
    """log Sigma of the model's reverse step t -> s, broadcast like x.

    beta = 1 - alphabar_t / alphabar_s is recomputed for the step (IDDPM respacing, Sec. 4). Learned:
    Sigma = exp(v log beta + (1 - v) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15); fixed: beta or
    beta-tilde (Ho et al. 2020, Sec. 3.2). beta-tilde is 0 at the last step (s = 0); there it is clipped to
    the beta-tilde of the step above, t_above -> t, as IDDPM's posterior_log_variance_clipped does (beta if
    t_above is None). Unlike IDDPM's "fixedlarge", variance="beta" keeps beta at the last step too, so a
    learned v = 1 is exactly the fixed beta model.
    """
    if variance not in VARIANCES:
        raise DiffusaError(f"unknown variance {variance!r}; known: {', '.join(VARIANCES)}")
    _, beta = process.transition(t, s)
    clip = _beta_tilde(process, t_above, t) if t_above is not None else beta
    beta_tilde = torch.where(s > 0, _beta_tilde(process, t, s), clip)
    log_beta = expand_as(torch.log(beta.clamp_min(1e-20)), x)
    log_beta_tilde = expand_as(torch.log(beta_tilde.clamp_min(1e-20)), x)
    if v_var is not None:
        return v_var * log_beta + (1 - v_var) * log_beta_tilde
    return log_beta if variance == "beta" else log_beta_tilde


def prior_bpd(process: Process, x0: torch.Tensor, t_max: torch.Tensor | float = 1.0) -> torch.Tensor:
    """L_T in bits/dim per example: KL(q(x_tmax | x0) || N(0, sigma(1)^2 I)), the prior `prior_sample` draws.

    (IDDPM uses N(0, I); sigma(1)^2 = 1 - alphabar_T differs from 1 by < 1e-4 for the linear and cosine chains.)
    """
    t = as_time(t_max, x0.shape[0], x0.device)
    a, s = process.alpha_sigma(t)
    _, s1 = process.alpha_sigma(torch.ones((), dtype=torch.float64, device=x0.device))
    kl = normal_kl(expand_as(a, x0) * x0, expand_as(2 * torch.log(s), x0), 0.0, float(2 * torch.log(s1)))
    return mean_flat(kl) / LOG2


def vlb_term_bpd(process: Process, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                 x0_hat: torch.Tensor, v_var: torch.Tensor | None = None, *, variance: str = "beta_tilde",
                 t_above: torch.Tensor | None = None) -> torch.Tensor:
    """The bound's term for the step t -> s per example, in bits/dim, given the model's x0 (and v_var).

    s > 0: L_{t-1} = KL(q(x_s | x_t, x0) || N(mu(x_t, x0_hat), Sigma)); s = 0: L_0 = -log p(x0 | x_t), the
    discretized decoder with mean mu(x_t, x0_hat) = x0_hat and Sigma as in `step_log_variance`.
    t, s, t_above: float64 tensors of shape (B,).
    """
    true = process.posterior(x_t, x0, t, s)
    model_mean = process.posterior(x_t, x0_hat, t, s).mean
    log_var = step_log_variance(process, t, s, x_t, v_var=v_var, variance=variance, t_above=t_above)
    kl = mean_flat(normal_kl(true.mean, true.log_var, model_mean, log_var))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var))
    return torch.where(s.to(kl.device) > 0, kl, nll) / LOG2


def bound_term(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, noise: torch.Tensor, *,
               variance: str = "beta_tilde", t_above: torch.Tensor | None = None, cond: Any = None) -> torch.Tensor:
    """One term of the bound per example (bits/dim): x_t = alpha_t x0 + sigma_t noise, then `vlb_term_bpd`."""
    proc = denoiser.process
    t = as_time(t, x0.shape[0], x0.device)
    s = as_time(s, x0.shape[0], x0.device)
    x_t = proc.q_sample(x0, t, noise)
    pred = denoiser(x_t, t, cond)
    return vlb_term_bpd(proc, x0, x_t, t, s, pred.x0, pred.v_var, variance=variance, t_above=t_above)


def chain_grid(process: Process) -> torch.Tensor:
    """The full chain of a DiscreteDDPM as a grid: T/T, (T-1)/T, ..., 1/T, 0."""
    if not isinstance(process, DiscreteDDPM):
        raise DiffusaError(f"the variational bound's default grid is a discrete chain's steps; process "
                           f"{process.name!r} needs an explicit grid= (a decreasing tensor of times ending at 0)")
    T = process.num_steps
    return torch.arange(T, -1, -1, dtype=torch.float64) / T


def _check_grid(grid: torch.Tensor) -> torch.Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
    if grid.ndim != 1 or len(grid) < 2 or float(grid[-1]) != 0.0 or not bool((grid[1:] < grid[:-1]).all()) \
            or float(grid[0]) > 1:
        raise DiffusaError("the bound's grid must be a decreasing 1-D tensor of times in (0, 1] ending at 0, "
                           f"got {grid.tolist()[:8]}...")
    return grid


def _as_unit(x0: torch.Tensor) -> torch.Tensor:
    """Data for the bound: float in [-1, 1] (uint8 images (B, C, H, W) are scaled by x / 127.5 - 1)."""
    if x0.dtype == torch.uint8:
        return x0.float() / 127.5 - 1.0
    if not x0.is_floating_point():
        raise DiffusaError(f"bits/dim needs float data in [-1, 1] or uint8 pixels, got dtype {x0.dtype}")
    lo, hi = float(x0.min()), float(x0.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise DiffusaError(f"bits/dim needs data in [-1, 1] (uint8 pixels / 127.5 - 1), got values in "
                           f"[{lo:.4g}, {hi:.4g}]")
    return x0


@dataclass
class BoundResult:
    """The variational bound in bits/dim over a data set.

    total: mean over the data of the per-example bound (or its unbiased estimate); se: its standard error
    (std over examples / sqrt(N); for an estimate this includes the spread of the random terms);
    prior: mean L_T; times: each step's start time t (decreasing; times[-1] is the decoder L_0's step);
    terms: mean term per step over the data (NaN where an estimate drew none); per_example: (N,) bounds;
    num_terms: K for an estimate, None for the full bound.
    """

    total: float
    se: float
    prior: float
    times: torch.Tensor
    terms: torch.Tensor
    per_example: torch.Tensor
    num_terms: int | None = None


def _randn(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def term_draws(n: int, terms: int | None, batch: int, generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps (batch, K), weights (K,)): every step with weight 1, or a stratified draw of K of the n steps.

    Stratified: the steps are cut into K strata of (nearly) equal size, one step is drawn uniformly from each
    stratum per example and weighted by the stratum's size. The estimate stays unbiased, and it varies far less
    than K uniform draws would: the terms span orders of magnitude across t, and every draw now sees each range."""
    if terms is None or terms >= n:
        return torch.arange(n).expand(batch, n), torch.ones(n, dtype=torch.float64)
    edges = torch.linspace(0, n, terms + 1, dtype=torch.float64).round().long()  # spacing n / K > 1: no empty stratum
    widths = edges[1:] - edges[:-1]
    u = torch.rand((batch, terms), generator=generator, dtype=torch.float64)
    steps = edges[:-1] + torch.minimum((u * widths).floor().long(), widths - 1)
    return steps, widths.double()


@torch.no_grad()
def bits_per_dim(denoiser: Denoiser, x0: torch.Tensor, *, terms: int | None = None, grid: torch.Tensor | None = None,
                 variance: str = "beta_tilde", cond: Any = None, generator: torch.Generator | None = None,
                 batch_size: int = 256) -> BoundResult:
    """The variational bound in bits/dim (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, Sec. 2.1).

    terms=None: all terms of the grid (the process's full chain by default): L_T + sum of every step's term.
    terms=K: an unbiased estimate from K terms per example, one drawn from each of K equal strata of the grid's
    n steps and weighted by its stratum's size (`term_draws`), with its standard error over examples.
    variance: the fixed variance of a model that does not learn it ("beta_tilde" or "beta"). x0: (N, ...) in
    [-1, 1] (or uint8 pixels), evaluated batch_size at a time. The denoiser's own x0 clipping applies (IDDPM
    evaluates with clip_denoised=True). Noise and the random terms come from `generator` only.
    """
    if variance not in VARIANCES:
        raise DiffusaError(f"unknown variance {variance!r}; known: {', '.join(VARIANCES)}")
    if terms is not None and (not isinstance(terms, int) or terms < 1):
        raise DiffusaError(f"the number of bound terms must be a positive integer, got {terms!r}")
    if batch_size < 1:
        raise DiffusaError(f"batch size must be positive, got {batch_size}")
    x0 = _as_unit(x0)
    grid = _check_grid(grid if grid is not None else chain_grid(denoiser.process))
    n = len(grid) - 1
    above = torch.cat([grid[:1], grid[:-2]])  # the time above each step's start (used at the last step only)
    has_above = n > 1
    sums = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    prior, per_example = [], []
    for lo in range(0, x0.shape[0], batch_size):
        xb = x0[lo:lo + batch_size]
        b = xb.shape[0]
        cb = slice_cond(cond, lo, lo + batch_size)
        prior_b = prior_bpd(denoiser.process, xb, grid[0].to(xb.device)).double().cpu()
        steps, weights = term_draws(n, terms, b, generator)
        total_b = torch.zeros(b, dtype=torch.float64)
        for k in range(steps.shape[1]):
            j = steps[:, k]
            t, s = grid[j].to(xb.device), grid[j + 1].to(xb.device)
            t_above = above[j].to(xb.device) if has_above else None
            val = bound_term(denoiser, xb, t, s, _randn(xb.shape, xb, generator), variance=variance,
                             t_above=t_above, cond=cb).double().cpu()
            total_b += weights[k] * val
            sums.index_add_(0, j, val)
            counts.index_add_(0, j, torch.ones(b, dtype=torch.float64))
        prior.append(prior_b)
        per_example.append(prior_b + total_b)
    per = torch.cat(per_example)
    se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else float("nan")
    mean_terms = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return BoundResult(total=float(per.mean()), se=se, prior=float(torch.cat(prior).mean()), times=grid[:-1],
                       terms=mean_terms, per_example=per, num_terms=terms)
