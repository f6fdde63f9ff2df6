"""log p(x) by the probability-flow ODE (Chen et al. 2018; Song et al. 2021, App. D.2) against closed forms:
Gaussian data and a 2-D Gaussian mixture on every process, Hutchinson's estimate against the exact divergence,
and the bits/dim conversion of 8-bit images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_sde_ode import F64, MU, PROCS, SD, gaussian_denoiser, mixture_denoiser, mixture_log_prob, mixture_sample

from diffusa import Denoiser, DiffusaError
from diffusa.likelihood import ode_bits_per_dim, ode_log_likelihood
from diffusa.likelihood.ode import bits_per_dim_of, dequantize_images
from diffusa.process import VP, Flow, expand_as

T_MIN = 1e-5


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor = MU, sd: torch.Tensor = SD) -> torch.Tensor:
    return (-0.5 * math.log(2 * math.pi) - torch.log(sd) - (x - mu) ** 2 / (2 * sd**2)).sum(1)


def gaussian_data(n: int = 48, seed: int = 0) -> torch.Tensor:
    return MU + SD * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("pname", list(PROCS))
def test_gaussian_log_likelihood(pname):
    proc = PROCS[pname]
    x = gaussian_data()
    exact = gaussian_log_prob(x)
    lp, nfe = ode_log_likelihood(gaussian_denoiser(proc), x, t_min=T_MIN, prior="tweedie")
    assert lp.dtype == F64 and lp.shape == (48,) and nfe > 0
    # per example, per dimension: measured <= 1.2e-3 (VE), 1e-4 (VP, flow); the target is 0.01 nats/dim
    assert ((lp - exact).abs() / 2 < 0.01).all(), ((lp - exact).abs() / 2).max()
    assert float((lp - exact).abs().mean()) / 2 < 2e-3
    # score_sde's prior N(0, sigma(1)^2) neglects alpha(1) mu: exact for flow (alpha(1) = 0); on VE (x(1) ~ 50 mu)
    # it moves a 3-sigma point by ~0.03 nats but averages out over the data
    lp_std, _ = ode_log_likelihood(gaussian_denoiser(proc), x, t_min=T_MIN)
    assert abs(float((lp_std - exact).mean())) / 2 < 0.01
    if pname in ("flow", "vp", "subvp", "ddpm_cosine"):
        assert ((lp_std - exact).abs() / 2 < 0.01).all()
    if pname == "flow":
        assert torch.allclose(lp_std, lp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pname", ["vp", "ve", "flow"])
def test_mixture_log_likelihood(pname):
    # a non-Gaussian density: the ODE through the mixture's exact denoiser recovers its log-density
    proc = PROCS[pname]
    x = mixture_sample(48, torch.Generator().manual_seed(0))
    a, s = (float(v) for v in proc.alpha_sigma(torch.tensor(T_MIN, dtype=F64)))
    lp, _ = ode_log_likelihood(mixture_denoiser(proc), x, t_min=T_MIN, prior="tweedie")
    assert ((lp - mixture_log_prob(x, a, s)).abs() / 2 < 0.01).all()
    assert ((lp - mixture_log_prob(x)).abs() / 2 < 0.01).all()


def test_hutchinson_agrees_with_exact_within_its_standard_error():
    # 12 points x 16 independent probe sets, as one batch (each copy of a point has its own probe); the mixture's
    # Jacobian is not diagonal, so the estimator has variance
    proc = VP()
    den = mixture_denoiser(proc)
    x = mixture_sample(12, torch.Generator().manual_seed(1))
    exact, _ = ode_log_likelihood(den, x)
    reps = 16
    for probe in ("rademacher", "gaussian"):
        est, nfe = ode_log_likelihood(den, x.repeat(reps, 1), divergence="hutchinson", probe=probe,
                                      generator=torch.Generator().manual_seed(2))
        est = est.reshape(reps, 12)
        se = est.std(0) / math.sqrt(reps)
        z = (est.mean(0) - exact) / se
        assert nfe > 0 and (se > 0).all()
        # the mean of 16 skewed (quadratic-form) estimates: t-like tails with 15 degrees of freedom
        assert (z.abs() < 4).all() and float((z**2).mean()) < 2.5, (probe, z)
    # more probes per evaluation: the same mean, a smaller spread
    est4, _ = ode_log_likelihood(den, x.repeat(reps, 1), divergence="hutchinson", num_probes=4, probe="gaussian",
                                 generator=torch.Generator().manual_seed(3))
    assert float(est4.reshape(reps, 12).std(0).mean()) < 0.75 * float(est.std(0).mean())


def test_rademacher_is_exact_on_a_diagonal_jacobian():
    # Gaussian data with diagonal covariance: dv/dx is diagonal and z_i^2 = 1, so the estimate is the trace
    proc = Flow()
    x = gaussian_data(16)
    exact, _ = ode_log_likelihood(gaussian_denoiser(proc), x)
    est, _ = ode_log_likelihood(gaussian_denoiser(proc), x, divergence="hutchinson", probe="rademacher",
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, exact, rtol=0, atol=1e-6)


def test_same_generator_same_estimate_and_no_grad_context():
    den = mixture_denoiser(VP())
    x = mixture_sample(8, torch.Generator().manual_seed(0))
    kw = {"divergence": "hutchinson", "probe": "gaussian"}
    a, _ = ode_log_likelihood(den, x, generator=torch.Generator().manual_seed(4), **kw)
    with torch.no_grad():  # how an evaluation loop calls it
        b, _ = ode_log_likelihood(den, x, generator=torch.Generator().manual_seed(4), **kw)
    c, _ = ode_log_likelihood(den, x, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_likelihood_options_are_checked():
    den = gaussian_denoiser(VP())
    x = gaussian_data(4)
    for bad in ({"divergence": "trace"}, {"probe": "uniform"}, {"t_min": 0.0}, {"t_min": 1.0}, {"rtol": 0.0},
                {"prior": "exact"}, {"num_probes": 0}):
        with pytest.raises(DiffusaError):
            ode_log_likelihood(den, x, **bad)


# ---------------------------------------------------------------------------------------------
# bits/dim of 8-bit images

PIX_MU, PIX_SD = 0.1, 0.4


def pixel_denoiser(proc) -> Denoiser:
    """The exact denoiser of images whose pixels are i.i.d. N(0.1, 0.4^2), any shape."""

    def fn(x, t):
        a, s = proc.alpha_sigma(t)
        a, s = expand_as(a, x), expand_as(s, x)
        return PIX_MU + PIX_SD**2 * a * (x - a * PIX_MU) / (a**2 * PIX_SD**2 + s**2)

    return Denoiser.from_function(fn, proc, prediction="x0")


def hand_bpd(y: torch.Tensor) -> torch.Tensor:
    """bpd = -log p(y) / (D ln 2) + 7, log p of i.i.d. N(0.1, 0.4^2) pixels, by hand."""
    d = y[0].numel()
    logp = (-0.5 * math.log(2 * math.pi * PIX_SD**2) - (y - PIX_MU) ** 2 / (2 * PIX_SD**2)).reshape(len(y), -1).sum(1)
    return -logp / (d * math.log(2)) + 7


def test_bits_per_dim_formula():
    # the uniform density on [-1, 1]^D (log p = -D log 2) is 8 bits per 8-bit dimension
    assert float(bits_per_dim_of(torch.tensor([-12 * math.log(2)], dtype=F64), 12)) == pytest.approx(8.0, abs=1e-12)
    assert float(bits_per_dim_of(torch.tensor([0.0], dtype=F64), 5)) == pytest.approx(7.0, abs=1e-12)


def test_ode_bits_per_dim_against_hand_computation():
    proc = VP()
    den = pixel_denoiser(proc)
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(127.5 * (1 + PIX_MU), 127.5 * PIX_SD, size=(4, 3, 3, 2)), 0, 255).astype(np.uint8)
    k = torch.from_numpy(images).permute(0, 3, 1, 2).double()  # (N, C, H, W)
    # no dequantization: the library's point k / 127.5 - 1
    bpd, nfe = ode_bits_per_dim(den, images, dequantize=False, prior="tweedie")
    assert bpd.shape == (4,) and nfe > 0
    assert torch.allclose(bpd, hand_bpd(k / 127.5 - 1), rtol=0, atol=2e-3)  # 1e-3 nats/dim -> 1.5e-3 bits/dim
    # float input in [-1, 1] (the library's layout) is the same images
    bpd_float, _ = ode_bits_per_dim(den, (k / 127.5 - 1).float(), dequantize=False, prior="tweedie")
    assert torch.allclose(bpd_float, bpd, rtol=0, atol=1e-9)
    # uniform dequantization: y = (k + u) / 128 - 1 with u the generator's first draw
    bpd_deq, _ = ode_bits_per_dim(den, images, generator=torch.Generator().manual_seed(3), prior="tweedie")
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert torch.allclose(bpd_deq, hand_bpd((k + u) / 128 - 1), rtol=0, atol=2e-3)


def test_dequantize_images():
    k = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    y = dequantize_images(k, torch.Generator().manual_seed(0))
    assert y.shape == (1, 1, 16, 16) and y.dtype == F64
    assert float(y.min()) >= -1 and float(y.max()) < 1
    assert torch.equal(((y + 1) * 128).floor().reshape(-1), torch.arange(256, dtype=F64))  # each k stays in its bin
    assert torch.allclose(dequantize_images(k, noise=False).reshape(-1), torch.arange(256, dtype=F64) / 127.5 - 1)
    for bad in (torch.zeros(2, 3, dtype=torch.uint8), torch.full((1, 1, 2, 2), 1.5)):
        with pytest.raises(DiffusaError):
            dequantize_images(bad)


def test_bound_in_batches_slices_a_typed_condition() -> None:
    """bits_per_dim with a Cond (labels) in batches of 2 equals one batch of 4: each batch gets its own labels."""
    from diffusa import Cond, DiscreteDDPM
    from diffusa.likelihood import bits_per_dim
    from diffusa.prediction import Denoiser

    proc = DiscreteDDPM("linear", 20)
    den = Denoiser.from_function(lambda x, t, c: 0.1 * c.labels.view(-1, 1, 1, 1).to(x) + 0 * x, proc, "x0")
    x = torch.linspace(-1, 1, 4 * 16).view(4, 1, 4, 4)
    cond = Cond(labels=torch.tensor([0, 1, 2, 3]))
    whole = bits_per_dim(den, x, cond=cond, generator=torch.Generator().manual_seed(0), batch_size=4)
    halves = bits_per_dim(den, x, cond=cond, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert torch.allclose(whole.per_example, halves.per_example, rtol=1e-6)
    assert len(set(whole.per_example.tolist())) == 4  # the labels reached each example
