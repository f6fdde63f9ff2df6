"""DiscreteDDPM in noise levels: knots, interpolation, q(x_t | x0) and the posterior q(x_s | x_t, x0)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffusa.errors import DiffusaError
from diffusa.process import PROCESSES, DiscreteDDPM, process_from_dict
from diffusa.schedules import make_betas

T = 1000
SCHEDULES = ["linear", "cosine"]
DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@pytest.fixture(scope="module", params=SCHEDULES)
def proc(request) -> DiscreteDDPM:
    return DiscreteDDPM(request.param, T)


def knots(n: int = T) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=torch.float64) / n


def test_variance_preserving_everywhere(proc):
    t = torch.cat([knots(), torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    a, s = proc.alpha_sigma(t)
    # float64 sigmoid: 1e-12 is ~1e4 ulps of slack
    assert torch.allclose(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)


def test_knots_are_the_chain(proc):
    a, s = proc.alpha_sigma(knots())
    ab = torch.cumprod(1 - make_betas(proc.schedule, T), 0)
    # log/sigmoid round trip in float64; alphabar goes down to ~1e-9 (cosine), so relative
    assert torch.allclose(a**2, ab, rtol=1e-9, atol=0)
    assert torch.allclose(s**2, 1 - ab, rtol=1e-9, atol=0)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[proc.schedule]).alphas_cumprod
    # diffusers computes alphas_cumprod in float32: 1e-6 absolute covers its rounding
    assert torch.allclose(a**2, ref.double(), rtol=0, atol=1e-6)


def test_clean_data_at_zero(proc):
    a, s = proc.alpha_sigma(torch.zeros(3, dtype=torch.float64))
    assert torch.equal(a, torch.ones(3, dtype=torch.float64))
    assert torch.equal(s, torch.zeros(3, dtype=torch.float64))
    assert torch.isinf(proc.log_snr(torch.zeros(1, dtype=torch.float64))).all()


def test_c_noise_is_diffusers_timestep(proc):
    assert torch.allclose(proc.c_noise(knots()), torch.arange(T, dtype=torch.float64), rtol=0, atol=1e-9)
    assert torch.equal(proc.step_index(knots()), torch.arange(1, T + 1))


def test_log_snr_continuous_and_decreasing(proc):
    t = torch.linspace(1e-6, 1, 200_001, dtype=torch.float64)
    lam = proc.log_snr(t)
    assert torch.isfinite(lam).all()
    assert (lam.diff() < 0).all()
    # continuity at the knots (incl. the extrapolated piece below the first): left/right limits agree
    k = knots()
    h = 1e-10
    left, right = proc.log_snr(k - h), proc.log_snr((k + h).clamp(max=1))
    # slope |dlambda/dt| < 1e4 here, so a 2e-10 step moves lambda by < 2e-6
    assert torch.allclose(left, right, rtol=0, atol=2e-6)


def test_log_snr_linear_between_knots(proc):
    lam = proc.lambdas
    i = torch.arange(1, T, dtype=torch.float64)  # 1-based steps 1..T-1
    for w in (0.25, 0.5, 0.9):
        got = proc.log_snr((i + w) / T)
        want = (1 - w) * lam[:-1] + w * lam[1:]
        assert torch.allclose(got, want, rtol=0, atol=1e-9)


def test_t_of_log_snr_inverts(proc):
    t = torch.cat([knots(), torch.linspace(0.5 / T, 1, 5001, dtype=torch.float64)])
    back = proc.t_of_log_snr(proc.log_snr(t))
    # linear pieces inverted exactly up to float64 rounding of the fractional position
    assert torch.allclose(back, t, rtol=0, atol=1e-9)
    assert proc.t_of_log_snr(torch.tensor([float("inf")], dtype=torch.float64)).item() == 0.0


def test_transition_adjacent_is_beta(proc):
    k = knots()
    alpha_ts, sigma2_ts = proc.transition(k[1:], k[:-1])
    betas = make_betas(proc.schedule, T)
    assert torch.allclose(sigma2_ts, betas[1:], rtol=1e-9, atol=1e-12)
    assert torch.allclose(alpha_ts**2, 1 - betas[1:], rtol=1e-9, atol=0)
    # from clean data: q(x_t | x_0)
    alpha_t0, sigma2_t0 = proc.transition(k, torch.zeros_like(k))
    a, s = proc.alpha_sigma(k)
    assert torch.allclose(alpha_t0, a) and torch.allclose(sigma2_t0, s**2)


def test_q_sample_moments(proc):
    g = torch.Generator().manual_seed(1)
    n, d = 20_000, 4
    x0 = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    for ti in t:
        noise = torch.randn(n, d, generator=g)
        x = proc.q_sample(x0.expand(n, d), ti, noise)
        a, s = (float(v) for v in proc.alpha_sigma(ti))
        # Monte Carlo: mean error has sd s/sqrt(n) <= 0.0071, 0.03 is > 4 sd; var rel. sd sqrt(2/n) = 1%
        assert torch.allclose(x.mean(0), a * x0[0], rtol=0, atol=0.03)
        assert torch.allclose(x.var(0), torch.full((d,), s**2), rtol=0.05, atol=0)
    # exact with fixed noise and per-example times
    noise = torch.randn(4, 4, generator=g)
    x = proc.q_sample(x0.expand(4, 4), t, noise)
    a, s = proc.alpha_sigma(t)
    assert torch.allclose(x, a[:, None].float() * x0 + s[:, None].float() * noise, atol=1e-6)


def test_prior_sample_scale(proc):
    z = proc.prior_sample((50_000,), generator=torch.Generator().manual_seed(2))
    _, s1 = proc.alpha_sigma(torch.ones((), dtype=torch.float64))
    assert z.dtype == torch.float32
    # std rel. Monte Carlo sd 1/sqrt(2n) = 0.3%
    assert z.std().item() == pytest.approx(float(s1), rel=0.015)


def test_posterior_adjacent_matches_ho_eq7(proc):
    g = torch.Generator().manual_seed(3)
    betas = make_betas(proc.schedule, T)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    i = torch.tensor([1, 2, 10, 250, 500, 999, 1000])  # 1-based steps; t -> t-1
    x_t = torch.randn(len(i), 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(len(i), 3, generator=g, dtype=torch.float64)
    post = proc.posterior(x_t, x0, i.double() / T, (i - 1).double() / T)
    b, abt, abp = betas[i - 1], ab[i - 1], ab_prev[i - 1]
    mean = (abp.sqrt() * b / (1 - abt))[:, None] * x0 + ((1 - b).sqrt() * (1 - abp) / (1 - abt))[:, None] * x_t
    var = (1 - abp) / (1 - abt) * b
    # float64 throughout: only the log-SNR round trip separates the two
    assert torch.allclose(post.mean, mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(post.var.flatten(), var, rtol=1e-8, atol=1e-15)
    assert post.var.shape == (len(i), 1)
    # step 1 -> clean data: the mean is x0, the variance 0 (log clipped to a finite value)
    assert torch.allclose(post.mean[0], x0[0], atol=1e-12)
    assert post.var[0].item() == 0.0
    assert torch.isfinite(post.log_var).all()
    assert torch.allclose(post.log_var[1:].flatten(), var[1:].log(), rtol=1e-9)


def float64_ddpm_scheduler(schedule: str, **kwargs) -> DDPMScheduler:
    """diffusers' DDPMScheduler with its alphabar table recomputed in float64 from its own betas.

    In float32, 1 - alphabar_t cancels at the first steps (alphabar ~ 0.9998), which alone puts
    1e-4 errors into diffusers' posterior coefficients; in float64 its formulas can be compared at 1e-5.
    """
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[schedule], **kwargs)
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def test_posterior_matches_diffusers_ddpm_step(proc):
    sched = float64_ddpm_scheduler(proc.schedule, prediction_type="sample", variance_type="fixed_small",
                                   clip_sample=False)
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(2, 3, 4, generator=g)
    x0 = torch.randn(2, 3, 4, generator=g)
    for step in (0, 1, 9, 99, 500, 998, 999):  # diffusers' 0-based timesteps
        t = torch.tensor((step + 1) / T, dtype=torch.float64)
        post = proc.posterior(x_t, x0, t, t - 1 / T)
        z_gen = torch.Generator().manual_seed(step)
        out = sched.step(x0, step, x_t, generator=torch.Generator().manual_seed(step)).prev_sample
        var = sched._get_variance(step)
        z = torch.randn(x_t.shape, generator=z_gen)
        ref_mean = out - (var.sqrt() * z if step > 0 else 0.0)
        # both float32 (like x_t) from float64 coefficients, inputs O(1): 1e-5 is ~100 float32 ulps
        assert torch.allclose(post.mean, ref_mean, rtol=0, atol=1e-5), step
        if step > 0:
            # float64 on both sides; only diffusers' float32 betas differ (~1e-8 relative)
            assert torch.allclose(post.var.flatten().double(), var.expand(2), rtol=1e-6, atol=0), step
        else:  # diffusers clamps the zero variance to 1e-20 before use
            assert post.var.abs().max().item() <= 1e-20


def test_posterior_non_adjacent_vdm_eq27(proc):
    g = torch.Generator().manual_seed(5)
    ab = proc.alphas_cumprod
    pairs = torch.tensor([[1000, 1], [1000, 500], [700, 20], [50, 49], [400, 0], [3, 1]])  # (t, s) 1-based
    ti, si = pairs[:, 0], pairs[:, 1]
    ab_t = ab[ti - 1]
    ab_s = torch.where(si > 0, ab[(si - 1).clamp(min=0)], torch.ones_like(ab_t))
    x_t = torch.randn(len(pairs), 5, generator=g, dtype=torch.float64)
    x0 = torch.randn(len(pairs), 5, generator=g, dtype=torch.float64)
    post = proc.posterior(x_t, x0, ti.double() / T, si.double() / T)
    # Kingma et al. 2021, eq. 27 written with alphabar: alpha_{t|s}^2 = ab_t/ab_s, sigma_{t|s}^2 = 1 - ab_t/ab_s
    a_ts2 = ab_t / ab_s
    s2_ts = 1 - a_ts2
    c_xt = a_ts2.sqrt() * (1 - ab_s) / (1 - ab_t)
    c_x0 = ab_s.sqrt() * s2_ts / (1 - ab_t)
    var = s2_ts * (1 - ab_s) / (1 - ab_t)
    assert torch.allclose(post.mean, c_xt[:, None] * x_t + c_x0[:, None] * x0, rtol=1e-9, atol=1e-12)
    assert torch.allclose(post.var.flatten(), var, rtol=1e-8, atol=1e-15)


def test_posterior_is_gaussian_conditioning_at_any_times(proc):
    # independent derivation at off-knot times: (x_s, x_t) | x0 is jointly Gaussian with
    # Var x_s = sigma_s^2, Var x_t = sigma_t^2, Cov = alpha_ts sigma_s^2; condition on x_t (Schur complement)
    t = torch.tensor([0.9137, 0.5, 0.0123, 0.33], dtype=torch.float64)
    s = torch.tensor([0.0021, 0.4995, 0.0, 0.3299], dtype=torch.float64)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a_t, s_t = proc.alpha_sigma(t)
    a_s, s_s = proc.alpha_sigma(s)
    cov = (a_t / a_s) * s_s**2
    mean = a_s[:, None] * x0 + (cov / s_t**2)[:, None] * (x_t - a_t[:, None] * x0)
    var = s_s**2 - cov**2 / s_t**2
    post = proc.posterior(x_t, x0, t, s)
    assert torch.allclose(post.mean, mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(post.var.flatten(), var, rtol=1e-7, atol=1e-15)


def test_posterior_monte_carlo(proc):
    # sample x0 -> x_s -> x_t forward; regress x_s on x_t at fixed x0: residual variance = posterior var
    g = torch.Generator().manual_seed(8)
    n = 40_000
    t, s = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x_s = proc.q_sample(x0, s, torch.randn(n, 1, generator=g, dtype=torch.float64))
    alpha_ts, sigma2_ts = proc.transition(t, s)
    x_t = alpha_ts * x_s + sigma2_ts.sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    post = proc.posterior(x_t, x0, t, s)
    resid = x_s - post.mean
    # mean of residual ~ 0 (sd sqrt(var/n) ~ 1e-3 here), variance matches to ~1% (MC sd 0.7%)
    assert abs(resid.mean().item()) < 5 * (post.var[0].item() / n) ** 0.5
    assert resid.var().item() == pytest.approx(post.var[0].item(), rel=0.04)


def test_to_dict_round_trip_and_errors():
    p = DiscreteDDPM("cosine", 123)
    q = process_from_dict(p.to_dict())
    assert isinstance(q, DiscreteDDPM) and q.num_steps == 123 and q.schedule == "cosine"
    assert torch.equal(q.lambdas, p.lambdas)
    with pytest.raises(DiffusaError):
        process_from_dict({"name": "no_such_process"})  # was "edm", which is now a process
    with pytest.raises(DiffusaError):
        process_from_dict({"name": "ddpm", "num_step": 10})
    with pytest.raises(DiffusaError):
        DiscreteDDPM("nope", 10)


def test_single_step_chain():
    p = DiscreteDDPM("linear", 1)
    a, s = p.alpha_sigma(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert a[0].item() ** 2 == pytest.approx(1 - p.betas[0].item())
    assert a[1] == a[0] and a[2].item() == 1.0 and s[2].item() == 0.0


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("num_steps", [2, 10, 20, 50])
def test_short_chains_are_finite(schedule, num_steps):
    # the linear schedule's 1000 / T scaling would give beta >= 1 (NaN alphas) for T <= 20 without its cap
    p = DiscreteDDPM(schedule, num_steps)
    t = torch.linspace(0, 1, 257, dtype=torch.float64)
    a, s = p.alpha_sigma(t)
    assert torch.isfinite(a).all() and torch.isfinite(s).all()
    assert (a[1:] > 0).all() and (s[1:] <= 1).all()
    assert (p.log_snr(t[1:]).diff() < 0).all()


# -- derivatives and the SDE (Song et al. 2021, eqs. 9, 11, 17) ------------------------------------------
_T_OFF_KNOTS = torch.tensor([0.0513, 0.3007, 0.5533, 0.9011], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_d_alpha_sigma_matches_central_differences(name):
    p = PROCESSES[name]()
    da, ds = p.d_alpha_sigma(_T_OFF_KNOTS)
    h = 1e-7
    a1, s1 = p.alpha_sigma(_T_OFF_KNOTS + h)
    a0, s0 = p.alpha_sigma(_T_OFF_KNOTS - h)
    torch.testing.assert_close(da, ((a1 - a0) / (2 * h)).expand_as(da), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ds, (s1 - s0) / (2 * h), rtol=1e-5, atol=1e-6)


def test_sde_closed_forms():
    t = _T_OFF_KNOTS
    beta = 0.1 + (20.0 - 0.1) * t
    big_b = 0.1 * t + (20.0 - 0.1) * t**2 / 2
    f, g2 = PROCESSES["vp"]().sde(t)
    torch.testing.assert_close(f, -beta / 2)
    torch.testing.assert_close(g2, beta)
    f, g2 = PROCESSES["subvp"]().sde(t)
    torch.testing.assert_close(f, -beta / 2)
    torch.testing.assert_close(g2, beta * (1 - torch.exp(-2 * big_b)))
    ve = PROCESSES["ve"](sigma_min=0.01, sigma_max=50.0)
    f, g2 = ve.sde(t)
    sigma = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(f, torch.zeros_like(t))
    torch.testing.assert_close(g2, 2 * sigma**2 * math.log(50.0 / 0.01))


def test_velocity_is_drift_minus_half_g2_score():
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for name in ("vp", "subvp", "ve", "ddpm"):
        p = PROCESSES[name]()
        a, s = p.alpha_sigma(_T_OFF_KNOTS)
        x = a[:, None] * x0 + s[:, None] * eps
        f, g2 = p.sde(_T_OFF_KNOTS)
        score = -eps / s[:, None]
        torch.testing.assert_close(p.velocity(x0, eps, _T_OFF_KNOTS), f[:, None] * x - g2[:, None] * score / 2)


def test_d_alpha_sigma_under_inference_mode():
    p = PROCESSES["vp"]()
    expected = p.d_alpha_sigma(torch.tensor([0.5], dtype=torch.float64))
    with torch.inference_mode():
        got = p.d_alpha_sigma(torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(got, expected)
    assert float(got[0]) < -1
