"""Samplers: step-by-step against diffusers, and end-to-end against an exact Gaussian oracle."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import diffusa
from diffusa import Denoiser, DiffusaError, DiscreteDDPM
from diffusa.process import EDM, VP, Flow, expand_as
from diffusa.samplers import default_karras_grid, make_grid, sample_ancestral, sample_ddim
from diffusa.schedules import discrete_grid, discrete_indices, karras_sigmas, make_betas

T = 1000
DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


# ---------------------------------------------------------------------------------------------
# helpers


def float64_tables(sched):
    """Recompute a diffusers scheduler's alphabar table in float64 from its own betas.

    In float32, 1 - alphabar cancels at the first steps (alphabar ~ 0.9998): that alone moves
    diffusers' coefficients by ~1e-4 relative. In float64 its formulas can be compared at 1e-5.
    """
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = one
    if hasattr(sched, "one"):
        sched.one = one
    return sched


def gaussian_x0(x, alpha, sigma, mu, sd):
    """E[x0 | x_t] for data N(mu, sd^2) (per coordinate): mu + sd^2 a (x - a mu) / (a^2 sd^2 + sigma^2)."""
    return mu + sd**2 * alpha * (x - alpha * mu) / (alpha**2 * sd**2 + sigma**2)


def make_eps_fn(ab_table: torch.Tensor, mu: float = 0.3, sd: float = 0.8):
    """A nonlinear eps model eps(x, c) of the 0-based (fractional) timestep c, shared by both libraries.

    ab is linearly interpolated in c, so an integer c reads the table exactly and a wrong timestep shows.
    """

    def eps_fn(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(c, dtype=torch.float64).reshape(-1)
        lo = c.floor().clamp(0, len(ab_table) - 2).long()
        w = c - lo
        ab = ab_table[lo] * (1 - w) + ab_table[lo + 1] * w
        a, s = expand_as(ab.sqrt(), x), expand_as((1 - ab).sqrt(), x)
        x0 = gaussian_x0(x, a, s, mu, sd)
        return (x - a * x0) / s + 0.1 * torch.sin(3 * x)

    return eps_fn


def gaussian_denoiser(proc, mu: torch.Tensor, sd: torch.Tensor) -> Denoiser:
    """The exact x0-denoiser for data N(mu, diag(sd^2)) over the last dimension."""

    def fn(x, t):
        a, s = proc.alpha_sigma(t)
        return gaussian_x0(x, expand_as(a, x), expand_as(s, x), mu, sd)

    return Denoiser.from_function(fn, proc, prediction="x0")


def predict_law(schedule, idx, mu, sd, kind, eta=0.0):
    """The exact law N(m, V) (per coordinate) of a sampler's output with the Gaussian oracle, in float64.

    With an exact Gaussian denoiser every step is affine in x_t plus fresh Gaussian noise,
    x_s = A x_t + B + c z, so mean and variance propagate in closed form from x_T ~ N(0, sigma_1^2).
    Written from alphabar alone (Ho et al. eq. 7, Song et al. eq. 12), independently of diffusa.process.
    """
    ab = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - make_betas(schedule, T), 0)])
    mu, sd = mu.double(), sd.double()
    idx = [*idx, 0]
    m, V = torch.zeros_like(mu), (1 - ab[idx[0]]) * torch.ones_like(mu)
    for i, j in itertools.pairwise(idx):
        at, st, as_, ss = ab[i].sqrt(), (1 - ab[i]).sqrt(), ab[j].sqrt(), (1 - ab[j]).sqrt()
        k = sd**2 * at / (at**2 * sd**2 + st**2)  # x0_hat = k x + b0
        b0 = mu * (1 - k * at)
        beta = 1 - ab[i] / ab[j]
        if kind == "ddim":
            c2 = eta**2 * beta * ss**2 / st**2
            d = (ss**2 - c2).clamp_min(0).sqrt()  # eps_hat = (x - at x0_hat) / st
            A, B = as_ * k + d * (1 - at * k) / st, as_ * b0 - d * at * b0 / st
        else:
            c_xt, c_x0 = (ab[i] / ab[j]).sqrt() * ss**2 / st**2, as_ * beta / st**2
            A, B = c_xt + c_x0 * k, c_x0 * b0
            c2 = beta * ss**2 / st**2 if kind == "beta_tilde" else beta
        if j == 0:
            c2 = torch.zeros(())
        m, V = A * m + B, A**2 * V + c2
    return m, V.sqrt()


# ---------------------------------------------------------------------------------------------
# (a) DDIM step by step against diffusers


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(schedule, eta):
    steps = 10
    sched = float64_tables(DDIMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[schedule],
                                         set_alpha_to_one=True, clip_sample=False, prediction_type="epsilon",
                                         timestep_spacing="leading"))
    sched.set_timesteps(steps)
    proc = DiscreteDDPM(schedule, T)
    eps_fn = make_eps_fn(sched.alphas_cumprod)
    den = Denoiser.from_function(lambda x, t: eps_fn(x, proc.c_noise(t)), proc, prediction="eps")
    grid = discrete_grid(T, steps, "leading")
    assert torch.equal((grid[:-1] * T).round().long() - 1, sched.timesteps)

    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    states, xs, x0s = [g.get_state()], [x_T], []

    def callback(info):
        xs.append(info["x"].clone())
        x0s.append(info["x0"].clone())
        states.append(g.get_state())

    out = sample_ddim(den, x_T, grid, generator=g, callback=callback, eta=eta)
    assert torch.equal(out, xs[-1])
    x = x_T
    for i, ts in enumerate(sched.timesteps):
        z = torch.randn(x.shape, generator=torch.Generator().set_state(states[i]))
        ref = sched.step(eps_fn(x, ts), ts, x, eta=eta, variance_noise=z if eta > 0 else None)
        # both float32 states from float64 coefficients; |x| <~ 3: 1e-5 is ~30 float32 ulps.
        # x0_hat divides by sqrt(alphabar_t) (>= 0.0064 here), which amplifies rounding: relative 1e-5 too.
        assert torch.allclose(x0s[i], ref.pred_original_sample, rtol=1e-5, atol=1e-5), i
        assert torch.allclose(xs[i + 1], ref.prev_sample, rtol=0, atol=1e-5), i
        x = ref.prev_sample  # diffusers runs its own chain: errors would accumulate, not be reset
    assert torch.allclose(out, x, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (b) ancestral DDPM step by step against diffusers


@pytest.mark.parametrize(("schedule", "steps"), [("linear", 1000), ("cosine", 100)])
def test_ancestral_matches_diffusers_ddpm(schedule, steps):
    sched = float64_tables(DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[schedule],
                                         variance_type="fixed_small", clip_sample=False,
                                         prediction_type="epsilon"))
    if steps < T:
        sched.set_timesteps(steps)  # respaced: "leading" timesteps, beta recomputed from alphabar
    timesteps = sched.timesteps
    proc = DiscreteDDPM(schedule, T)
    eps_fn = make_eps_fn(sched.alphas_cumprod)
    den = Denoiser.from_function(lambda x, t: eps_fn(x, proc.c_noise(t)), proc, prediction="eps")
    grid = discrete_grid(T, steps, "leading")
    assert torch.equal((grid[:-1] * T).round().long() - 1, timesteps)

    x_T = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    states, xs, x0s = [g.get_state()], [x_T], []

    def callback(info):
        xs.append(info["x"].clone())
        x0s.append(info["x0"].clone())
        states.append(g.get_state())

    sample_ancestral(den, x_T, grid, generator=g, callback=callback)
    assert len(xs) == steps + 1
    # the posterior's mean / variance split on a spread of steps (all of them costs seconds), both ends included
    split_at = set(range(0, steps, 37)) | {1, steps - 2, steps - 1}
    for i, ts in enumerate(timesteps):
        x = xs[i]
        ref = sched.step(eps_fn(x, ts), ts, x, generator=torch.Generator().set_state(states[i]))
        # the same noise draw: the whole step agrees, noise included (1e-5: see below)
        assert torch.allclose(xs[i + 1], ref.prev_sample, rtol=0, atol=1e-5), i
        if i not in split_at:
            continue
        z = torch.randn(x.shape, generator=torch.Generator().set_state(states[i]))
        var = sched._get_variance(ts)
        ref_mean = ref.prev_sample - (var.sqrt() * z if ts > 0 else 0)
        t, s = grid[i].expand(2), grid[i + 1].expand(2)
        post = proc.posterior(x, x0s[i], t, s)
        # float32 states, float64 coefficients on both sides, O(1) values: 1e-5 (x0_hat: relative too,
        # it divides by sqrt(alphabar_t) >= 0.0064)
        assert torch.allclose(x0s[i], ref.pred_original_sample, rtol=1e-5, atol=1e-5), i
        assert torch.allclose(post.mean, ref_mean, rtol=0, atol=1e-5), i
        if ts > 0:
            assert torch.allclose(post.var.flatten(), var.expand(2).float(), rtol=1e-5, atol=0), i


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_eta1_is_ancestral_beta_tilde(schedule):
    # Song et al. 2021, Sec. 4.1: eta = 1 is DDPM. sqrt(sigma_s^2 - beta_tilde) = alpha_ts sigma_s^2 / sigma_t,
    # so the deterministic parts agree, and both draw one N(0, I) per non-final step from the generator
    den = gaussian_denoiser(DiscreteDDPM(schedule, T), torch.tensor([0.4, -1.0]), torch.tensor([0.6, 1.1]))
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    grid = discrete_grid(T, 30, "trailing")
    a = sample_ddim(den, x_T, grid, generator=torch.Generator().manual_seed(1), eta=1.0)
    b = sample_ancestral(den, x_T, grid, generator=torch.Generator().manual_seed(1), variance="beta_tilde")
    # float32 rounding of different but equal formulas over 30 steps
    assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_learned_variance_interpolates_between_beta_tilde_and_beta():
    proc = DiscreteDDPM("linear", T)
    mu, sd = torch.tensor([0.5, -1.0]), torch.tensor([0.7, 0.9])
    plain = gaussian_denoiser(proc, mu, sd)
    grid = discrete_grid(T, 20, "trailing")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for v_raw, variance in ((-1.0, "beta_tilde"), (1.0, "beta")):

        def fn(x, t, v=v_raw):  # the second half of the channels is IDDPM's v in [-1, 1]
            return torch.cat([plain.raw(x, t, None), torch.full_like(x, v)], dim=1)

        learned = Denoiser(lambda x, t, cond, fn=fn: fn(x, t), proc, prediction="x0", learned_variance=True)
        a = sample_ancestral(learned, x_T, grid, generator=torch.Generator().manual_seed(1), variance="beta_tilde")
        b = sample_ancestral(plain, x_T, grid, generator=torch.Generator().manual_seed(1), variance=variance)
        # exp(v log beta + (1 - v) log beta_tilde) at v in {0, 1}: identical up to float32 exp/log rounding
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (c) the exact Gaussian oracle: samplers reproduce the data law

MU = torch.tensor([1.0, -0.5, 0.0, 0.25])
SD = torch.tensor([0.5, 0.7, 0.85, 1.0])
N_PER_ROW, ROWS = 5000, 4  # 20k samples per coordinate, laid out (4, 5000, D): 4 examples share each t
# Monte Carlo with n = 20k: the mean has sd <= 1.0 / sqrt(n) = 0.0071, so 0.03 is > 4 sd;
# the std has relative sd 1 / sqrt(2 n) = 0.5%, so 2% is 4 sd and 3% is 6 sd.
MEAN_TOL, STD_REL_TOL_EXACT, STD_REL_TOL = 0.03, 0.02, 0.03

CONFIGS = {
    # name: (sampler, steps, options, dims, |std bias| bound vs the data from the exact law, see below)
    "ddim_eta0_50": ("ddim", 50, {"eta": 0.0}, 4, 0.06),
    "ddim_eta1_50": ("ddim", 50, {"eta": 1.0}, 4, 0.12),
    "ddim_eta0_250": ("ddim", 250, {"eta": 0.0}, 4, 0.015),
    "ancestral_beta_tilde_100": ("ancestral", 100, {"variance": "beta_tilde"}, 4, 0.07),
    "ancestral_beta_100": ("ancestral", 100, {"variance": "beta"}, 4, 0.015),
    # the full chain costs ~1000 x 8 schedule evaluations: 2 dims only (the smaller SDs, the harder ones)
    "ancestral_beta_tilde_1000": ("ancestral", 1000, {"variance": "beta_tilde"}, 2, 0.01),
    "ancestral_beta_1000": ("ancestral", 1000, {"variance": "beta"}, 2, 0.005),
}
CASES = [(sched, name) for name in CONFIGS for sched in ("linear", "cosine")
         if not name.endswith("_1000")] + [("linear", "ancestral_beta_tilde_1000"), ("cosine", "ancestral_beta_1000")]


@pytest.mark.parametrize(("schedule", "name"), CASES)
def test_gaussian_oracle(schedule, name):
    sampler, steps, options, dims, bias_bound = CONFIGS[name]
    proc = DiscreteDDPM(schedule, T)
    mu, sd = MU[:dims], SD[:dims]
    den = gaussian_denoiser(proc, mu, sd)
    x = diffusa.sample(den, (ROWS, N_PER_ROW, dims), sampler=sampler, steps=steps,
                       generator=torch.Generator().manual_seed(0), **options)
    x = x.reshape(-1, dims).double()
    mean, std = x.mean(0), x.std(0)
    one = torch.ones(dims, dtype=torch.float64)
    # 1. the samples follow the exact law of this discretised sampler (tight: Monte Carlo only)
    kind = "ddim" if sampler == "ddim" else options["variance"]
    m, s = predict_law(schedule, discrete_indices(T, steps, "trailing"), mu, sd, kind, options.get("eta", 0.0))
    assert torch.allclose(mean, m, rtol=0, atol=MEAN_TOL)
    assert torch.allclose(std / s, one, rtol=0, atol=STD_REL_TOL_EXACT)
    # 2. and that law is the data's up to discretisation. The mean is unbiased up to the prior's
    # alpha_1 mu offset (< 0.01 here). DDIM provably shrinks the std (each step's gain is a cosine,
    # Cauchy-Schwarz), and ancestral beta-tilde drops the Var[x0 | x_t] term (Bao et al. 2022): both
    # vanish as O(1/steps); the bounds are the exact law's worst case over MU, SD, plus margin.
    assert torch.allclose(mean, mu.double(), rtol=0, atol=MEAN_TOL)
    assert ((s / sd - 1).abs() <= bias_bound).all()
    if bias_bound <= 0.015:  # the fine chains: the data law directly, to 3%
        assert torch.allclose(std / sd, one, rtol=0, atol=STD_REL_TOL)
    else:
        assert torch.allclose(std / sd, one, rtol=0, atol=bias_bound + 0.02)
    if sampler == "ddim":
        assert (s < sd).all()


def test_gaussian_oracle_even_grid():
    proc = DiscreteDDPM("linear", T)
    grid = discrete_grid(T, 100, "even")
    den = gaussian_denoiser(proc, MU, SD)
    x = diffusa.sample(den, (ROWS, N_PER_ROW, 4), sampler="ancestral", grid=grid, variance="beta",
                       generator=torch.Generator().manual_seed(3)).reshape(-1, 4).double()
    m, s = predict_law("linear", discrete_indices(T, 100, "even"), MU, SD, "beta")
    assert torch.allclose(x.mean(0), m, atol=MEAN_TOL) and torch.allclose(x.mean(0), MU.double(), atol=MEAN_TOL)
    assert torch.allclose(x.std(0) / s, torch.ones(4, dtype=torch.float64), atol=STD_REL_TOL_EXACT)
    assert torch.allclose(x.std(0) / SD, torch.ones(4, dtype=torch.float64), atol=STD_REL_TOL)


def test_ddim_deterministic_is_the_exact_affine_map():
    # no Monte Carlo at all: with eta = 0 each output is A x_T + B per coordinate
    proc = DiscreteDDPM("cosine", T)
    den = gaussian_denoiser(proc, MU.double(), SD.double())
    grid = make_grid(den, 50)
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample_ddim(den, x_T, grid)
    idx = discrete_indices(T, 50, "trailing")
    m, s = predict_law("cosine", idx, MU, SD, "ddim")
    s1 = (1 - proc.alphas_cumprod[-1]).sqrt()
    # the affine map sends the prior's N(0, s1^2) to N(m, s^2): out = m + (s / s1) x_T (float64 throughout)
    assert torch.allclose(out, m + s / s1 * x_T, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# (d) seeds, (e) callbacks, entry point


def small_denoiser():
    return gaussian_denoiser(DiscreteDDPM("linear", T), MU, SD)


@pytest.mark.parametrize(("sampler", "options"), [("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5}),
                                                  ("ancestral", {"variance": "beta_tilde"}),
                                                  ("ddpm", {"variance": "beta"})])
def test_same_seed_same_samples(sampler, options):
    den = small_denoiser()

    def run(seed):
        return diffusa.sample(den, (8, 4), sampler=sampler, steps=20, generator=torch.Generator().manual_seed(seed),
                              **options)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (8, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ancestral_noise_depends_on_generator_only():
    den = small_denoiser()
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    grid = discrete_grid(T, 10, "trailing")
    a = sample_ancestral(den, x_T, grid, generator=torch.Generator().manual_seed(2))
    b = sample_ancestral(den, x_T, grid, generator=torch.Generator().manual_seed(3))
    c = sample_ddim(den, x_T, grid)
    d = sample_ddim(den, x_T, grid)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_callback_once_per_step(sampler):
    den = small_denoiser()
    calls = []
    out = diffusa.sample(den, (3, 4), sampler=sampler, steps=7, generator=torch.Generator().manual_seed(0),
                         callback=calls.append)
    grid = make_grid(den, 7)
    assert len(calls) == 7 == len(grid) - 1
    assert [c["i"] for c in calls] == list(range(7))
    assert [float(c["t"]) for c in calls] == grid[:-1].tolist()
    assert [float(c["s"]) for c in calls] == grid[1:].tolist()
    assert all(c["x"].shape == (3, 4) and c["x0"].shape == (3, 4) for c in calls)
    assert torch.equal(calls[-1]["x"], out)


def test_final_step_returns_x0_hat():
    den = small_denoiser()
    calls = []
    out = diffusa.sample(den, (3, 4), sampler="ancestral", steps=5, generator=torch.Generator().manual_seed(0),
                         callback=calls.append)
    # the last step lands on t = 0 with no noise: the posterior mean there is x0_hat itself
    assert torch.allclose(out, calls[-1]["x0"], atol=1e-6)


def test_make_grid_defaults_to_trailing():
    den = small_denoiser()
    assert torch.equal(make_grid(den, 25), discrete_grid(T, 25, "trailing"))
    assert torch.equal(make_grid(den, 25, "leading"), discrete_grid(T, 25, "leading"))
    assert make_grid(den, 25)[0].item() == 1.0


@pytest.mark.parametrize("proc", [DiscreteDDPM("linear", T), VP(), EDM(), Flow()], ids=lambda p: type(p).__name__)
def test_level_spacings_on_any_process(proc):
    """--spacing uniform / logsnr / logsnr-unit / karras give those grids on every process; chain spacings need a
    chain."""
    den = gaussian_denoiser(proc, MU, SD)
    t_min = 1 / T if isinstance(proc, DiscreteDDPM) else 1e-3
    lam = proc.log_snr(make_grid(den, 12, "logsnr")[:-1])
    assert len(lam) == 12 and torch.allclose(lam.diff(), lam.diff()[:1].expand(11), rtol=1e-6)
    assert torch.allclose(lam[[0, -1]], proc.log_snr(torch.tensor([1.0, t_min], dtype=torch.float64)), rtol=1e-6)
    assert torch.equal(make_grid(den, 12, "karras"), default_karras_grid(den, 12))
    sig = (-proc.log_snr(make_grid(den, 12, "karras")[:-1]) / 2).exp()  # sigma / alpha, rho = 7 spaced
    assert torch.allclose(sig, karras_sigmas(float(sig[-1]), float(sig[0]), 12), rtol=1e-5)
    lam_ends = proc.log_snr(torch.tensor([1.0, t_min if isinstance(proc, DiscreteDDPM) else 1e-5],
                                         dtype=torch.float64))
    assert float(sig[0]) == pytest.approx(min(80.0, float((-lam_ends[0] / 2).exp())), rel=1e-5)  # EDM's [0.002, 80]
    assert float(sig[-1]) == pytest.approx(max(0.002, float((-lam_ends[1] / 2).exp())), rel=1e-5)  # within training
    assert torch.equal(make_grid(den, 12, "uniform"), torch.linspace(1, 0, 13, dtype=torch.float64))
    # logsnr-unit: log-SNR evenly spaced over sigma / alpha in [0.05, 20] (within the trained levels), then t = 0
    unit = make_grid(den, 12, "logsnr-unit")
    lam = proc.log_snr(unit[:-1])
    assert unit[-1] == 0 and len(lam) == 12 and torch.allclose(lam.diff(), lam.diff()[:1].expand(11), rtol=1e-6)
    assert float((-lam[-1] / 2).exp()) == pytest.approx(0.05, rel=1e-6)
    assert float((-lam[0] / 2).exp()) == pytest.approx(min(20.0, float((-lam_ends[0] / 2).exp())), rel=1e-5)
    with pytest.raises(DiffusaError, match="unknown spacing"):
        make_grid(den, 12, "sideways")
    if not isinstance(proc, DiscreteDDPM):
        with pytest.raises(DiffusaError, match="continuous"):
            make_grid(den, 12, "trailing")


def test_unit_grid_outside_a_process_levels_is_one_line():
    """logsnr-unit on a process whose levels miss [0.05, 20] (a VE that stops at sigma 0.04): one line naming the
    spacing and the range, not a complaint about repeated times."""
    from diffusa.process import process_from_dict

    den = gaussian_denoiser(process_from_dict({"name": "ve", "sigma_min": 0.001, "sigma_max": 0.04}), MU, SD)
    with pytest.raises(DiffusaError, match=r"^spacing 'logsnr-unit' needs noise levels sigma/alpha in \[0\.05, 20"
                                           r"\.0\]; this process's levels .* do not reach them$"):
        make_grid(den, 10, "logsnr-unit")


def test_sample_errors():
    den = small_denoiser()
    with pytest.raises(DiffusaError):
        diffusa.sample(den, (2, 4), sampler="no_such_sampler")  # was "euler", which is now a sampler
    with pytest.raises(DiffusaError):
        diffusa.sample(den, (0, 4))
    with pytest.raises(DiffusaError):
        diffusa.sample(den, (2, 4), steps=0)
    with pytest.raises(DiffusaError):
        diffusa.sample(den, (2, 4), sampler="ancestral", variance="fixed_large")
    for sampler in ("ddim", "euler_ancestral", "dpmpp_2m_sde"):
        for eta in (-1.0, float("nan"), float("inf")):
            with pytest.raises(DiffusaError, match="eta must be"):
                diffusa.sample(den, (2, 4), sampler=sampler, steps=3, eta=eta)


def test_prior_scale_from_sample_entry_point():
    den = small_denoiser()
    calls = []
    x_T = den.process.prior_sample((4000, 4), generator=torch.Generator().manual_seed(9))
    diffusa.sample(den, (4000, 4), steps=1, x_T=x_T, callback=calls.append)
    assert calls[0]["t"].item() == 1.0
    # std of 16k N(0, sigma_1^2) draws: relative sd 0.6%
    assert x_T.std().item() == pytest.approx(math.sqrt(1 - den.process.alphas_cumprod[-1].item()), rel=0.03)


def diffusers_reference(scheduler_cls, schedule: str, steps: int, spacing: str, num_steps: int = 1000,
                        final_zero: bool = True, **config):
    """A diffusers multistep scheduler (`scheduler_cls(**config)`) and a diffusa Denoiser driven by the same analytic
    eps, on one float64 alphabar table, with the matching decreasing grid: (sched, denoiser, grid, eps_fn).

    diffusers' betas are float32 (cosine's capped 0.999 moves alphabar_T by 1e-5 relative) and its sigmas are cast
    to float32 in set_timesteps; both are recomputed in float64 so the comparison is of step formulas only.
    `final_zero`: the last step goes to sigma = 0 (t = 0), else to the chain's first step (t = 1 / num_steps,
    diffusers' final_sigmas_type="sigma_min")."""
    from diffusa import Denoiser, DiscreteDDPM

    proc = DiscreteDDPM(schedule, num_steps)
    sched = scheduler_cls(num_train_timesteps=num_steps, beta_schedule=DIFFUSERS_NAME[schedule],
                          prediction_type="epsilon", timestep_spacing=spacing,
                          final_sigmas_type="zero" if final_zero else "sigma_min", **config)
    sched.betas = proc.betas.clone()
    float64_tables(sched)
    sched.set_timesteps(steps)
    ab = sched.alphas_cumprod
    sig = ((1 - ab) / ab).sqrt()
    last = torch.zeros(1, dtype=torch.float64) if final_zero else sig[:1]
    sched.sigmas = torch.cat([sig[sched.timesteps], last])
    eps_fn = make_eps_fn(ab)
    den = Denoiser.from_function(lambda x, t: eps_fn(x, proc.c_noise(t)), proc, prediction="eps")
    t_last = torch.full((1,), 0.0 if final_zero else 1 / num_steps, dtype=torch.float64)
    grid = torch.cat([(sched.timesteps.to(torch.float64) + 1) / num_steps, t_last])
    return sched, den, grid, eps_fn


def dpm_solver_reference(schedule: str, steps: int, order: int, spacing: str, num_steps: int = 1000,
                         algorithm: str = "dpmsolver++"):
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++, order 2 or 3) and a diffusa Denoiser driven by the same
    analytic eps (`diffusers_reference`)."""
    from diffusers import DPMSolverMultistepScheduler

    return diffusers_reference(DPMSolverMultistepScheduler, schedule, steps, spacing, num_steps,
                               algorithm_type=algorithm, solver_order=order, lower_order_final=True)
