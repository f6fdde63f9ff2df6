"""Guidance wrappers: both are Denoisers with the wrapped one's settings; classifier-free guidance at w = 0 / 1 is
the unconditional / conditional model in one batched call; classifier guidance on a two-class Gaussian mixture gives
the closed-form guided score; on the 2-D Gaussian-mixture oracle (exact conditional, unconditional and
noisy-classifier quantities) both kinds of guidance draw the requested component at least 99% of the time with
every sampler."""

from __future__ import annotations

import math

import pytest
import torch
from test_sde_ode import F64, MIX_M, MIX_S, MIX_W, PROCS, UNIQUE, mixture_denoiser, setting, start_grid

from diffusa import Denoiser
from diffusa.cond import Cond, as_cond
from diffusa.errors import DiffusaError
from diffusa.guidance import (
    AutoGuided,
    ClassifierFreeGuided,
    ClassifierGuided,
    classifier_free,
    classifier_log_prob,
    null_captions,
    null_labels,
)
from diffusa.nets import UNet, UNetConfig
from diffusa.prediction import target_of
from diffusa.process import DiscreteDDPM
from diffusa.samplers import SAMPLERS

K = len(MIX_W)  # the null label is K


def component_denoiser_fn(proc):
    """x0-prediction of the exact conditional denoiser E[x0 | x_t, y] (component y is N(m_y, s_y^2 I)), and of
    the unconditional mixture denoiser for the null label K."""
    mix = mixture_denoiser(proc)

    def fn(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        a, s = proc.alpha_sigma(t)
        a, s = a.view(-1, 1).to(x.dtype).expand(x.shape[0], 1), s.view(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        y = as_cond(cond).labels.long()
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
    assert cg.scale == 2.0 and cg.process is den.process
    with pytest.raises(DiffusaError, match="apply it first"):  # the classifier's shift is not in the raw outputs
        classifier_free(cg, 2.0, 0)
    with pytest.raises(DiffusaError, match="wraps a Denoiser"):
        ClassifierGuided(lambda x, t, c: x, noisy_log_prob(den.process), 1.0)
    with pytest.raises(DiffusaError, match="has none"):
        cg(x, 0.5, Cond(tokens=torch.zeros(4, 3, dtype=torch.long)))


def test_classifier_guidance_gives_the_model_its_labels_only_with_model_cond():
    seen: list = []
    den = recording_denoiser(seen)
    lp = noisy_log_prob(den.process)
    x, y, image = torch.randn(3, 2, dtype=F64), torch.tensor([0, 1, 2]), torch.randn(3, 1, 2, 2, dtype=F64)
    ClassifierGuided(den, lp, 1.0)(x, 0.5, y)
    assert seen[-1] is None  # the unconditional model
    ClassifierGuided(den, lp, 1.0, model_cond=True)(x, 0.5, y)
    assert seen[-1] is y
    ClassifierGuided(den, lp, 1.0)(x, 0.5, Cond(labels=y, image=image))
    assert seen[-1].labels is None and seen[-1].image is image  # an image condition is the model's still
    both = Cond(labels=y, image=image)
    ClassifierGuided(den, lp, 1.0, model_cond=True)(x, 0.5, both)
    assert seen[-1] is both


def test_wrappers_are_denoisers_with_the_base_settings_and_stack():
    net = tiny_unet(learned_variance=True)
    den = Denoiser.from_network(net, DiscreteDDPM("cosine", 100), "v", learned_variance=True, clip_x0=1.0)
    cfg = classifier_free(den, 2.0, lambda c: null_labels(c, 3))
    cg = ClassifierGuided(cfg, lambda x, t, y: x.flatten(1)[:, :3].log_softmax(1)[torch.arange(len(y)), y], 1.5,
                          model_cond=True)
    assert isinstance(cfg, ClassifierFreeGuided) and isinstance(cg, ClassifierGuided)
    for wrapped in (cfg, cg):
        assert isinstance(wrapped, Denoiser)
        assert wrapped.process is den.process and wrapped.prediction == "v" and wrapped.net is net
        assert wrapped.settings() == den.settings() and wrapped.learned_variance and wrapped.clip_x0 == 1.0
    assert cg.base is cfg and cfg.base is den
    # derive rebuilds the stack around the derived base: the same guidance, unclipped; the originals untouched
    plain = cg.derive(clip_x0=None)
    assert isinstance(plain, ClassifierGuided) and isinstance(plain.base, ClassifierFreeGuided)
    assert plain.clip_x0 is None and plain.base.clip_x0 is None and plain.base.base.clip_x0 is None
    assert cg.clip_x0 == 1.0 and den.clip_x0 == 1.0 and plain.scale == 1.5 and plain.base.scale == 2.0
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.full((4,), 0.3, dtype=F64)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        got = plain(x, t, y)
        unclipped = den.derive(clip_x0=None)
        want = ClassifierGuided(classifier_free(unclipped, 2.0, lambda c: null_labels(c, 3)), cg.log_prob, 1.5,
                                model_cond=True)(x, t, y)
        clipped = cg(x, t, y)
    assert torch.equal(got.x0, want.x0) and torch.equal(got.eps, want.eps)
    assert got.x0.abs().max() > 1.0 and clipped.x0.abs().max() <= 1.0  # the derived one really is unclipped


def test_cfg_at_zero_and_one_is_exactly_the_unconditional_and_conditional_denoiser():
    net = tiny_unet()
    den = Denoiser.from_network(net, DiscreteDDPM("linear", 50), "eps", clip_x0=1.0)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0.1, 1.0, 6, dtype=F64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        for given in (y, Cond(labels=y)):
            u, c = den(x, t, torch.full_like(y, 3)), den(x, t, y)
            w0 = classifier_free(den, 0.0, lambda cc: null_labels(cc, 3))(x, t, given)
            w1 = classifier_free(den, 1, lambda cc: null_labels(cc, 3))(x, t, given)
            for got, want in ((w0, u), (w1, c)):
                assert torch.equal(got.x0, want.x0) and torch.equal(got.eps, want.eps)


def recording_denoiser(seen: list) -> Denoiser:
    """An x0-denoiser that records the conditioning it is given and answers x + 1 (+ the labels, if any)."""

    def fn(x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        seen.append(cond)
        labels = None if cond is None else as_cond(cond).labels
        return x + 1 + (0 if labels is None else labels.to(x.dtype).view(-1, 1))

    return Denoiser.from_function(fn, PROCS["vp"], prediction="x0")


def test_cfg_batches_conditionings_as_one_cond():
    seen: list = []
    den = recording_denoiser(seen)
    x = torch.zeros(2, 3, dtype=F64)
    image = torch.arange(2 * 4, dtype=F64).view(2, 1, 2, 2)
    cond = Cond(labels=torch.tensor([1, 2]), image=image)
    out = classifier_free(den, 3.0, lambda c: null_labels(c, 5)).output(x, 0.5, cond)
    batched = seen[-1]
    assert isinstance(batched, Cond) and batched.labels.tolist() == [1, 2, 5, 5]
    assert torch.equal(batched.image, torch.cat([image, image]))  # the image condition is not nulled
    # u + 3 (c - u) with c = x + 1 + y, u = x + 1 + 5
    assert torch.equal(out, torch.tensor([[-6.0] * 3, [-3.0] * 3], dtype=F64))
    # a label tensor or a {"tokens", "mask"} dict is read as a Cond
    classifier_free(den, 2.0, lambda c: null_labels(c, 5)).output(x, 0.5, torch.tensor([1, 2]))
    assert torch.equal(seen[-1].labels, torch.tensor([1, 2, 5, 5])) and seen[-1].image is None
    classifier_free(den, 0.0, lambda c: null_labels(c, 5)).output(x, 0.5, torch.tensor([1, 2]))
    assert torch.equal(seen[-1].labels, torch.tensor([5, 5]))
    text = {"tokens": torch.tensor([[1, 7, 2], [1, 8, 2]]), "mask": torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()}
    empty = {"tokens": torch.tensor([[1, 2, 0], [1, 2, 0]]), "mask": torch.tensor([[1, 1, 0], [1, 1, 0]]).bool()}
    classifier_free(den, 2.0, lambda c: empty).output(x, 0.5, text)
    assert set(seen[-1].present()) == {"tokens", "token_mask"}
    assert torch.equal(seen[-1].tokens, torch.cat([text["tokens"], empty["tokens"]]))
    assert torch.equal(seen[-1].token_mask, torch.cat([text["mask"], empty["mask"]]))
    with pytest.raises(DiffusaError, match="cannot batch"):
        classifier_free(den, 2.0, Cond(labels=torch.tensor([5, 5]))).output(x, 0.5, cond)


def test_null_labels_and_null_captions_build_null_conds():
    labels = torch.tensor([3, 1, 4])
    null = null_labels(labels, 10)
    assert isinstance(null, Cond) and torch.equal(null.labels, torch.full((3,), 10)) and null.image is None
    image = torch.randn(3, 1, 2, 2)
    nulled = null_labels(Cond(labels=labels, image=image), 10)
    assert torch.equal(nulled.labels, torch.full((3,), 10)) and nulled.image is image
    with pytest.raises(DiffusaError, match="labels"):
        null_labels(Cond(image=image), 10)

    class Tokenizing:
        def __init__(self, as_dict: bool) -> None:
            self.as_dict = as_dict

        def tokenize(self, texts):
            tokens = torch.tensor([[1, len(s) + 2, 0] for s in texts])
            return {"tokens": tokens, "mask": tokens != 0} if self.as_dict else Cond(tokens=tokens,
                                                                                     token_mask=tokens != 0)

    text = {"tokens": torch.tensor([[1, 9, 9], [1, 8, 0]]), "mask": torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()}
    for as_dict in (True, False):
        null = null_captions(Tokenizing(as_dict))(text)
        assert isinstance(null, Cond) and null.tokens.tolist() == [[1, 2, 0], [1, 2, 0]]
        assert null.token_mask.tolist() == [[True, True, False]] * 2
    kept = null_captions(Tokenizing(True))(Cond(tokens=text["tokens"], token_mask=text["mask"], labels=labels[:2]))
    assert torch.equal(kept.labels, labels[:2])
    with pytest.raises(DiffusaError, match="text tokens"):
        null_captions(Tokenizing(True))(labels)


# a two-class mixture of isotropic 2-D Gaussians, for the closed-form guided score
TWO_W = torch.tensor([0.3, 0.7], dtype=F64)
TWO_M = torch.tensor([[-1.5, 0.5], [1.0, -0.5]], dtype=F64)
TWO_S = torch.tensor([0.4, 0.7], dtype=F64)


def two_class_terms(proc, x: torch.Tensor, t: torch.Tensor):
    """(a, sigma, r, g): noise levels (B, 1), responsibilities r_k(x_t) (B, 2) and the class scores
    g_k = grad log N(x_t; a m_k, v_k I) = (a m_k - x_t) / v_k (B, 2, 2), v_k = a^2 s_k^2 + sigma^2."""
    a, s = (v.view(-1, 1) for v in proc.alpha_sigma(t))
    var = a**2 * TWO_S**2 + s**2  # (B, 2)
    d2 = ((x[:, None, :] - a[:, :, None] * TWO_M) ** 2).sum(-1)
    r = torch.softmax(torch.log(TWO_W) - torch.log(var) - d2 / (2 * var), dim=1)  # 2-D: det = var^2
    g = (a[:, :, None] * TWO_M - x[:, None, :]) / var[:, :, None]
    return a, s, r, g


def two_class_denoiser(proc, kind: str) -> Denoiser:
    """The exact unconditional denoiser E[x0 | x_t] = sum_k r_k (m_k + s_k^2 a (x_t - a m_k) / v_k), emitted as
    parameterization `kind`."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s, r, _ = two_class_terms(proc, x, t)
        var = a**2 * TWO_S**2 + s**2
        post = TWO_M + (TWO_S**2 * a / var)[:, :, None] * (x[:, None, :] - a[:, :, None] * TWO_M)
        x0 = (r[:, :, None] * post).sum(1)
        return target_of(kind, x0, (x - a * x0) / s, a, s)

    return Denoiser.from_function(fn, proc, prediction=kind)


def two_class_log_prob(proc):
    """The exact noisy classifier log p(y | x_t, t) = log r_y(x_t)."""

    def log_prob(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, _, r, _ = two_class_terms(proc, x, t)
        return r.log().gather(1, y.view(-1, 1)).squeeze(1)

    return log_prob


@pytest.mark.parametrize("kind", ["x0", "eps", "v"])
@pytest.mark.parametrize("pname", ["ddpm_cosine", "vp", "ve", "flow"])
def test_classifier_guidance_on_two_gaussians_is_the_closed_form_guided_score(pname: str, kind: str):
    """score_guided = grad log p(x_t) + g grad log p(y | x_t) = g g_y + (1 - g) sum_k r_k g_k (Dhariwal & Nichol
    2021, eq. 11 with scale g); x0 = (x_t + sigma^2 score) / alpha (Tweedie), eps = -sigma score."""
    proc = PROCS[pname]
    den, lp = two_class_denoiser(proc, kind), two_class_log_prob(proc)
    gen = torch.Generator().manual_seed(6)
    x = 2 * torch.randn(8, 2, dtype=F64, generator=gen)
    t = torch.linspace(0.2, 0.9, 8, dtype=F64)
    y = torch.tensor([0, 1] * 4)
    a, s, r, g = two_class_terms(proc, x, t)
    g_y = g[torch.arange(8), y]
    for scale in (0.5, 1.0, 4.0):
        pred = ClassifierGuided(den, lp, scale)(x, t, Cond(labels=y))
        score = scale * g_y + (1 - scale) * (r[:, :, None] * g).sum(1)
        assert not torch.allclose(pred.score, den(x, t).score, atol=1e-2)
        assert torch.allclose(pred.score, score, rtol=1e-9, atol=1e-9)
        assert torch.allclose(pred.eps, -s * score, rtol=1e-9, atol=1e-9)
        assert torch.allclose(pred.x0, (x + s**2 * score) / a, rtol=1e-9, atol=1e-9)
        if scale == 1.0:  # the conditional denoiser of class y: m_y + s_y^2 a (x_t - a m_y) / v_y
            v_y = (a**2 * TWO_S**2 + s**2)[torch.arange(8), y].view(-1, 1)
            post = TWO_M[y] + TWO_S[y].view(-1, 1) ** 2 * a * (x - a * TWO_M[y]) / v_y
            assert torch.allclose(pred.x0, post, rtol=1e-9, atol=1e-9)
        # with clipping, the wrapped model's clipped x0 is moved by sigma^2 g grad log p(y | x_t) / alpha and
        # clipped again, eps re-derived from it
        clipped = ClassifierGuided(den.derive(clip_x0=0.5), lp, scale)(x, t, y)
        mean = (r[:, :, None] * g).sum(1)
        want = (((x + s**2 * mean) / a).clamp(-0.5, 0.5) + s**2 * scale * (g_y - mean) / a).clamp(-0.5, 0.5)
        assert torch.allclose(clipped.x0, want, rtol=1e-9, atol=1e-9)
        assert torch.allclose(clipped.eps, (x - a * want) / s, rtol=1e-9, atol=1e-9)
    if pname == "flow" and kind != "eps":  # alpha = 0 at t = 1: x_t holds nothing of x0, the step stays unguided
        t1 = torch.ones(8, dtype=F64)
        guided, plain = ClassifierGuided(den, lp, 3.0)(x, t1, y), den(x, t1)
        assert torch.equal(guided.x0, plain.x0) and torch.equal(guided.eps, plain.eps)


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


def gaussian_kind_denoiser(proc, kind: str, sd: float) -> Denoiser:
    """The exact denoiser of isotropic 2-D data N(TWO_M[0], sd^2 I), emitted as parameterization `kind`."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (v.view(-1, 1) for v in proc.alpha_sigma(t))
        x0 = TWO_M[0] + sd**2 * a * (x - a * TWO_M[0]) / (a**2 * sd**2 + s**2)
        return target_of(kind, x0, (x - a * x0) / s, a, s)

    return Denoiser.from_function(fn, proc, prediction=kind)


@pytest.mark.parametrize("kind", ["x0", "eps", "v"])
@pytest.mark.parametrize("pname", ["ddpm_cosine", "vp", "ve", "flow"])
def test_autoguidance_of_two_gaussians_is_the_score_of_their_geometric_mix(pname: str, kind: str):
    """Karras et al. 2024, eq. 2 in score form: w grad log p_good + (1 - w) grad log p_bad, for Gaussians the score of
    N(a m, v*) with 1 / v* = w / v_good + (1 - w) / v_bad, v = a^2 s^2 + sigma^2 (a narrower Gaussian for w > 1,
    a wider bad model); x0 = (x_t + sigma^2 score) / alpha (Tweedie), in every parameterization."""
    proc = PROCS[pname]
    good, bad = gaussian_kind_denoiser(proc, kind, 0.5), gaussian_kind_denoiser(proc, kind, 0.9)
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(8, 2, dtype=F64, generator=gen)
    t = torch.linspace(0.2, 0.9, 8, dtype=F64)
    a, s = (v.view(-1, 1) for v in proc.alpha_sigma(t))
    v_good, v_bad = a**2 * 0.25 + s**2, a**2 * 0.81 + s**2
    for w in (0.0, 1.0, 2.5):
        pred = AutoGuided(good, bad, w)(x, t)
        v_star = 1 / (w / v_good + (1 - w) / v_bad)
        score = -(x - a * TWO_M[0]) / v_star
        assert torch.allclose(pred.score, score, rtol=1e-9, atol=1e-9)
        assert torch.allclose(pred.x0, (x + s**2 * score) / a, rtol=1e-9, atol=1e-9)
    assert torch.equal(AutoGuided(good, bad, 1.0)(x, t).x0, good(x, t).x0)


def test_autoguidance_asks_the_bad_model_only_when_it_guides_and_passes_the_conditioning():
    seen_good: list = []
    seen_bad: list = []
    good, bad = recording_denoiser(seen_good), recording_denoiser(seen_bad)
    x, t = torch.randn(3, 2), torch.full((3,), 0.5)
    AutoGuided(good, bad, 1.0).raw(x, t, Cond(labels=torch.tensor([0, 1, 2])))
    assert len(seen_good) == 1 and not seen_bad
    AutoGuided(good, bad, 2.0).raw(x, t, Cond(labels=torch.tensor([0, 1, 2])))
    assert len(seen_good) == 2 and len(seen_bad) == 1
    assert torch.equal(as_cond(seen_bad[0]).labels, torch.tensor([0, 1, 2]))
    guided = AutoGuided(good, bad, 2.0).derive(clip_x0=1.0)
    assert isinstance(guided, AutoGuided) and guided.clip_x0 == 1.0 and guided.bad.clip_x0 == 1.0


def test_autoguidance_refuses_models_it_cannot_mix():
    proc = PROCS["vp"]
    good = gaussian_kind_denoiser(proc, "eps", 0.5)
    with pytest.raises(DiffusaError, match="parameterization"):
        AutoGuided(good, gaussian_kind_denoiser(proc, "v", 0.9), 2.0)
    with pytest.raises(DiffusaError, match="process"):
        AutoGuided(good, gaussian_kind_denoiser(PROCS["subvp"], "eps", 0.9), 2.0)
    with pytest.raises(DiffusaError, match="process"):
        AutoGuided(good, gaussian_kind_denoiser(DiscreteDDPM("linear", 1000), "eps", 0.9), 2.0)
    with pytest.raises(DiffusaError, match="sigma_data"):  # EDM's F-prediction reads its output through it
        AutoGuided(good.derive(sigma_data=0.5), good.derive(sigma_data=1.0), 2.0)
    with pytest.raises(DiffusaError, match="guidance scale"):
        AutoGuided(good, good, float("nan"))
    with pytest.raises(DiffusaError, match="Denoiser"):
        AutoGuided(good, "runs/bad", 2.0)
