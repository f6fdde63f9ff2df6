"""Exact log-likelihood through the probability-flow ODE (Chen et al. 2018, "Neural ODEs", Theorem 1, the
instantaneous change of variables; Song et al. 2021, "Score-Based Generative Modeling through SDEs", Appendix D.2).

Along the ODE dx/dt = v(x, t) = alpha'(t) x0_hat + sigma'(t) eps_hat (process.velocity),
d log p_t(x(t)) / dt = -div v(x(t), t), so integrating [x, delta] with d delta / dt = div v from t_min to 1 gives

    log p_{t_min}(x) = log p_1(x(1)) + delta(1),

with the prior p_1 = N(0, sigma(1)^2 I) ("standard", score_sde's). That prior is exact for flow (alpha(1) = 0) but
neglects alpha(1) x0 for VP (alpha(1) ~ 0.0066) and VE (alpha = 1): x(1) lies at scale sigma(1) = 50 there, so a
data mean mu shifts log p_1 by ~ x(1) mu / sigma(1)^2 per dimension, zero on average over the data but ~0.03
nats for a 3-sigma point when mu = 0.5. The "tweedie" prior N(alpha(1) x0_hat(x(1), 1), sigma(1)^2 I) puts
the model's own estimate of alpha(1) E[x0 | x(1)] (Tweedie's formula: its score is the model's score at t = 1
up to the slope of x0_hat, ~Var[x0] / sigma(1)^2) back in, for one more network evaluation; it equals the
standard prior where alpha(1) = 0. The data point is taken as x(t_min), as in score_sde (t_min = 1e-5 there
and here).

The divergence is exact (one backward pass per dimension: for low-dimensional data) or Hutchinson's
estimate eps^T (dv/dx) eps (Hutchinson 1989; Grathwohl et al. 2019, FFJORD) with Rademacher or Gaussian
probes drawn once from `generator` and held fixed along the trajectory, so the integral stays an ODE and the
estimate of log p is unbiased.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser

DIVERGENCES = ("exact", "hutchinson")
PRIORS = ("standard", "tweedie")
PROBES = ("rademacher", "gaussian")
LOG2 = math.log(2.0)


def prior_log_prob(denoiser: Denoiser, x: torch.Tensor, prior: str = "standard", cond: Any = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log N(x; m, sigma(1)^2 I) per example, summed over dimensions (float64, shape (B,)): m = 0 ("standard")
    or m = alpha(1) x0_hat(x, 1) ("tweedie", one network evaluation at `dtype`)."""
    a1, s1 = denoiser.process.alpha_sigma(torch.ones((), dtype=torch.float64))
    var = float(s1) ** 2
    mean = torch.zeros_like(x, dtype=torch.float64)
    if prior == "tweedie" and float(a1) != 0:
        with torch.no_grad():
            t1 = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            mean = float(a1) * denoiser(x.to(dtype), t1, cond).x0.double()
    r = (x.double() - mean).reshape(x.shape[0], -1)
    return -0.5 * r.shape[1] * math.log(2 * math.pi * var) - (r**2).sum(1) / (2 * var)


def draw_probes(shape: tuple[int, ...], kind: str, num: int, generator: torch.Generator | None,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`num` Hutchinson probes of `shape`: Rademacher (+-1) or standard Gaussian, from `generator`."""
    gen_device = generator.device if generator is not None else device
    if kind == "rademacher":
        z = torch.randint(0, 2, (num, *shape), generator=generator, device=gen_device).to(dtype) * 2 - 1
    else:
        z = torch.randn((num, *shape), generator=generator, device=gen_device, dtype=dtype)
    return z.to(device)


def divergence_exact(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d v_i / d x_i per example by one backward pass per dimension (examples are independent)."""
    flat = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, i].double()
    return div


def divergence_hutchinson(v: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """The mean over probes z of z^T (dv/dx) z per example (vector-Jacobian products)."""
    div = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for z in probes:
        (g,) = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=True)
        div = div + (g * z).reshape(g.shape[0], -1).sum(1).double()
    return div / probes.shape[0]


def _check(t_min: float, rtol: float, atol: float, divergence: str, probe: str, num_probes: int, prior: str) -> None:
    if not 0 < t_min < 1:
        raise DiffusaError(f"t_min must lie in (0, 1), got {t_min}")
    if not (rtol > 0 and atol > 0):
        raise DiffusaError(f"the ODE solver needs positive tolerances, got rtol={rtol}, atol={atol}")
    if divergence not in DIVERGENCES:
        raise DiffusaError(f"unknown divergence {divergence!r}; known: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise DiffusaError(f"unknown probe {probe!r}; known: {', '.join(PROBES)}")
    if prior not in PRIORS:
        raise DiffusaError(f"unknown prior {prior!r}; known: {', '.join(PRIORS)}")
    if not isinstance(num_probes, int) or num_probes < 1:
        raise DiffusaError(f"num_probes must be a positive integer, got {num_probes!r}")


def ode_log_likelihood(denoiser: Denoiser, x0: torch.Tensor, *, cond: Any = None, t_min: float = 1e-5,
                       rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact",
                       probe: str = "rademacher", num_probes: int = 1, prior: str = "standard",
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """log p(x0) in nats per example (float64, shape (B,)) and the number of network evaluations.

    Integrates [x, delta] from t_min to 1 with scipy's adaptive RK45 (rtol, atol; score_sde's 1e-5 defaults)
    over the whole batch in float64 (the network sees x0's dtype); divergence "exact" or "hutchinson" with
    `num_probes` probes of kind `probe` averaged per evaluation; `prior` "standard" or "tweedie" (module
    docstring; +1 evaluation). The denoiser must be differentiable in x.
    """
    _check(t_min, rtol, atol, divergence, probe, num_probes, prior)
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    b, n = shape[0], x0[0].numel()
    proc = denoiser.process
    probes = (draw_probes(tuple(shape), probe, num_probes, generator, device, dtype)
              if divergence == "hutchinson" else None)
    nfe = 0

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.from_numpy(y[: b * n]).reshape(shape).to(device=device, dtype=dtype).requires_grad_(True)
            tt = torch.full((b,), t, dtype=torch.float64, device=device)
            pred = denoiser(x, tt, cond)
            v = proc.velocity(pred.x0, pred.eps, tt[:1]).to(dtype)
            div = divergence_exact(v, x) if probes is None else divergence_hutchinson(v, x, probes)
        return np.concatenate([v.detach().double().cpu().numpy().ravel(), div.detach().cpu().numpy()])

    y0 = np.concatenate([x0.detach().double().cpu().numpy().ravel(), np.zeros(b)])
    sol = solve_ivp(rhs, (t_min, 1.0), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise DiffusaError(f"the likelihood ODE failed: {sol.message}; loosen rtol/atol")
    y1 = torch.from_numpy(sol.y[:, -1]).to(device)
    x1, delta = y1[: b * n].reshape(shape), y1[b * n :]
    prior_uses_model = prior == "tweedie" and float(proc.alpha_sigma(torch.ones((), dtype=torch.float64))[0]) != 0
    return prior_log_prob(denoiser, x1, prior, cond, dtype) + delta, nfe + int(prior_uses_model)


def dequantize_images(images: torch.Tensor | np.ndarray, generator: torch.Generator | None = None,
                      noise: bool = True) -> torch.Tensor:
    """uint8 images (N, H, W[, C]), or float (N, C, H, W) in [-1, 1] from uint8 (k / 127.5 - 1), to float64
    (N, C, H, W): with `noise`, y = (k + u) / 128 - 1, u ~ U[0, 1) from `generator` (uniform dequantization;
    the bins [k, k + 1) of [0, 256) tile [-1, 1)); without it, the library's point k / 127.5 - 1."""
    if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
        arr = torch.as_tensor(np.asarray(images))
        if arr.dtype != torch.uint8 or arr.ndim not in (3, 4):
            raise DiffusaError(f"images must be uint8 (N, H, W[, C]) or float (N, C, H, W) in [-1, 1], "
                               f"got {arr.dtype} of shape {tuple(arr.shape)}")
        k = (arr[..., None] if arr.ndim == 3 else arr).permute(0, 3, 1, 2).double()
    else:
        if float(images.min()) < -1 - 1e-6 or float(images.max()) > 1 + 1e-6:
            raise DiffusaError("float images must lie in [-1, 1] (the library's range); rescale them first")
        k = ((images.detach().double() + 1) * 127.5).round().clamp(0, 255)
    if not noise:
        return k / 127.5 - 1
    gen_device = generator.device if generator is not None else k.device
    u = torch.rand(k.shape, generator=generator, device=gen_device, dtype=torch.float64).to(k.device)
    return (k + u) / 128 - 1


def bits_per_dim_of(log_prob: torch.Tensor, dims: int) -> torch.Tensor:
    """bits/dim of 8-bit data from log p of y in [-1, 1]: y = (k + u) / 128 - 1 maps the bins [k, k + 1) of
    [0, 256) onto [-1, 1) with Jacobian 1/128 per dimension, so log P(k) >= E_u log p(y) - D log 128 and
    bpd = -log p(y) / (D ln 2) + log2(128) = -log p(y) / (D ln 2) + 7
    (the log2 256 of 8-bit data, less log2 2 for the width of [-1, 1]; score_sde's offset 7)."""
    return -log_prob / (dims * LOG2) + 7.0


def ode_bits_per_dim(denoiser: Denoiser, images: torch.Tensor | np.ndarray, *, dequantize: bool = True,
                     generator: torch.Generator | None = None, **kwargs: Any) -> tuple[torch.Tensor, int]:
    """bits/dim per image (float64, (N,)) of 8-bit images by the probability-flow ODE, and the NFE.

    images: uint8 (N, H, W[, C]) or float (N, C, H, W) in [-1, 1] that came from uint8. With
    `dequantize` (the default) each image is uniformly dequantized with `generator` (an upper bound on
    the discrete bits/dim in expectation); otherwise the ODE is evaluated at k / 127.5 - 1. `generator` also
    draws Hutchinson probes; other keywords go to `ode_log_likelihood`. The network sees float32 inputs.
    """
    y = dequantize_images(images, generator, noise=dequantize).float()
    logp, nfe = ode_log_likelihood(denoiser, y, generator=generator, **kwargs)
    return bits_per_dim_of(logp, y[0].numel()), nfe
