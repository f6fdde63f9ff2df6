"""SimpleLoss against closed forms from an exact Gaussian denoiser; Min-SNR weights; the hybrid loss as its two
parts in one network call; time samplers."""

from __future__ import annotations

import pytest
import torch

from diffusa import Denoiser, DiffusaError, DiscreteDDPM, Process
from diffusa.losses import HybridLoss, SimpleLoss, UniformTimeSampler, VLBLoss
from diffusa.prediction import PARAMETERIZATIONS, target_of

T = 1000
MU = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
SD = torch.tensor([0.3, 1.0, 0.6, 1.5], dtype=torch.float64)


def gaussian_denoiser(proc: Process, kind: str, mu=MU, sd=SD) -> Denoiser:
    """The exact denoiser for data N(mu, diag(sd^2)), emitting parameterization `kind`."""

    def fn(x, t):
        a, s = proc.alpha_sigma(t)
        a, s = a[:, None], s[:, None]
        x0 = mu + sd**2 * a * (x - a * mu) / (a**2 * sd**2 + s**2)
        eps = (x - a * x0) / s
        return target_of(kind, x0, eps, a, s)

    return Denoiser.from_function(fn, proc, prediction=kind)


def draw(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x0 = MU + SD * torch.randn(n, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x0, noise


@pytest.fixture(scope="module", params=["linear", "cosine"])
def proc(request):
    return DiscreteDDPM(request.param, T)


@pytest.mark.parametrize("t_val", [0.01, 0.2, 0.5, 0.9])
def test_x0_loss_is_posterior_variance(proc, t_val):
    n = 20_000
    x0, noise = draw(n, seed=int(t_val * 100))
    t = torch.full((n,), t_val, dtype=torch.float64)
    loss = SimpleLoss()(gaussian_denoiser(proc, "x0"), x0, t, noise)
    assert loss.shape == (n,)
    a, s = (float(v) for v in proc.alpha_sigma(torch.tensor(t_val, dtype=torch.float64)))
    # E ||x0 - E[x0 | x_t]||^2 / d = mean_d Var[x0 | x_t] = sd^2 sigma^2 / (a^2 sd^2 + sigma^2)
    expected = (SD**2 * s**2 / (a**2 * SD**2 + s**2)).mean().item()
    # each squared error is var * chi2_1: the mean of 80k has relative sd sqrt(2 / 80k) ~ 0.5% (more
    # with unequal vars, < 1%): 4% is > 4 sd
    assert loss.mean().item() == pytest.approx(expected, rel=0.04)


def test_x0_loss_vanishes_for_point_data(proc):
    # data = a point: E[x0 | x_t] = mu exactly, for every t
    mu = torch.tensor([0.5, -0.25, 1.0, 0.0], dtype=torch.float64)
    den = gaussian_denoiser(proc, "x0", mu=mu, sd=torch.zeros(4, dtype=torch.float64))
    t = torch.linspace(0.001, 1, 50, dtype=torch.float64)
    loss = SimpleLoss()(den, mu.expand(50, 4), t, torch.randn(50, 4, dtype=torch.float64))
    assert loss.abs().max().item() < 1e-20


def test_eps_and_v_losses_are_rescaled_x0_losses(proc):
    n = 64
    x0, noise = draw(n, seed=7)
    t = torch.linspace(0.002, 1, n, dtype=torch.float64)
    losses = {k: SimpleLoss()(gaussian_denoiser(proc, k), x0, t, noise) for k in PARAMETERIZATIONS}
    snr = torch.exp(proc.log_snr(t))
    # eps - eps_hat = -(alpha / sigma)(x0 - x0_hat) and, VP, v - v_hat = -(x0 - x0_hat) / sigma:
    # per example, L_eps = snr L_x0 and L_v = (snr + 1) L_x0 (float64 throughout)
    assert torch.allclose(losses["eps"], snr * losses["x0"], rtol=1e-7, atol=1e-12)
    assert torch.allclose(losses["v"], (snr + 1) * losses["x0"], rtol=1e-7, atol=1e-12)


def test_targets_regressed(proc):
    # a denoiser that outputs zeros: the loss is the mean square of the target itself
    n = 32
    x0, noise = draw(n, seed=8)
    t = torch.linspace(0.01, 1, n, dtype=torch.float64)
    a, s = proc.alpha_sigma(t)
    a, s = a[:, None], s[:, None]
    for kind, target in (("eps", noise), ("x0", x0), ("v", a * noise - s * x0)):
        den = Denoiser.from_function(lambda x, t: torch.zeros_like(x), proc, prediction=kind)
        assert torch.allclose(SimpleLoss()(den, x0, t, noise), target.square().mean(1), rtol=1e-12)
        assert torch.allclose(SimpleLoss(norm="l1")(den, x0, t, noise), target.abs().mean(1), rtol=1e-12)


def test_loss_feeds_the_right_x_t(proc):
    seen = {}

    def fn(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    x0, noise = draw(5, seed=9)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    SimpleLoss()(Denoiser.from_function(fn, proc, prediction="eps"), x0, t, noise)
    assert torch.allclose(seen["x"], proc.q_sample(x0, t, noise), atol=1e-12)
    assert torch.equal(seen["t"], t)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights(proc, gamma):
    t = torch.linspace(0.001, 1, 200, dtype=torch.float64)
    snr = torch.exp(proc.log_snr(t))
    clipped = snr.clamp(max=gamma)
    loss = SimpleLoss(weighting="min_snr", gamma=gamma)
    w = {k: loss.weight(gaussian_denoiser(proc, k), t) for k in PARAMETERIZATIONS}
    # Hang et al. 2023: x0-space weight min(snr, gamma); eps: / snr; v (VP): / (snr + 1). float32 weights
    assert torch.allclose(w["eps"], (clipped / snr).float(), rtol=1e-6)
    assert torch.allclose(w["v"], (clipped / (snr + 1)).float(), rtol=1e-6)
    assert torch.allclose(w["x0"], clipped.float(), rtol=1e-6)
    assert w["eps"].dtype == torch.float32
    # low noise (snr > gamma) is down-weighted, high noise keeps weight 1 for eps
    assert torch.equal(w["eps"][snr <= gamma], torch.ones_like(w["eps"][snr <= gamma]))
    assert (w["eps"][snr > gamma] < 1).all()
    assert torch.equal(SimpleLoss().weight(gaussian_denoiser(proc, "eps"), t), torch.ones(200))


def test_min_snr_losses_agree_across_parameterizations(proc):
    # the point of expressing Min-SNR per target: the same weighted x0-space loss for all three
    x0, noise = draw(64, seed=10)
    t = torch.linspace(0.002, 1, 64, dtype=torch.float64)
    loss = SimpleLoss(weighting="min_snr", gamma=5.0)
    got = {k: loss(gaussian_denoiser(proc, k), x0, t, noise).double() for k in PARAMETERIZATIONS}
    # weights are float32: relative 1e-6
    assert torch.allclose(got["eps"], got["x0"], rtol=1e-6, atol=1e-12)
    assert torch.allclose(got["v"], got["x0"], rtol=1e-6, atol=1e-12)


def test_learned_variance_loss_uses_mean_half(proc):
    x0, noise = draw(8, seed=11)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    plain = gaussian_denoiser(proc, "eps")
    learned = Denoiser.from_function(lambda x, t: torch.cat([plain.raw(x, t, None), torch.ones_like(x)], dim=1),
                                     proc, prediction="eps", learned_variance=True)
    assert torch.equal(SimpleLoss()(learned, x0, t, noise), SimpleLoss()(plain, x0, t, noise))


def test_hybrid_is_simple_plus_lambda_vlb_in_one_network_call():
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16), from one forward pass; L_vlb reads the
    output unclipped (IDDPM trains with clip_denoised=False) whatever the denoiser's clip_x0."""
    T = 10
    proc = DiscreteDDPM("linear", T)
    calls = []

    def fn(x, t):
        calls.append(len(x))
        _, s = proc.alpha_sigma(t)
        return torch.cat([0.8 * x + 0.5 * s[:, None], torch.tanh(x - 0.3)], dim=1)

    den = Denoiser.from_function(fn, proc, prediction="eps", learned_variance=True, clip_x0=1.0)
    x0, noise = draw(32, seed=12)
    t = torch.randint(1, T + 1, (32,), generator=torch.Generator().manual_seed(13)).double() / T
    simple = SimpleLoss(weighting="min_snr")
    calls.clear()
    hybrid = HybridLoss(proc, simple, vlb_weight=0.25)(den, x0, t, noise)
    assert calls == [32]
    vlb = VLBLoss(proc)(den, x0, t, noise)
    assert torch.allclose(hybrid, simple(den, x0, t, noise) + 0.25 * vlb, rtol=1e-12, atol=0)
    # the bound ignores clipping: the same as for the unclipped denoiser, though clipping does move x0 here
    assert torch.equal(vlb, VLBLoss(proc)(den.derive(clip_x0=None), x0, t, noise))
    x_t = proc.q_sample(x0, t, noise)
    assert not torch.allclose(den(x_t, t).x0, den.derive(clip_x0=None)(x_t, t).x0)
    assert den.clip_x0 == 1.0


def test_loss_settings_errors():
    with pytest.raises(DiffusaError):
        SimpleLoss(norm="huber")
    with pytest.raises(DiffusaError):
        SimpleLoss(weighting="p2")


def test_uniform_time_sampler_discrete():
    proc = DiscreteDDPM("linear", 10)
    t, w = UniformTimeSampler(proc).sample(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and t.shape == (5000,)
    assert torch.equal(w, torch.ones(5000))
    steps = t * 10
    assert torch.equal(steps, steps.round())  # exactly i / T
    counts = torch.bincount(steps.round().long(), minlength=11)
    assert counts[0] == 0  # never t = 0 (clean data)
    # 500 expected per step, binomial sd ~21: 400..600 is > 4 sd
    assert counts[1:].min() > 400 and counts[1:].max() < 600
    # reproducible from the generator
    t2, _ = UniformTimeSampler(proc).sample(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)


def test_uniform_time_sampler_continuous():
    class Cosine(Process):
        def alpha_sigma(self, t):
            return torch.cos(t * torch.pi / 2), torch.sin(t * torch.pi / 2)

    t, w = UniformTimeSampler(Cosine(), t_min=0.2).sample(4000, generator=torch.Generator().manual_seed(1))
    assert t.min() >= 0.2 and t.max() <= 1
    # uniform on [0.2, 1]: mean 0.6 with sd 0.23 / sqrt(4000) = 0.004
    assert t.mean().item() == pytest.approx(0.6, abs=0.02)
    assert torch.equal(w, torch.ones(4000))
