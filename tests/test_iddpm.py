"""Improved DDPM (Nichol & Dhariwal 2021): the variational bound in bits/dim, learned variance, L_vlb / L_hybrid,
importance-sampled timesteps and respacing — against numerical integration, closed forms from the alphabar
table, diffusers and Monte Carlo."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from scipy import integrate, special, stats

from diffusa import Denoiser, DiffusaError, DiscreteDDPM
from diffusa.checkpoint import load_tensors
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from diffusa.likelihood.bound import bound_term, prior_bpd
from diffusa.losses import OBJECTIVES, TIME_SAMPLERS, HybridLoss, ImportanceTimeSampler, SimpleLoss, VLBLoss
from diffusa.process import VP, expand_as
from diffusa.runs import load_run
from diffusa.samplers import sample_ancestral
from diffusa.schedules import discrete_grid, discrete_indices, make_betas
from diffusa.train import diffusion_engine

LOG2 = math.log(2.0)
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# the two densities, against numerical integration


@pytest.mark.parametrize(("m1", "lv1", "m2", "lv2"), [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.2, 0.5),
                                                      (1.5, 0.7, 0.1, -2.0), (-0.4, -6.0, -0.39, -5.5)])
def test_normal_kl_matches_integration(m1, lv1, m2, lv2):
    p, q = stats.norm(m1, math.exp(lv1 / 2)), stats.norm(m2, math.exp(lv2 / 2))
    sd = math.exp(lv1 / 2)
    ref, err = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), m1 - 40 * sd, m1 + 40 * sd,
                              points=[m1], limit=200, epsabs=1e-13, epsrel=1e-11)
    got = normal_kl(torch.tensor(m1, dtype=F64), lv1, m2, lv2).item()
    assert got == pytest.approx(ref, rel=1e-8, abs=1e-11), (got, ref, err)


@pytest.mark.parametrize(("mean", "log_scale"), [(0.0, -2.0), (0.37, -4.5), (-0.9, -1.0), (0.95, 0.3)])
def test_discretized_gaussian_matches_integration(mean, log_scale):
    """Each bin's probability is the Gaussian mass over x +- 1/255 (edge bins open), and they sum to 1."""
    x = torch.linspace(-1, 1, 256, dtype=F64)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    g = stats.norm(mean, math.exp(log_scale))
    for k in (0, 1, 40, 127, 128, 200, 254, 255):
        lo, hi = (-np.inf if k == 0 else x[k].item() - 1 / 255), (np.inf if k == 255 else x[k].item() + 1 / 255)
        ref, _ = integrate.quad(g.pdf, lo, hi, epsabs=1e-300, epsrel=1e-12)
        assert logp[k].exp().item() == pytest.approx(ref, rel=1e-9, abs=1e-300), k


def test_discretized_gaussian_far_tails_are_exact():
    """A narrow decoder far from the pixel: log P from mpmath at 50 digits (no 1e-12 floor as in IDDPM's code)."""
    mpmath.mp.dps = 50
    cases = [(0.0, 0.9, -6.0), (-1.0, 0.5, -4.0), (1.0, -0.2, -5.0), (0.2, 0.2, -12.0)]
    for x, m, ls in cases:
        got = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=F64), torch.tensor([m], dtype=F64),
                                                  torch.tensor([ls], dtype=F64)).item()
        s = mpmath.e ** mpmath.mpf(ls)
        hi, lo = (mpmath.mpf(x) + mpmath.mpf(1) / 255 - m) / s, (mpmath.mpf(x) - mpmath.mpf(1) / 255 - m) / s
        if x == -1:
            p = mpmath.ncdf(hi)
        elif x == 1:
            p = mpmath.ncdf(-lo)  # 1 - cdf, without cancellation
        else:
            p = mpmath.ncdf(hi) - mpmath.ncdf(lo)
        assert got == pytest.approx(float(mpmath.log(p)), rel=1e-9), (x, m, ls)


# ---------------------------------------------------------------------------------------------
# the bound on Gaussian data with the exact denoiser: closed forms from the alphabar table


MU, SD = 0.1, 0.3


class Chain:
    """Per-step quantities of a DDPM chain from its alphabar table alone (Ho et al. 2020, eqs. 4, 6, 7)."""

    def __init__(self, schedule: str, T: int, grid: torch.Tensor) -> None:
        self.T = T
        self.ab = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - make_betas(schedule, T), 0)])
        self.idx = [round(float(t) * T) for t in grid]

    def step(self, i: int, j: int) -> dict[str, float]:
        ab_t, ab_s = float(self.ab[i]), float(self.ab[j])
        beta = 1 - ab_t / ab_s
        a_t, v_t = math.sqrt(ab_t), 1 - ab_t
        k = SD**2 * a_t / (a_t**2 * SD**2 + v_t)  # x0_hat = MU + k (x_t - a_t MU)
        c2 = math.sqrt(ab_s) * beta / v_t  # the posterior mean's coefficient on x0
        return {"beta": beta, "bt": beta * (1 - ab_s) / v_t, "a_t": a_t, "v_t": v_t, "k": k, "c2": c2,
                "post": SD**2 * v_t / (a_t**2 * SD**2 + v_t)}  # Var[x0 | x_t]

    def steps(self) -> list[tuple[int, int, int | None]]:
        """(i, j, i_above) for each step of the grid."""
        out = []
        for n, (i, j) in enumerate(zip(self.idx[:-1], self.idx[1:], strict=True)):
            out.append((i, j, self.idx[n - 1] if n > 0 else None))
        return out

    def log_vars(self, i: int, j: int, above: int | None) -> tuple[float, float, float]:
        """(log beta_tilde (clipped at the last step), log beta, log Sigma*): Sigma* = Var[x_s | x_t], the exact
        reverse variance for Gaussian data = beta_tilde + c2^2 Var[x0 | x_t]."""
        q = self.step(i, j)
        bt = q["bt"] if j > 0 else self.step(above, i)["bt"]
        star = (q["bt"] if j > 0 else 0.0) + q["c2"] ** 2 * q["post"]
        return math.log(bt), math.log(q["beta"]), math.log(star)

    def v_table(self) -> torch.Tensor:
        """IDDPM's v per 1-based step index so that Sigma = Sigma* (eq. 15 solved for v)."""
        v = torch.zeros(self.T + 1, dtype=F64)
        for i, j, above in self.steps():
            lbt, lb, lstar = self.log_vars(i, j, above)
            v[i] = (lstar - lbt) / (lb - lbt)
        return v


def oracle(proc: DiscreteDDPM, v_table: torch.Tensor | None = None, v_const: float | None = None) -> Denoiser:
    """E[x0 | x_t] for data N(MU, SD^2) (DESIGN.md), with a learned-variance channel when asked."""

    def x0_hat(x, t):
        a, s = proc.alpha_sigma(t)
        a, s = expand_as(a, x), expand_as(s, x)
        return MU + SD**2 * a * (x - a * MU) / (a**2 * SD**2 + s**2)

    if v_table is None and v_const is None:
        return Denoiser.from_function(x0_hat, proc, prediction="x0")

    def raw(x, t, cond):
        if v_const is not None:
            v = torch.full_like(x, v_const)
        else:
            v = expand_as(v_table[torch.round(t * proc.num_steps).long()], x).expand_as(x)
        return torch.cat([x0_hat(x, t), 2 * v - 1], dim=1)

    return Denoiser(raw, proc, prediction="x0", learned_variance=True)


def expected_kl_bits(q: dict[str, float], x0: torch.Tensor, log_var: float) -> torch.Tensor:
    """E_eps KL(q(x_s | x_t, x0) || N(mu(x_t, x0_hat), e^log_var)) per example, bits/dim, for fixed x0:
    the means differ by c2 (x0 - x0_hat) = c2 ((1 - k a_t)(x0 - MU) - k sigma_t eps)."""
    d2 = q["c2"] ** 2 * ((1 - q["k"] * q["a_t"]) ** 2 * (x0 - MU) ** 2 + q["k"] ** 2 * q["v_t"])
    var = math.exp(log_var)
    kl = 0.5 * (-1 + log_var - math.log(q["bt"]) + q["bt"] / var + d2 / var)
    return kl.flatten(1).mean(1) / LOG2


def expected_decoder_bits(q: dict[str, float], x0: torch.Tensor, log_var: float) -> torch.Tensor:
    """E_eps[-log P(x0 | x_1)] per example (bits/dim): Gauss-Hermite over eps, bin masses from scipy's normal."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    x = x0.numpy()[..., None]
    mean = MU + q["k"] * (q["a_t"] * x + math.sqrt(q["v_t"]) * nodes - q["a_t"] * MU)
    sd = math.exp(log_var / 2)
    upper = np.where(x > 1 - 1 / 255, np.inf, (x + 1 / 255 - mean) / sd)
    lower = np.where(x < -1 + 1 / 255, -np.inf, (x - 1 / 255 - mean) / sd)
    # log(Phi(u) - Phi(l)) in the tail nearer the mode (Gauss-Hermite's outer nodes put the mean 13 sd away)
    flip = upper + lower > 0
    hi, lo = np.where(flip, -lower, upper), np.where(flip, -upper, lower)
    log_hi = special.log_ndtr(hi)
    nll = -(log_hi + np.log1p(-np.exp(special.log_ndtr(lo) - log_hi))) @ weights
    return torch.from_numpy(nll).flatten(1).mean(1) / LOG2


def closed_form_terms(chain: Chain, x0: torch.Tensor, mode: str) -> dict[int, torch.Tensor]:
    """Each step's expected term per example (keyed by the step's 1-based start index), and the prior at 0."""
    out = {}
    for i, j, above in chain.steps():
        lbt, lb, lstar = chain.log_vars(i, j, above)
        log_var = {"learned": lstar, "beta_tilde": lbt, "beta": lb}[mode]
        q = chain.step(i, j)
        out[i] = expected_kl_bits(q, x0, log_var) if j > 0 else expected_decoder_bits(q, x0, log_var)
    ab_top, ab_T = float(chain.ab[chain.idx[0]]), float(chain.ab[-1])
    p = 1 - ab_T  # the prior N(0, sigma(1)^2)
    v = 1 - ab_top
    out[0] = (0.5 * (-1 + math.log(p) - math.log(v) + v / p + ab_top * x0**2 / p)).flatten(1).mean(1) / LOG2
    return out


def gaussian_x0(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (MU + SD * torch.randn(n, d, generator=g, dtype=F64)).clamp(-1, 1)


GRIDS = {"full_linear_40": ("linear", 40, None), "even8_cosine_200": ("cosine", 200, ("even", 8)),
         "ddim7_linear_50": ("linear", 50, ("ddim", 7))}


def _setup(name: str) -> tuple[DiscreteDDPM, torch.Tensor, Chain]:
    schedule, T, spacing = GRIDS[name]
    proc = DiscreteDDPM(schedule, T)
    grid = torch.arange(T, -1, -1, dtype=F64) / T if spacing is None else discrete_grid(T, spacing[1], spacing[0])
    return proc, grid, Chain(schedule, T, grid)


@pytest.mark.parametrize("mode", ["learned", "beta_tilde", "beta"])
@pytest.mark.parametrize("name", list(GRIDS))
def test_each_term_matches_its_closed_form(name, mode):
    """Monte Carlo over the noise of each step's term vs E_eps of the closed form, for fixed x0, with the exact
    denoiser and the exact reverse variance Sigma* (learned v), or a fixed beta-tilde / beta."""
    proc, grid, chain = _setup(name)
    den = oracle(proc, chain.v_table()) if mode == "learned" else oracle(proc)
    variance = "beta_tilde" if mode == "learned" else mode
    x0 = gaussian_x0(400, 16, seed=1)
    ref = closed_form_terms(chain, x0, mode)
    g = torch.Generator().manual_seed(2)
    steps = chain.steps()
    for n in sorted({0, 1, len(steps) // 2, len(steps) - 2, len(steps) - 1}):
        i, j, above = steps[n]
        t, s = torch.full((400,), i / chain.T, dtype=F64), torch.full((400,), j / chain.T, dtype=F64)
        t_above = torch.full((400,), above / chain.T, dtype=F64) if above is not None else None
        got = bound_term(den, x0, t, s, torch.randn(x0.shape, generator=g, dtype=F64), variance=variance,
                         t_above=t_above)
        diff = got - ref[i]
        se = float(diff.std() / math.sqrt(len(diff)))
        # 4 SE: a false alarm has probability 6e-5 per check; the SE is itself < 2% of the term
        assert abs(float(diff.mean())) < 4 * se + 1e-12, (name, mode, i, j, float(got.mean()), float(ref[i].mean()), se)
        assert se < 0.02 * float(ref[i].mean()) + 1e-9
    assert torch.allclose(prior_bpd(proc, x0, grid[0]), ref[0], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", list(GRIDS))
def test_bits_per_dim_equals_the_sum_of_closed_forms(name):
    """The whole bound (every term, learned Sigma*) vs the sum of the closed forms, paired per example."""
    proc, grid, chain = _setup(name)
    x0 = gaussian_x0(300, 16, seed=3)
    res = bits_per_dim(oracle(proc, chain.v_table()), x0, grid=grid, generator=torch.Generator().manual_seed(4),
                       batch_size=128)
    ref = closed_form_terms(chain, x0, "learned")
    total = sum(ref.values())
    diff = res.per_example - total
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean())) < 4 * se, (res.total, float(total.mean()), se)
    assert res.prior == pytest.approx(float(ref[0].mean()), rel=1e-9)
    assert len(res.terms) == len(grid) - 1 and torch.equal(res.times, grid[:-1])
    assert res.terms.sum() + res.prior == pytest.approx(res.total, rel=1e-12)
    # with the exact reverse variance a KL term is 0.5 log(Sigma* / beta-tilde) bits over the data (the mutual
    # information of the step); its sample mean over 300 x 16 draws is within a few per cent of that
    i, j, above = chain.steps()[len(grid) // 2]
    lbt, _, lstar = chain.log_vars(i, j, above)
    n = chain.idx.index(i)
    assert float(res.terms[n]) == pytest.approx(0.5 * (lstar - lbt) / LOG2, rel=0.05)


def test_learned_bound_on_gaussians_is_the_data_negative_log_density():
    """Exact means and variances make every reverse step exact, so for each x0 the bound's expectation over the
    noise is -log2(q(x0) * 2/255), q = N(MU, SD^2), up to the prior mismatch (3e-7 bits) and the decoder's
    discretization gap (~1e-3 bits here); paired per example, over 20k x0."""
    proc, grid, chain = _setup("full_linear_40")
    x0 = MU + SD * torch.randn(20000, 1, generator=torch.Generator().manual_seed(5), dtype=F64)
    x0 = x0[x0[:, 0].abs() < 1 - 1 / 255]  # interior pixels: the density, not an open edge bin
    res = bits_per_dim(oracle(proc, chain.v_table()), x0, grid=grid, generator=torch.Generator().manual_seed(6),
                       batch_size=20000)
    nll = (-stats.norm(MU, SD).logpdf(x0[:, 0].numpy()) - math.log(2 / 255)) / LOG2
    diff = res.per_example - torch.from_numpy(nll)
    se = float(diff.std() / math.sqrt(len(diff)))  # observed ~0.01 bits
    assert abs(float(diff.mean())) < 4 * se and se < 0.015, (float(diff.mean()), se)
    assert res.total == pytest.approx(7.30, abs=0.06)  # the entropy of N(0.1, 0.3^2) in 8-bit bins: 7.302 bits


# ---------------------------------------------------------------------------------------------
# learned variance: v = 0 / 1 is beta-tilde / beta, on full and respaced grids


@pytest.mark.parametrize("name", list(GRIDS))
def test_learned_v0_v1_equal_fixed_beta_tilde_and_beta_in_the_bound(name):
    proc, grid, _ = _setup(name)
    x0 = gaussian_x0(64, 8, seed=7)
    for v, variance in ((0.0, "beta_tilde"), (1.0, "beta")):
        a = bits_per_dim(oracle(proc, v_const=v), x0, grid=grid, generator=torch.Generator().manual_seed(8))
        b = bits_per_dim(oracle(proc), x0, grid=grid, variance=variance, generator=torch.Generator().manual_seed(8))
        assert torch.allclose(a.per_example, b.per_example, rtol=1e-12, atol=0), (v, variance)
        assert torch.allclose(a.terms, b.terms, rtol=1e-12, atol=0)


@pytest.mark.parametrize("spacing", ["even", "ddim"])
def test_learned_v0_v1_equal_fixed_samplers_on_respaced_grids(spacing):
    proc = DiscreteDDPM("cosine", 1000)
    grid = discrete_grid(1000, 25, spacing)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for v, variance in ((0.0, "beta_tilde"), (1.0, "beta")):
        a = sample_ancestral(oracle(proc, v_const=v), x_T, grid, generator=torch.Generator().manual_seed(1))
        b = sample_ancestral(oracle(proc), x_T, grid, generator=torch.Generator().manual_seed(1), variance=variance)
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (spacing, variance)


def test_ancestral_learned_range_matches_diffusers():
    """Step by step against diffusers' DDPMScheduler(variance_type="learned_range"), respaced to 50 of 1000
    steps: each step's beta is recomputed, Sigma = exp(frac log beta + (1 - frac) log beta_tilde)."""
    T, steps = 1000, 50
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                          clip_sample=False, prediction_type="epsilon")
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)  # float64 tables on both sides
    sched.one = torch.tensor(1.0, dtype=F64)
    sched.set_timesteps(steps)
    proc = DiscreteDDPM("cosine", T)
    ab = sched.alphas_cumprod

    def net(x, c):  # an eps model and a varying v channel, read at the 0-based timestep c
        a = ab[c.round().long()].float().reshape(-1, 1, 1, 1)
        return torch.cat([x * (1 - a).sqrt() + 0.1 * torch.sin(3 * x), torch.tanh(x)], dim=1)

    den = Denoiser(lambda x, t, cond: net(x, proc.c_noise(t)), proc, prediction="eps", learned_variance=True)
    grid = discrete_grid(T, steps, "leading")
    assert torch.equal((grid[:-1] * T).round().long() - 1, sched.timesteps)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    states, xs = [g.get_state()], [x_T]

    def callback(info):
        xs.append(info["x"].clone())
        states.append(g.get_state())

    sample_ancestral(den, x_T, grid, generator=g, callback=callback)
    for i, ts in enumerate(sched.timesteps):
        c = torch.full((2,), float(ts))
        ref = sched.step(net(xs[i], c), ts, xs[i], generator=torch.Generator().set_state(states[i]))
        # float32 states, float64 coefficients: 1e-5 as in test_samplers
        assert torch.allclose(xs[i + 1], ref.prev_sample, rtol=0, atol=1e-5), i


# ---------------------------------------------------------------------------------------------
# respacing: IDDPM's "even" and "ddimK" steps


def _iddpm_steps(T: int, spec: str) -> list[int]:
    """IDDPM's space_timesteps for one section (restated), 1-based and decreasing."""
    if spec.startswith("ddim"):
        k = int(spec[4:])
        stride = next(i for i in range(1, T) if len(range(0, T, i)) == k)
        return sorted((i + 1 for i in range(0, T, stride)), reverse=True)
    k = int(spec)
    frac, cur, out = (T - 1) / (k - 1), 0.0, []
    for _ in range(k):
        out.append(round(cur) + 1)
        cur += frac
    return sorted(out, reverse=True)


@pytest.mark.parametrize("T", [1000, 4000, 100])
def test_respacing_is_iddpms(T):
    for k in (2, 3, 7, 10, 25, 30, 50, 99, 100):
        assert discrete_indices(T, k, "even") == _iddpm_steps(T, str(k)), k
    for k in (10, 25, 30, 45, 50, 100):
        try:
            ref = _iddpm_steps(T, f"ddim{k}")
        except StopIteration:  # IDDPM raises too: no integer stride gives exactly k steps
            with pytest.raises(DiffusaError, match="nearest possible"):
                discrete_indices(T, k, "ddim")
            continue
        assert discrete_indices(T, k, "ddim") == ref, k
    if T == 1000:
        assert discrete_indices(T, 50, "ddim") == discrete_indices(T, 50, "leading")  # 50 divides 1000
        assert discrete_indices(T, 30, "ddim") != discrete_indices(T, 30, "leading")  # stride 34, not 33
    with pytest.raises(DiffusaError, match="nearest possible"):
        discrete_indices(1000, 45, "ddim")


# ---------------------------------------------------------------------------------------------
# L_vlb and L_hybrid


class Tiny(torch.nn.Module):
    """A per-pixel affine net with separate mean and variance parameters (2 channels: mean, v)."""

    def __init__(self) -> None:
        super().__init__()
        self.wm = torch.nn.Parameter(torch.tensor([0.7, 0.2, -0.1]))
        self.wv = torch.nn.Parameter(torch.tensor([0.3, -0.4, 0.05]))

    def forward(self, x, c, cond=None):
        c = c.float().reshape(-1, 1) / 20
        feats = [x, torch.ones_like(x), c.expand_as(x)]
        mean = sum(w * f for w, f in zip(self.wm, feats, strict=True))
        v = torch.tanh(sum(w * f for w, f in zip(self.wv, feats, strict=True)))
        return torch.cat([mean, v], dim=1)


def _batch(T: int, n: int = 64):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 1, generator=g) * 2 - 1
    t = torch.randint(1, T + 1, (n,), generator=g).double() / T
    t[:4] = 1 / T  # the decoder term too
    return x0, t, torch.randn(n, 1, generator=g)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_hybrid_stop_gradient_trains_only_the_variance(prediction):
    T = 20
    proc = DiscreteDDPM("cosine", T)
    net = Tiny()
    den = Denoiser.from_network(net, proc, prediction, learned_variance=True, clip_x0=1.0)
    x0, t, noise = _batch(T)
    simple = SimpleLoss(weighting="none")
    hybrid = HybridLoss(proc, simple, vlb_weight=1.0)
    vlb = VLBLoss(proc)
    grads = {}
    for name, loss in (("hybrid", hybrid), ("simple", simple), ("vlb", vlb)):
        net.zero_grad()
        loss(den, x0, t, noise).mean().backward()
        grads[name] = (net.wm.grad.clone(), net.wv.grad.clone())
    # the vlb part of the hybrid gives the mean parameters exactly nothing, and the variance parameters something
    assert torch.allclose(grads["hybrid"][0], grads["simple"][0], rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(grads["simple"][1]) == 0
    assert grads["hybrid"][1].abs().min() > 1e-4
    # pure L_vlb trains the mean as well (and the variance the same way as the hybrid's vlb part)
    assert grads["vlb"][0].abs().min() > 1e-4
    assert torch.allclose(grads["vlb"][1], grads["hybrid"][1], rtol=1e-5, atol=1e-8)


def test_vlb_and_hybrid_values():
    """L_vlb = T x the bound's term (IDDPM's scale; L_0 at t = 1/T); L_hybrid = L_simple + lambda L_vlb."""
    T = 20
    proc = DiscreteDDPM("linear", T)
    den = Denoiser.from_network(Tiny(), proc, "v", learned_variance=True)
    x0, t, noise = _batch(T)
    s = t - 1 / T
    term = bound_term(den, x0, t, s, noise, t_above=t + 1 / T)
    vlb = VLBLoss(proc)(den, x0, t, noise)
    assert torch.allclose(vlb, T * term, rtol=1e-6)
    # t = 1/T is the discretized decoder: -log P(x0 | x_1), mean x0_hat
    pred = den(proc.q_sample(x0[:4], t[:4], noise[:4]), t[:4])
    log_var = pred.v_var * math.log(float(proc.betas[0])) + (1 - pred.v_var) * math.log(
        float(proc.betas[1] * (1 - proc.alphas_cumprod[0]) / (1 - proc.alphas_cumprod[1])))
    nll = -discretized_gaussian_log_likelihood(x0[:4], pred.x0, 0.5 * log_var).flatten(1).mean(1) / LOG2
    assert torch.allclose(vlb[:4], T * nll, rtol=1e-5)
    simple = SimpleLoss(weighting="none")
    hybrid = HybridLoss(proc, simple)(den, x0, t, noise)
    assert torch.allclose(hybrid, simple(den, x0, t, noise) + 0.001 * vlb, rtol=1e-6)
    # a fixed-variance model: L_vlb (beta-tilde, or beta) still trains the mean
    w = torch.nn.Parameter(torch.tensor(0.5))
    fixed = Denoiser(lambda x, tt, c: w * x, proc, prediction="eps")
    for variance in ("beta_tilde", "beta"):
        loss = VLBLoss(proc, variance)(fixed, x0, t, noise)
        ref = T * bound_term(fixed, x0, t, s, noise, variance=variance, t_above=t + 1 / T)
        assert torch.allclose(loss, ref, rtol=1e-6)
        (grad,) = torch.autograd.grad(loss.mean(), w)
        assert grad.abs() > 1e-3


def test_objective_and_sampler_registry_and_errors():
    cfg = load_config(overrides=['loss.kind="hybrid"', "loss.vlb_weight=0.01", 'loss.weighting="none"'])
    assert cfg.loss.vlb_weight == 0.01
    ddpm = DiscreteDDPM("cosine", 10)
    hybrid = OBJECTIVES["hybrid"](cfg.loss, ddpm)
    assert isinstance(hybrid, HybridLoss) and hybrid.vlb_weight == 0.01
    assert isinstance(OBJECTIVES["vlb"](cfg.loss, ddpm), VLBLoss)
    assert isinstance(TIME_SAMPLERS["importance"](cfg.loss, ddpm), ImportanceTimeSampler)
    for build in (lambda: VLBLoss(VP()), lambda: HybridLoss(VP()), lambda: ImportanceTimeSampler(VP())):
        with pytest.raises(DiffusaError, match="discrete DDPM"):
            build()
    x0, t, noise = _batch(10)
    with pytest.raises(DiffusaError, match="learned_variance"):
        hybrid(oracle(ddpm), x0, t, noise)
    with pytest.raises(DiffusaError, match="i/T"):
        VLBLoss(ddpm)(oracle(ddpm), x0, t + 0.03, noise)


# ---------------------------------------------------------------------------------------------
# importance sampling of t


def _feed(sampler: ImportanceTimeSampler, per_step: int, loss_of_step, seed: int = 0) -> None:
    T = sampler.num_steps
    g = torch.Generator().manual_seed(seed)
    for _ in range(per_step):
        i = torch.randperm(T, generator=g) + 1
        sampler.update(i.double() / T, loss_of_step(i, g))


def test_importance_is_uniform_until_every_step_has_10_losses():
    T = 12
    sampler = ImportanceTimeSampler(DiscreteDDPM("linear", T))
    _feed(sampler, 9, lambda i, g: i.double() ** 2)
    sampler.update(torch.arange(2, T + 1).double() / T, torch.ones(T - 1))  # step 1 still has 9
    assert not sampler.warmed_up()
    t, w = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(4000))
    counts = torch.bincount(torch.round(t * T).long(), minlength=T + 1)[1:]
    assert counts.min() > 4000 / T * 0.7 and counts.max() < 4000 / T * 1.3  # 333 each, sd 17
    sampler.update(torch.tensor([1 / T]), torch.ones(1))
    assert sampler.warmed_up()


def test_importance_probabilities_are_sqrt_second_moments_of_the_last_10():
    T = 8
    sampler = ImportanceTimeSampler(DiscreteDDPM("cosine", T))
    hist = torch.rand(15, T, generator=torch.Generator().manual_seed(3), dtype=F64) * torch.arange(1, T + 1)
    for r in range(15):  # 15 rounds: only the last 10 count
        sampler.update(torch.arange(1, T + 1).double() / T, hist[r])
    rms = hist[5:].square().mean(0).sqrt()
    expect = 0.999 * rms / rms.sum() + 0.001 / T
    assert torch.allclose(sampler.probabilities(), expect, rtol=1e-12, atol=0)
    t, w = sampler.sample(20000, torch.Generator().manual_seed(1))
    i = torch.round(t * T).long() - 1
    assert torch.allclose(w.double(), 1 / (T * expect[i]), rtol=1e-6)
    freq = torch.bincount(i, minlength=T).double() / 20000
    assert torch.allclose(freq, expect, atol=4 * (0.25 / 20000) ** 0.5)  # 4 binomial sd at most


def test_importance_weights_keep_the_loss_unbiased():
    """E[w L] under p equals the uniform-t mean of L: exactly in expectation, and by Monte Carlo."""
    T = 50
    sampler = ImportanceTimeSampler(DiscreteDDPM("cosine", T))
    m = torch.exp(-torch.linspace(0, 6, T, dtype=F64)) * 10 + 0.05  # a steep per-step mean, like L_vlb's

    def losses(i, g):  # noisy losses with mean m_t
        return m[i - 1] * (1 + 0.3 * torch.randn(len(i), generator=g, dtype=F64))

    _feed(sampler, 10, losses)
    p = sampler.probabilities()
    assert sampler.warmed_up() and p.max() / p.min() > 20
    target = float(m.mean())
    assert float((p * m / (T * p)).sum()) == pytest.approx(target, rel=1e-12)
    g = torch.Generator().manual_seed(11)
    t, w = sampler.sample(200_000, g)
    i = torch.round(t * T).long()
    est = w.double() * losses(i, g)
    se = float(est.std() / math.sqrt(len(est)))
    assert abs(float(est.mean()) - target) < 4 * se, (float(est.mean()), target, se)
    assert se < 0.005 * target
    # and it is the point of it: lower variance than uniform sampling
    u = losses(torch.randint(1, T + 1, (200_000,), generator=g), g)
    assert est.std() < 0.7 * u.std()


def test_importance_state_round_trip():
    proc = DiscreteDDPM("linear", 6)
    a = ImportanceTimeSampler(proc)
    _feed(a, 12, lambda i, g: torch.rand(len(i), generator=g, dtype=F64))
    b = ImportanceTimeSampler(proc)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.probabilities(), b.probabilities())
    ta, wa = a.sample(100, torch.Generator().manual_seed(0))
    tb, wb = b.sample(100, torch.Generator().manual_seed(0))
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    with pytest.raises(DiffusaError, match="num_steps"):
        ImportanceTimeSampler(DiscreteDDPM("linear", 7)).load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------------------------
# training with hybrid + learned variance + importance sampling: runs and resumes exactly; bits/dim


N = 8
HYBRID = ['data.name="digits"', 'loss.kind="hybrid"', "model.learned_variance=true",
          'loss.time_sampler="importance"', 'loss.weighting="none"', 'model.prediction="eps"', "process.num_steps=10",
          "model.net.channels=8", "train.batch_size=32", "train.warmup=3", "train.log_every=4",
          "train.checkpoint_every=0", "train.sample_every=0", "train.sample_n=4", "train.sample_steps=2",
          'train.lr_decay="constant"']


def _train(out: Path, overrides: list[str], resume: bool = False) -> Path:
    return diffusion_engine(load_config(overrides=overrides), out, progress=False, resume=resume).fit()


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("hybrid") / "run", [*HYBRID, f"train.steps={2 * N}"])


def test_hybrid_importance_training_resumes_exactly(hybrid_run: Path, tmp_path: Path) -> None:
    out = _train(tmp_path / "run", [*HYBRID, f"train.steps={N}"])
    half = load_tensors(out / "train_state.safetensors")
    # 8 steps x 32 examples over 10 steps: the sampler has warmed up, so the second half samples by importance
    assert torch.equal(half["time_sampler.counts"], torch.full((10,), 10))
    _train(out, [*HYBRID, f"train.steps={2 * N}"], resume=True)
    from resume_check import same_checkpoint

    same_checkpoint(out, hybrid_run)
    hist = load_tensors(hybrid_run / "train_state.safetensors")["time_sampler.history"]
    assert hist.shape == (10, 10) and bool(torch.isfinite(hist).all()) and float(hist.min()) > 0


def test_bits_per_dim_full_and_estimate_agree_on_a_tiny_model(hybrid_run: Path) -> None:
    run = load_run(hybrid_run)
    assert run.denoiser.learned_variance
    x = load_dataset("digits", "test").x[:200]
    full = bits_per_dim(run.denoiser, x, generator=torch.Generator().manual_seed(0), batch_size=200)
    est = bits_per_dim(run.denoiser, x, terms=3, generator=torch.Generator().manual_seed(1), batch_size=200)
    assert math.isfinite(full.total) and full.total > 0 and full.se > 0
    assert len(full.terms) == 10 and bool(torch.isfinite(full.terms).all()) and full.num_terms is None
    assert abs(est.total - full.total) < 3 * est.se, (full.total, est.total, est.se)
    assert est.se > full.se  # 3 random terms of 10 add their own spread
    assert full.terms.sum() + full.prior == pytest.approx(full.total, rel=1e-9)
    # uint8 pixels give the same numbers as the same data in [-1, 1]
    pix = torch.round((x[:20] + 1) * 127.5).to(torch.uint8)
    a = bits_per_dim(run.denoiser, pix, generator=torch.Generator().manual_seed(2))
    b = bits_per_dim(run.denoiser, pix.float() / 127.5 - 1, generator=torch.Generator().manual_seed(2))
    assert a.total == pytest.approx(b.total, rel=1e-12)


def test_bits_per_dim_rejects_bad_input() -> None:
    proc = DiscreteDDPM("linear", 10)
    den = oracle(proc)
    with pytest.raises(DiffusaError, match=r"\[-1, 1\]"):
        bits_per_dim(den, torch.full((2, 3), 2.0))
    with pytest.raises(DiffusaError, match="grid"):
        bits_per_dim(den, torch.zeros(2, 3), grid=torch.tensor([0.5, 0.7, 0.0]))
    with pytest.raises(DiffusaError, match="explicit grid"):
        bits_per_dim(Denoiser.from_function(lambda x, t: x, VP()), torch.zeros(2, 3))
    with pytest.raises(DiffusaError, match="positive integer"):
        bits_per_dim(den, torch.zeros(2, 3), terms=0)


@pytest.mark.parametrize("n,k", [(10, 3), (1000, 100), (7, 7), (5, 9)])
def test_stratified_term_draws_weight_every_step_once_on_average(n: int, k: int) -> None:
    """E[sum_k w_k 1{step_k = j}] = 1 for every step j: the K-term estimate is unbiased for the sum of n terms."""
    from diffusa.likelihood.bound import term_draws

    steps, w = term_draws(n, k, 20000, torch.Generator().manual_seed(0))
    assert steps.shape == (20000, min(n, k)) and float(w.sum()) == n
    hits = torch.zeros(n, dtype=torch.float64).index_add_(0, steps.flatten(), w.repeat(20000)) / 20000
    assert torch.allclose(hits, torch.ones(n, dtype=torch.float64), atol=0.05 if n < 100 else 0.25)
    # one draw per stratum: every example sees each range of t (the terms differ by orders of magnitude)
    if k < n:
        edges = torch.linspace(0, n, k + 1).round().long()
        assert bool(((steps >= edges[:-1]) & (steps < edges[1:])).all())
