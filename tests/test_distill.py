"""Consistency distillation (Song et al. 2023): the boundary condition, the loss against the Gaussian oracle's exact
consistency function, one-step sampling of that function, a short distillation of the moons run, the CLI's
refusals (docs/distillation.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import diffusa
from diffusa.consistency import ConsistencyDenoiser, consistency_scalings, level_times, levels_at
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.metrics import energy_distance
from diffusa.prediction import Denoiser
from diffusa.process import EDM, VP, DiscreteDDPM, Flow, Process, expand_as
from diffusa.samplers import default_karras_grid, make_grid, sample
from diffusa.tasks.consistency import DistillConfig, distill_engine, distill_settings, distillation_loss

F64 = torch.float64
MU = torch.tensor([0.7, -1.2], dtype=F64)
SD = torch.tensor([0.5, 1.5], dtype=F64)
PROCS: dict[str, Process] = {"edm": EDM(), "vp": VP(), "ddpm": DiscreteDDPM("cosine", 1000), "flow": Flow()}


def gaussian_denoiser(proc: Process) -> Denoiser:
    """The exact denoiser of data N(MU, diag(SD^2)): E[x0 | x_t] (DESIGN.md's oracle)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (expand_as(v, x) for v in proc.alpha_sigma(t))
        return MU + SD**2 * a * (x - a * MU) / (a**2 * SD**2 + s**2)

    return Denoiser.from_function(fn, proc, "x0")


def gaussian_consistency(proc: Process) -> Denoiser:
    """The exact consistency function of the same data: along the probability-flow ODE (x_hat - MU) / sqrt(SD^2 +
    sh^2) is constant in the scaled variables, so f(x, t) = MU + SD / sqrt(SD^2 + sh^2) (x_hat - MU)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = (expand_as(v, x) for v in proc.alpha_sigma(t))
        return MU + SD / (SD**2 + (s / a) ** 2).sqrt() * (x / a - MU)

    return Denoiser.from_function(fn, proc, "x0")


def training_range(den: Denoiser) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the distillation's grid: the default Karras range (as ConsistencyTask takes it)."""
    a, s = den.process.alpha_sigma(default_karras_grid(den, 2)[:2])
    hi, lo = (s / a).tolist()
    return lo, hi


@pytest.mark.parametrize("pname", list(PROCS))
def test_boundary_condition_is_exact(pname: str) -> None:
    proc = PROCS[pname]

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # any network: a nonlinear eps
        return torch.sin(3 * x) + expand_as(t, x).float()

    base = Denoiser.from_function(eps_fn, proc, "eps")
    lo, hi = training_range(base)
    t_min = float(level_times(proc, 18, lo, hi)[0])
    f = ConsistencyDenoiser(base, t_min, lo, hi, 18)
    x = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for t in (t_min, t_min / 2):  # at and below the boundary f(x, t) = x_hat = x / alpha(t), bit for bit
        a, _ = proc.alpha_sigma(torch.full((64,), t, dtype=F64))
        assert torch.equal(f(x, t).x0, x / expand_as(a, x)), (pname, t)
    if pname == "edm":  # alpha = 1: f(x, t_min) is x itself
        assert torch.equal(f(x, t_min).x0, x)
    c_skip, c_out = consistency_scalings(torch.tensor([lo, hi], dtype=F64), lo, 0.5)
    assert c_skip[0] == 1 and c_out[0] == 0
    # far from the boundary f is the network's denoiser (c_skip, c_out ~ EDM's): a student starts at its teacher
    t_max = float(level_times(proc, 18, lo, hi)[-1])
    # (f - D = (c_skip - r c_skip_edm) x_hat + (r - 1) D with r - 1 = -sh_min / sh = -2.5e-5 at the top)
    assert torch.allclose(f(x, t_max).x0, base(x, t_max).x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pname", list(PROCS))
def test_loss_of_the_exact_consistency_function_is_the_solver_error(pname: str) -> None:
    proc = PROCS[pname]
    teacher, f = gaussian_denoiser(proc), gaussian_consistency(proc)
    times = level_times(proc, 18, *training_range(teacher))
    g = torch.Generator().manual_seed(0)
    x0 = MU + SD * torch.randn(4000, 2, generator=g, dtype=F64)
    n = torch.randint(0, 17, (4000,), generator=g)
    z = torch.randn(4000, 2, generator=g, dtype=F64)

    def loss(student: Denoiser, solver: str) -> float:
        return float(distillation_loss(student, student, teacher, x0, times, n, z, None, solver).mean())

    # measured: rk4 3e-11 .. 1.2e-8, heun 2.3e-5 .. 2.9e-5, a student that is not consistent (the denoiser) 0.010
    assert loss(f, "rk4") < 1e-7
    assert loss(f, "heun") < 1e-4
    assert loss(teacher, "heun") > 5e-3


@pytest.mark.parametrize("pname", list(PROCS))
def test_exact_consistency_function_samples_the_gaussian_in_one_step(pname: str) -> None:
    proc = PROCS[pname]
    f = gaussian_consistency(proc)
    n = 20_000
    mc = 4 / math.sqrt(n)
    grid = make_grid(f, 1, None, "consistency")
    assert len(grid) == 2 and float(grid[1]) == 0
    # one step: x_hat_T = x_T / alpha_T with x_T ~ N(0, sigma(1)^2), so f gives N(MU (1 - c), (c sigma(1) / alpha_T)^2)
    a_t, s_t = proc.alpha_sigma(grid[0])
    _, s_1 = proc.alpha_sigma(torch.ones((), dtype=F64))
    c = SD / (SD**2 + (s_t / a_t) ** 2).sqrt()
    mean, std = MU * (1 - c), c * s_1 / a_t
    for steps in (1, 2, 4):
        x = sample(f, (n, 2), "consistency", steps, generator=torch.Generator().manual_seed(1)).double()
        if steps == 1:
            assert ((x.mean(0) - mean).abs() < mc * std).all() and ((x.std(0) / std - 1).abs() < mc).all()
        # against N(MU, SD^2): the prior's start (sigma(1), not the top level's marginal) biases the mean by
        # ~MU SD / 80 and the std by up to 1.7% (flow); measured |mean - MU| <= 0.031, |std / SD - 1| <= 0.017
        assert ((x.mean(0) - MU).abs() < 0.05).all(), (pname, steps, x.mean(0))
        assert ((x.std(0) / SD - 1).abs() < 0.03).all(), (pname, steps, x.std(0) / SD)


def test_levels_schedule() -> None:
    assert levels_at(0, 100, 18, None) == levels_at(99, 100, 18, None) == 18
    assert levels_at(0, 100, 18, 2) == 2 and levels_at(100, 100, 18, 2) == 18
    seq = [levels_at(k, 100, 18, 2) for k in range(101)]
    assert seq == sorted(seq)


def test_distil_moons_one_step_beats_the_teacher(moons_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "student"
    res = cli("distill", "--teacher", moons_run, "--method", "cd", "--out", out, "--steps", 300, "--quiet")
    assert res.code == 0, res.err
    meta = json.loads((out / "config.json").read_text())
    assert meta["distill"]["teacher"] == str(moons_run) and meta["consistency"]["levels"] == 18
    ref = load_dataset("moons", "test").x[:2000]  # the teacher's data
    teacher, student = diffusa.load(moons_run), diffusa.load(out)
    assert student.default_sampler == "consistency" and student(n=4).settings["steps"] == 1
    ed_teacher = energy_distance(teacher(n=2000, sampler="ddim", steps=1, seed=1).samples, ref)
    one = student(n=2000, steps=1, seed=1)
    ed_student = energy_distance(one.samples, ref)
    assert one.settings["sampler"] == "consistency" and one.settings["nfe"] == 1
    # measured: teacher 1-step DDIM 0.53, student 1 step 0.014 (the teacher's 20-step DDIM 0.008, floor 0.002)
    assert ed_student < ed_teacher / 10 and ed_student < 0.05, (ed_student, ed_teacher)
    assert student(n=8, steps=17).settings["nfe"] == 17
    with pytest.raises(DiffusaError, match="steps 18 exceeds the 17 steps of this consistency model"):
        student(n=8, steps=18)
    # the loaded student keeps the boundary condition exactly (ddpm: alpha(t_min) < 1)
    den = student.run.denoiser
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    a, _ = den.process.alpha_sigma(torch.tensor(den.t_min, dtype=F64))
    assert float(a) < 1 and torch.equal(den(x, den.t_min).x0, x / expand_as(torch.full((16,), float(a)), x))
    res = cli("sample", out, "--steps", 2, "--n", 8, "--out", tmp_path / "s.npz")
    assert res.code == 0 and res.err == "", res.err
    # a student is neither a teacher nor a diffusion run to resume
    for args, msg in ((("distill", "--teacher", out, "--out", tmp_path / "again"), "is a consistency model already"),
                      (("train", "--resume", "--out", out), "is a distilled student")):
        res = cli(*args)
        assert res.code == 2 and msg in res.err and len(res.err.strip().splitlines()) == 1, res.err


TEACHERS = {  # any run is a teacher: process, parameterization, learned variance, class conditioning
    "edm": ['data.name="moons"', 'process.name="edm"', "model.net.hidden=32", "model.net.depth=2"],
    "flow": ['data.name="moons"', 'process.name="flow"', "model.net.hidden=32", "model.net.depth=2"],
    "vp-x0": ['data.name="moons"', 'process.name="vp"', 'model.prediction="x0"', "model.net.hidden=32",
              "model.net.depth=2"],
    "digits-class": ['data.name="digits"', 'model.conditioning="class"', "model.net.channels=8",
                     "train.batch_size=16"],
    "digits-learned-variance": ['data.name="digits"', "model.learned_variance=true", 'loss.kind="hybrid"',
                                "model.net.channels=8", "train.batch_size=16"],
}


@pytest.mark.parametrize("name", list(TEACHERS))
def test_every_kind_of_teacher_distils(name: str, tmp_path: Path) -> None:
    from conftest import train_run

    teacher = train_run(tmp_path / "teacher", [*TEACHERS[name], "train.steps=10", "train.warmup=2",
                                               "train.sample_every=0", "train.checkpoint_every=0"])
    settings = distill_settings(steps=4, batch_size=16)
    settings.sample_n = 16
    out = distill_engine(teacher, tmp_path / "student", settings, DistillConfig(levels=6, distance="pseudo_huber"),
                         progress=False).fit()
    pipe = diffusa.load(out)
    label = {"label": 3} if "class" in name else {}
    res = pipe(n=4, steps=2, **label)
    assert torch.isfinite(res.samples).all() and res.settings["nfe"] == 2
    if "class" in name:  # classifier-free guidance mixes the consistency function's outputs: one batched call
        assert pipe(n=4, steps=1, guidance_scale=2.0, **label).settings["nfe"] == 1
    den = pipe.run.denoiser
    x = torch.randn(4, *pipe.data_shape, generator=torch.Generator().manual_seed(0)) * 0.5
    a, _ = den.process.alpha_sigma(torch.full((4,), den.t_min, dtype=F64))
    assert torch.equal(den.derive(clip_x0=None)(x, den.t_min).x0, x / expand_as(a, x))


def test_resume_is_exact(moons_run: Path, tmp_path: Path) -> None:
    """Interrupted and resumed, with N(k) growing, a distillation ends with the uninterrupted one's weights."""
    from diffusa.checkpoint import load_tensors

    config = DistillConfig(levels=6, levels_start=2)

    def settings():
        s = distill_settings(steps=8, batch_size=32, mu=config.mu)
        s.checkpoint_every, s.log_every = 4, 4
        return s

    whole = distill_engine(moons_run, tmp_path / "whole", settings(), config, progress=False).fit()

    def stop(engine) -> None:
        if engine.step == 5:  # Ctrl-C between checkpoints: the engine saves one at step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_engine(moons_run, tmp_path / "cut", settings(), config, progress=False).fit(on_step=stop)
    cut = distill_engine(moons_run, tmp_path / "cut", settings(), config, resume=True, progress=False).fit()
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(cut / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [(p / "log.jsonl").read_text().splitlines() for p in (whole, cut)]
    assert [json.loads(r)["levels"] for r in logs[0]] == [json.loads(r)["levels"] for r in logs[1]]
    with pytest.raises(DiffusaError, match="other settings"):
        distill_engine(moons_run, tmp_path / "cut", settings(), DistillConfig(levels=7), resume=True, progress=False)


def test_cli_refusals_are_one_line(moons_run: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        (("--teacher", tmp_path / "empty"), "is not a diffusa run: config.json is missing"),
        (("--teacher", tmp_path / "nowhere"), "does not exist"),
        ((), "--teacher RUN is needed"),
        (("--teacher", moons_run, "--method", "ct"), "invalid choice: 'ct'"),
        (("--teacher", moons_run, "--levels", 1), "--levels must be an integer in [2, 10000], got 1"),
        (("--teacher", moons_run, "--levels-start", 30), "--levels-start 30 exceeds --levels 18"),
        (("--teacher", moons_run, "--mu", 1), "--mu must be a number in [0, 1)"),
        (("--resume",), "cannot resume"),
        (("--resume", "--levels", 5), "drop --levels"),
    ]
    for args, msg in cases:
        res = cli("distill", "--out", tmp_path / "student", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res.err
    assert not (tmp_path / "student").exists()
