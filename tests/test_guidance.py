"""Guidance wrappers: classifier-free guidance at w = 0 / 1 is the unconditional / conditional model in one
batched call; on the 2-D Gaussian-mixture oracle (exact conditional, unconditional and noisy-classifier
quantities) both kinds of guidance draw the requested component at least 99% of the time with every sampler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_sde_ode import F64, MIX_M, MIX_S, MIX_W, PROCS, UNIQUE, mixture_denoiser, setting, start_grid

from diffusa import Denoiser
from diffusa.errors import DiffusaError
from diffusa.guidance import ClassifierGuided, classifier_free, classifier_log_prob, null_labels
from diffusa.nets import UNet, UNetConfig
from diffusa.process import DiscreteDDPM
from diffusa.samplers import SAMPLERS

K = len(MIX_W)  # the null label is K


def component_denoiser_fn(proc):
    """x0-prediction of the exact conditional denoiser E[x0 | x_t, y] (component y is N(m_y, s_y^2 I)), and of
    the unconditional mixture denoiser for the null label K."""
    mix = mixture_denoiser(proc)

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, s = proc.alpha_sigma(t)
        a, s = a.view(-1, 1).to(x.dtype).expand(x.shape[0], 1), s.view(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        y = y.long()
        known = y < K
        m, v0 = MIX_M.to(x.dtype)[y.clamp(max=K - 1)], (MIX_S.to(x.dtype)[y.clamp(max=K - 1)] ** 2)[:, None]
        cond = m + v0 * a * (x - a * m) / (a**2 * v0 + s**2)
        out = torch.empty_like(x)
        out[known] = cond[known]
        if (~known).any():
            out[~known] = mix.raw(x[~known], t[~known] if t.numel() > 1 else t, None)
        return out

    return fn


def noisy_log_prob(proc):
    """log p(y | x_t, t): the responsibility of component y under the noisy mixture (exact)."""

    def log_prob(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, s = proc.alpha_sigma(t)
        a, s = a.view(-1, 1).to(x.dtype), s.view(-1, 1).to(x.dtype)
        var = a**2 * (MIX_S**2).to(x.dtype) + s**2
        d2 = ((x[:, None, :] - a[:, :, None] * MIX_M.to(x.dtype)) ** 2).sum(-1)
        logits = torch.log(MIX_W.to(x.dtype)) - torch.log(2 * math.pi * var) - d2 / (2 * var)
        return torch.log_softmax(logits, dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)

    return log_prob


def component_of(x: torch.Tensor) -> torch.Tensor:
    """The component each clean point most likely came from."""
    d2 = ((x[:, None, :].double() - MIX_M) ** 2).sum(-1)
    return (torch.log(MIX_W) - 2 * torch.log(MIX_S) - d2 / (2 * MIX_S**2)).argmax(1)


def tiny_unet(num_classes: int = 3, learned_variance: bool = False) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), image_size=8, emb_mult=2,
                          num_classes=num_classes, out_channels=2 if learned_variance else 1)).eval()
    for p in net.parameters():  # the zero-initialised output layer would hide every difference
        torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.mark.parametrize("learned_variance", [False, True])
def test_cfg_zero_and_one_are_the_two_models_in_one_call(learned_variance: bool):
    net = tiny_unet(learned_variance=learned_variance)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    den = Denoiser.from_network(net, DiscreteDDPM("cosine", 100), "eps", learned_variance=learned_variance)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((5,), 0.4, dtype=F64)
    y = torch.tensor([0, 1, 2, 1, 0])
    null = torch.full((5,), 3)
    with torch.no_grad():
        cond, uncond = den(x, t, y), den(x, t, null)
        calls.clear()
        w0 = classifier_free(den, 0.0, lambda c: null_labels(c, 3))(x, t, y)
        w1 = classifier_free(den, 1.0, lambda c: null_labels(c, 3))(x, t, y)
        w3 = classifier_free(den, 3.0, lambda c: null_labels(c, 3))(x, t, y)
    assert len(calls) == 3  # one network call for each, the two branches of w = 3 batched together
    assert torch.allclose(w0.eps, uncond.eps, atol=1e-6) and torch.allclose(w1.eps, cond.eps, atol=1e-6)
    assert not torch.allclose(cond.eps, uncond.eps, atol=1e-3)
    # w = 3 on eps (before clipping): 3 eps_c - 2 eps_u; compare the raw means
    raw_c, raw_u = den.output(x, t, y), den.output(x, t, null)
    mix = classifier_free(den, 3.0, lambda c: null_labels(c, 3)).output(x, t, y)
    if learned_variance:
        assert torch.allclose(mix[:, 1:], raw_c[:, 1:], atol=1e-6)  # the conditional branch's variance
        raw_c, raw_u, mix = raw_c[:, :1], raw_u[:, :1], mix[:, :1]
        assert w3.v_var is not None and torch.allclose(w3.v_var, cond.v_var, atol=1e-6)
    assert torch.allclose(mix, 3 * raw_c - 2 * raw_u, atol=1e-5)


def test_guidance_rejects_a_bad_scale_and_passes_none_through():
    den = mixture_denoiser(PROCS["vp"])
    with pytest.raises(DiffusaError, match="guidance scale"):
        classifier_free(den, float("nan"), 0)
    x = torch.randn(4, 2, dtype=F64)
    guided = classifier_free(den, 3.0, 0)
    assert torch.equal(guided(x, 0.5).x0, den(x, 0.5).x0)  # no conditioning: nothing to guide towards
    cg = ClassifierGuided(den, noisy_log_prob(den.process), 2.0)
    assert torch.equal(cg(x, 0.5).x0, den(x, 0.5).x0)
    assert copy.copy(cg).scale == 2.0 and cg.process is den.process  # copies, and the wrapped denoiser's attributes
    with pytest.raises(DiffusaError, match="apply it first"):
        classifier_free(cg, 2.0, 0)


def test_classifier_guidance_shifts_eps_by_sigma_times_the_gradient():
    proc = PROCS["ddpm_cosine"]
    den = mixture_denoiser(proc)
    lp = noisy_log_prob(proc)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = torch.full((6,), 0.5, dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(lp(xg, t, y).sum(), xg)[0]
    pred, guided = den(x, t), ClassifierGuided(den, lp, 2.5)(x, t, y)
    _, s = proc.alpha_sigma(t)
    assert torch.allclose(guided.eps, pred.eps - 2.5 * s.view(-1, 1) * grad, atol=1e-10)
    # at scale 1 the guided score is the conditional score: grad log p(x_t) + grad log p(y | x_t) = grad log p(x_t | y)
    cond = Denoiser.from_function(component_denoiser_fn(proc), proc, prediction="x0")
    assert torch.allclose(ClassifierGuided(den, lp, 1.0)(x, t, y).x0, cond(x, t, y).x0, atol=1e-8)


def run_sampler(name: str, pname: str, den, y: torch.Tensor, seed: int = 3) -> torch.Tensor:
    x_T = den.process.prior_sample((len(y), 2), generator=torch.Generator().manual_seed(seed), dtype=F64)
    return SAMPLERS[name](den, x_T, start_grid(name, pname, den), cond=y, generator=torch.Generator().manual_seed(seed),
                          **setting(name).options).double()


# every sampler, rotating over the processes (as the mixture oracle does)
CASES = [(name, list(PROCS)[i % len(PROCS)]) for i, name in enumerate(UNIQUE)]


@pytest.mark.parametrize("name,pname", CASES)
def test_both_guidances_draw_the_requested_component(name: str, pname: str):
    proc = PROCS[pname]
    y = torch.arange(1000) % K
    # classifier guidance at scale 1 with the exact noisy classifier on the unconditional mixture denoiser
    cg = ClassifierGuided(mixture_denoiser(proc), noisy_log_prob(proc), 1.0)
    hit_cg = float((component_of(run_sampler(name, pname, cg, y)) == y).double().mean())
    # classifier-free guidance at w = 3 with the exact conditional and unconditional denoisers
    both = Denoiser.from_function(component_denoiser_fn(proc), proc, prediction="x0")
    cfg = classifier_free(both, 3.0, lambda c: null_labels(c, K))
    hit_cfg = float((component_of(run_sampler(name, pname, cfg, y)) == y).double().mean())
    assert hit_cg >= 0.99 and hit_cfg >= 0.99, (hit_cg, hit_cfg)


def test_unguided_mixture_misses_the_request_most_of_the_time():
    """The check above can fail: without guidance the requested component is drawn only ~1/4 of the time."""
    proc = PROCS["vp"]
    y = torch.arange(1000) % K
    x = run_sampler("ddim", "vp", mixture_denoiser(proc), y)
    assert float((component_of(x) == y).double().mean()) < 0.4


def test_classifier_log_prob_reads_the_label_column():
    class Fixed(torch.nn.Module):
        def forward(self, x, c_noise):
            return torch.stack([x.flatten(1).sum(1), torch.zeros(x.shape[0]), c_noise.float()], dim=1)

    proc = PROCS["vp"]
    lp = classifier_log_prob(Fixed(), proc)
    x = torch.randn(3, 1, 2, 2)
    t = torch.full((3,), 0.5, dtype=F64)
    logits = Fixed()(x, proc.c_noise(t))
    expect = torch.log_softmax(logits, 1)[torch.arange(3), torch.tensor([0, 2, 1])]
    assert torch.allclose(lp(x, t, torch.tensor([0, 2, 1])), expect)
