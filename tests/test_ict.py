"""Consistency training without a teacher (improved CT, Song & Dhariwal 2023; docs/distillation.md): the curriculum
N(k), the discrete log-normal over the levels, the pseudo-Huber distance, the loss against the exact consistency
function of Gaussian data, the synchronised dropout, a short training on moons, resume and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import diffusa
from diffusa.config import load_config
from diffusa.consistency import ict_level_weights, ict_levels_at, level_times, lognormal_level_probs
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.metrics import energy_distance
from diffusa.prediction import Denoiser
from diffusa.process import EDM, expand_as
from diffusa.schedules import karras_sigmas
from diffusa.tasks.consistency import consistency_distance
from diffusa.tasks.ict import ict_loss
from diffusa.train import diffusion_engine

F64 = torch.float64
MU = torch.tensor([0.7, -1.2], dtype=F64)
SD = torch.tensor([0.5, 1.5], dtype=F64)
SMIN, SMAX = 0.002, 80.0
PROC = EDM()


def grid(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(times, sigmas) of Karras's rho = 7 grid of `levels` levels on [0.002, 80], increasing."""
    times = level_times(PROC, levels, SMIN, SMAX)
    a, s = PROC.alpha_sigma(times)
    return times, s / a


def linear_map(ratio, theta: torch.Tensor | float = 0.0) -> Denoiser:
    """x0 = MU + (1 + theta) ratio(sigma) (x - MU): the Gaussian's consistency function, denoiser, ... as an x0."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (expand_as(v, x) for v in PROC.alpha_sigma(t))
        return MU + (1 + theta) * ratio(s / a) * (x / a - MU)

    return Denoiser.from_function(fn, PROC, "x0")


def consistency_ratio(sd: torch.Tensor):
    """The PF-ODE map of N(MU, sd^2) from sigma to sigma_min: x -> MU + (x - MU) sqrt((sd^2 + smin^2) / (sd^2 +
    sigma^2))."""
    return lambda sh: ((sd**2 + SMIN**2) / (sd**2 + sh**2)).sqrt()


def denoiser_ratio(sh: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_sigma] of N(MU, SD^2): MU + SD^2 / (SD^2 + sigma^2) (x - MU), not a consistency function."""
    return SD**2 / (SD**2 + sh**2)


def test_curriculum_doubles() -> None:
    # the paper's K = 400,000: K' = floor(400000 / (log2 128 + 1)) = 50,000
    k400 = {0: 11, 49_999: 11, 50_000: 21, 100_000: 41, 150_000: 81, 200_000: 161, 250_000: 321, 300_000: 641,
            349_999: 641, 350_000: 1281, 399_999: 1281, 10**9: 1281}
    assert {k: ict_levels_at(k, 400_000) for k in k400} == k400
    # K = 300: K' = 37; the last K - 7 K' = 41 steps at s1 + 1 = 1281 levels
    assert [ict_levels_at(k, 300) for k in (0, 36, 37, 258, 259, 299)] == [11, 11, 21, 641, 1281, 1281]
    # s1 / s0 not a power of 2: K' = floor(1000 / (log2 10 + 1)) = floor(231.4) = 231, capped at s1 + 1 = 101
    assert [ict_levels_at(k, 1000, 10, 100) for k in (230, 231, 462, 693, 923, 924)] == [11, 21, 41, 81, 81, 101]
    assert [ict_levels_at(k, 5) for k in range(5)] == [11, 21, 41, 81, 161]  # K' = floor(5 / 8) = 0 -> 1
    assert ict_levels_at(7, 20, 4, 4) == 5  # s0 = s1: N fixed


def test_lognormal_level_probabilities() -> None:
    _, sig = grid(11)
    assert torch.allclose(sig, karras_sigmas(SMIN, SMAX, 11).flip(0), rtol=1e-9)  # sigma_i of the Karras grid
    p = lognormal_level_probs(sig, -1.1, 2.0)
    assert p.shape == (10,) and abs(float(p.sum()) - 1) < 1e-12 and bool((p > 0).all())

    def erf_cdf(s: float) -> float:
        return math.erf((math.log(s) - -1.1) / (math.sqrt(2) * 2.0))

    mass = [erf_cdf(float(sig[i + 1])) - erf_cdf(float(sig[i])) for i in range(10)]
    assert torch.allclose(p, torch.tensor(mass, dtype=F64) / sum(mass), rtol=1e-12, atol=0)
    # the normaliser telescopes: the log-normal's mass between sigma_min and sigma_max, 2 (Phi(b) - Phi(a))
    assert abs(sum(mass) - (erf_cdf(SMAX) - erf_cdf(SMIN))) < 1e-12
    # by hand, with z = (ln sigma + 1.1) / 2: the pair (0.0851, 0.3183), z from -0.682 to -0.022, takes the most,
    # (Phi(-0.022) - Phi(-0.682)) / (Phi(2.741) - Phi(-2.557)) = (0.4910 - 0.2476) / 0.9917 = 0.2455; the next pair
    # (0.3183, 0.9654) (0.7028 - 0.4910) / 0.9917 = 0.2136
    assert int(p.argmax()) == 2 and abs(float(p[2]) - 0.2455) < 2e-4 and abs(float(p[3]) - 0.2136) < 2e-4, p
    # lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i): 1 / (0.016721 - 0.002) = 67.93 at the bottom
    lam = ict_level_weights(sig)
    assert abs(float(lam[0]) - 1 / (float(sig[1]) - SMIN)) < 1e-9 and abs(float(lam[0]) - 67.93) < 0.01
    assert bool((lam[1:] < lam[:-1]).all())
    with pytest.raises(DiffusaError, match="puts no mass between the levels"):
        lognormal_level_probs(sig, 100.0, 0.1)


@pytest.mark.parametrize("dim", [2, 3072])
def test_pseudo_huber(dim: int) -> None:
    c = 0.00054 * math.sqrt(dim)  # 0.00076 for points in the plane, 0.030 for 32 x 32 x 3 images
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, dim, generator=g, dtype=F64)
    u = torch.randn(64, dim, generator=g, dtype=F64)
    u = u / u.norm(dim=1, keepdim=True)  # unit directions: ||a - b|| = r exactly
    for r in (1e-3 * c, c, 1.0, 1e3 * c):
        d = consistency_distance(a, a + r * u, "pseudo_huber")
        assert torch.allclose(d, torch.full_like(d, math.sqrt(r**2 + c**2) - c), rtol=1e-8, atol=0), r
    # the limits: ||a - b||^2 / (2c) (squared L2, scaled) well below c, ||a - b|| - c (the norm) well above
    small, large = (consistency_distance(a, a + r * u, "pseudo_huber") for r in (1e-3 * c, 1e3 * c))
    assert torch.allclose(small, torch.full_like(small, (1e-3 * c) ** 2 / (2 * c)), rtol=1e-6, atol=0)
    assert torch.allclose(large, torch.full_like(large, 1e3 * c - c), rtol=1e-6, atol=0)
    assert torch.equal(consistency_distance(a, a, "pseudo_huber"), torch.zeros(64, dtype=F64))


def test_consistency_map_of_gaussian_data_solves_the_ode() -> None:
    """x -> MU + (x - MU) sqrt((SD^2 + smin^2) / (SD^2 + sigma^2)) is the probability-flow ODE's map to sigma_min
    (dx / dsigma = (x - D(x, sigma)) / sigma), checked against RK4 in ln sigma, and it is the identity at smin."""
    f = linear_map(consistency_ratio(SD))
    x = MU + 40 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for sigma in (80.0, 3.0, 0.05):
        y, u = x.clone(), math.log(sigma)
        h = (math.log(SMIN) - u) / 4000

        def drift(y: torch.Tensor, u: float) -> torch.Tensor:  # dx / d ln sigma = x - D(x, sigma)
            return y - (MU + SD**2 / (SD**2 + math.exp(2 * u)) * (y - MU))

        for _ in range(4000):
            k1 = drift(y, u)
            k2 = drift(y + h / 2 * k1, u + h / 2)
            k3 = drift(y + h / 2 * k2, u + h / 2)
            k4 = drift(y + h * k3, u + h)
            y, u = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), u + h
        t = PROC.t_of_log_snr(torch.tensor(-2 * math.log(sigma), dtype=F64))
        assert torch.allclose(f(x, t).x0, y, rtol=0, atol=1e-9), sigma
    assert torch.equal(consistency_ratio(SD)(torch.tensor(SMIN, dtype=F64)), torch.ones(2, dtype=F64))


def test_loss_of_the_exact_consistency_function() -> None:
    n = 200_000
    g = torch.Generator().manual_seed(0)
    # data at one point (SD = 0): x + sigma z lies on the ODE's trajectory, so the loss is zero (to rounding)
    times, _ = grid(1281)
    point = linear_map(consistency_ratio(torch.zeros(2, dtype=F64)))
    i = torch.randint(0, 1280, (4000,), generator=g)
    x0, z = MU.expand(4000, 2).clone(), torch.randn(4000, 2, generator=g, dtype=F64)
    assert float(ict_loss(point, point, x0, times, i, z, None, "l2").max()) < 1e-30  # measured 3e-32
    assert float(ict_loss(point, point, x0, times, i, z, None, "pseudo_huber").max()) == 0
    # N(MU, SD^2): per coordinate the residual is (x - MU)(r_{i+1} - r_i) + z (sigma_{i+1} r_{i+1} - sigma_i r_i),
    # so its expected square is SD^2 (dr)^2 + (d(sigma r))^2: the same z at both levels, nothing else
    f = linear_map(consistency_ratio(SD))
    for levels in (11, 1281):
        times, sig = grid(levels)
        p, lam = lognormal_level_probs(sig), ict_level_weights(sig)
        i = torch.multinomial(p, n, replacement=True, generator=g)
        x0 = MU + SD * torch.randn(n, 2, generator=g, dtype=F64)
        z = torch.randn(n, 2, generator=g, dtype=F64)
        r = consistency_ratio(SD)
        lo, hi = r(sig[:-1, None]), r(sig[1:, None])
        per_level = (SD**2 * (hi - lo) ** 2 + (sig[1:, None] * hi - sig[:-1, None] * lo) ** 2).mean(1)
        expected = float((p * lam * per_level).sum())  # 0.1456 (11 levels), 0.00121 (1281)
        measured = float((lam[i] * ict_loss(f, f, x0, times, i, z, None, "l2")).mean())
        assert abs(measured / expected - 1) < 0.05, (levels, measured, expected)


def test_gradient_vanishes_at_the_consistency_function() -> None:
    """CT's loss is not zero at the consistency function (a one-sample estimate of the ODE step), but its expected
    gradient is, as the grid is refined (Song et al. 2023, Theorem 2): d/dtheta at theta = 0 for the student
    MU + (1 + theta) r(sigma) (x - MU), lambda-weighted L2, 200,000 draws."""
    n = 200_000

    def gradient(ratio, levels: int, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        times, sig = grid(levels)
        i = torch.multinomial(lognormal_level_probs(sig), n, replacement=True, generator=g)
        x0 = MU + SD * torch.randn(n, 2, generator=g, dtype=F64)
        z = torch.randn(n, 2, generator=g, dtype=F64)
        theta = torch.zeros((), dtype=F64, requires_grad=True)
        f = linear_map(ratio, theta)
        loss = (ict_level_weights(sig)[i] * ict_loss(f, f, x0, times, i, z, None, "l2")).mean()
        return float(torch.autograd.grad(loss, theta)[0])

    # measured over seeds 0-3: the consistency function 0.140 .. 0.151 at 11 levels, -0.0025 .. 0.0073 at 1281;
    # the denoiser (not consistent) -0.12 .. -0.13 and -0.26 .. -0.27
    exact = [gradient(consistency_ratio(SD), levels, 0) for levels in (11, 1281)]
    other = gradient(denoiser_ratio, 1281, 0)
    assert exact[0] > 0.1 and abs(exact[1]) < 0.03 and other < -0.2, (exact, other)


class DropoutNet(nn.Module):
    """net(x, c_noise, cond): a linear layer behind dropout (any network with dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.drop = nn.Linear(2, 2), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.lin(self.drop(x))


def test_target_sees_the_students_dropout() -> None:
    """theta- = stopgrad(theta) under the same dropout masks: with both levels equal, the loss is exactly 0."""
    torch.manual_seed(0)
    den = Denoiser.from_network(DropoutNet().train(), PROC, "edm")
    times = torch.full((2,), 0.5, dtype=F64)  # t_i = t_{i+1}: x_i = x_{i+1}
    x0, z = torch.randn(64, 2), torch.randn(64, 2)
    i = torch.zeros(64, dtype=torch.long)
    assert torch.equal(ict_loss(den, den, x0, times, i, z, None, "l2"), torch.zeros(64))
    student = den(PROC.q_sample(x0, times[i], z), times[i]).x0
    again = den(PROC.q_sample(x0, times[i], z), times[i]).x0  # other masks: the two passes would differ
    assert not torch.equal(student, again)


MOONS = ["--data", "moons", "--objective", "ict", "--steps", 400, "--quiet", "--set", "train.lr=4e-3",
         "--set", "train.grad_clip=0.0", "--set", "train.warmup=20", "--set", "train.sample_every=0",
         "--set", "train.checkpoint_every=0", "--set", "model.net.hidden=64", "--set", "model.net.depth=3"]


def test_train_moons_from_data(tmp_path: Path, cli) -> None:
    """400 steps of iCT on moons (about 5 s on one thread): one-step samples near the data."""
    out = tmp_path / "ict"
    res = cli("train", "--out", out, *MOONS)
    assert res.code == 0, res.err
    meta = json.loads((out / "config.json").read_text())
    assert meta["process"]["name"] == "edm" and meta["config"]["loss"]["kind"] == "ict"
    table = meta["consistency"]  # the grid: EDM's sigma from 0.002 to 80, s1 + 1 levels; t_min is sigma_min's time
    assert (table["sigma_min"], table["sigma_max"], table["levels"]) == (SMIN, SMAX, 1281)
    assert 0 < table["t_min"] < 1e-9
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["levels"] == 11 and log[-1]["levels"] == 1281  # K' = 50: 11 .. 1281 levels
    ref = load_dataset("moons", "test").x[:2000]
    pipe = diffusa.load(out)
    assert pipe.default_sampler == "consistency"
    ed = {}
    for steps in (1, 2, 4):
        res = pipe(n=2000, steps=steps, seed=1)
        assert res.settings["nfe"] == steps
        ed[steps] = energy_distance(res.samples, ref)
    # measured here (seed 0): 0.0112, 0.0058, 0.0092; seeds 1 and 2 of the same recipe (benchmarks/ict_toy.py) up to
    # 0.0176, 0.0106, 0.0063; the floor (2,000 training points against the same 2,000 held-out ones) 0.0012
    assert ed[1] < 0.04 and ed[2] < 0.03 and ed[4] < 0.03, ed
    den = pipe.run.denoiser  # the boundary condition, exactly: f(x, t_min) = x on EDM (alpha = 1)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    assert den.t_min == meta["consistency"]["t_min"] and torch.equal(den(x, den.t_min).x0, x)
    with pytest.raises(DiffusaError, match="steps 1281 exceeds the 1280 steps of this consistency model"):
        pipe(n=8, steps=1281)
    res = cli("sample", out, "--steps", 2, "--n", 8, "--out", tmp_path / "s.npz")
    assert res.code == 0 and res.err == "", res.err
    # a consistency model is no teacher for distillation
    res = cli("distill", "--teacher", out, "--out", tmp_path / "cd")
    assert res.code == 2 and "is a consistency model already" in res.err


def test_images_class_conditional(tmp_path: Path) -> None:
    """A class-conditional U-Net with dropout on 8x8 digits trains a few steps, loads and samples."""
    cfg = load_config(overrides=['data.name="digits"', 'process.name="edm"', 'loss.kind="ict"',
                                 'model.conditioning="class"', "model.net.channels=8", "model.net.dropout=0.1",
                                 "train.steps=4", "train.batch_size=16", "train.sample_every=0", "train.sample_n=8",
                                 "train.checkpoint_every=0"])
    out = diffusion_engine(cfg, tmp_path / "ict", progress=False).fit()
    assert (out / "samples" / "final.png").is_file()
    pipe = diffusa.load(out)
    res = pipe(n=4, steps=2, label=3)
    assert torch.isfinite(res.samples).all() and res.settings["nfe"] == 2
    assert pipe(n=4, steps=1, label=3, guidance_scale=2.0).settings["nfe"] == 1
    den = pipe.run.denoiser.derive(clip_x0=None)
    x = torch.rand(4, *pipe.data_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(den(x, den.t_min).x0, x)


def test_resume_is_exact(tmp_path: Path) -> None:
    """Interrupted and resumed while N(k) doubles, consistency training ends with the uninterrupted weights."""
    from diffusa.checkpoint import load_tensors

    def engine(out: Path, resume: bool = False):
        cfg = load_config(overrides=['data.name="moons"', 'process.name="edm"', 'loss.kind="ict"', "train.steps=8",
                                     "train.batch_size=32", "train.checkpoint_every=4", "train.log_every=4",
                                     "train.sample_every=0", "model.net.hidden=16", "model.net.depth=2"])
        return diffusion_engine(cfg, out, resume=resume, progress=False)

    whole = engine(tmp_path / "whole").fit()

    def stop(e) -> None:
        if e.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine(tmp_path / "cut").fit(on_step=stop)
    cut = engine(tmp_path / "cut", resume=True).fit()
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(cut / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(r)["levels"] for r in (p / "log.jsonl").read_text().splitlines()] for p in (whole, cut)]
    assert logs[0] == logs[1] == [(11 + 21 + 41 + 81) / 4, (161 + 321 + 641 + 1281) / 4]  # K' = 1: N doubles a step


def test_refusals_are_one_line(tmp_path: Path, cli) -> None:
    base = ["train", "--data", "moons", "--objective", "ict", "--steps", 2, "--quiet"]
    cases = [
        (("--process", "ddpm"), "lives on EDM's noise levels: train it with --process edm"),
        (("--set", "model.learned_variance=true"), "model.learned_variance does not apply"),
        (("--set", "loss.ict.s0=0"), "loss.ict.s0 must be an integer in [1, 9999], got 0"),
        (("--set", "loss.ict.s0=20", "--set", "loss.ict.s1=10"), "loss.ict.s0 (20) exceeds loss.ict.s1 (10)"),
        (("--set", "loss.ict.p_std=0"), "loss.ict.p_std must be a number > 0"),
        (("--set", 'loss.ict.distance="lpips"'), "unknown loss.ict.distance 'lpips'"),
        (("--set", 'train.sampler="consistency"', "--set", "train.sample_steps=2000"),
         "train.sample_steps 2000 exceeds the 1280 steps"),
        (("--latent", tmp_path / "ae"), "latent space is not supported yet"),
        (("--objective", "magic"), "invalid choice: 'magic'"),
    ]
    for args, msg in cases:
        res = cli(*base, "--out", tmp_path / "run", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res.err
    assert not (tmp_path / "run").exists()
    res = cli(*base, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    res = cli("train", "--resume", "--out", tmp_path / "run", "--objective", "simple")
    assert res.code == 2 and "--objective simple differs from the run's 'ict'" in res.err
