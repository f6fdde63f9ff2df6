"""Rectified flow (Liu et al. 2022): straightness against closed forms (zero for a deterministic affine coupling, the
Gaussian's integral, the same number on every process), the reflow coupling's marginals, reflow of a moons flow
straightening it and improving one Euler step, exact resume from the stored pairs, every kind of teacher, and the
CLI's refusals (docs/distillation.md, "Rectified flow")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_mixture_oracle import FLOOR, N, ed_to_real_set
from test_sde_ode import gaussian_denoiser, mixture_denoiser

import diffusa
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.metrics import energy_distance
from diffusa.prediction import Denoiser
from diffusa.process import EDM, VE, VP, DiscreteDDPM, Flow
from diffusa.reflow import reflow_pairs, straightness
from diffusa.samplers import sample
from diffusa.tasks.reflow import ReflowConfig, reflow_engine, reflow_settings

F64 = torch.float64
A = torch.tensor([[1.5, 0.3], [-0.2, 0.8]], dtype=F64)
B = torch.tensor([0.7, -1.0], dtype=F64)


def affine_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact flow velocity of the deterministic coupling x_data = A z + b in diffusa's time: x_t = (1 - t)(A z +
    b) + t z, so z = ((1 - t) A + t I)^-1 (x_t - (1 - t) b) and dx/dt = z - (A z + b), constant along each path."""
    t = t.reshape(-1, 1)
    m = (1 - t)[:, :, None] * A + t[:, :, None] * torch.eye(2, dtype=F64)
    z = torch.linalg.solve(m.expand(x.shape[0], 2, 2), (x - (1 - t) * B).unsqueeze(-1)).squeeze(-1)
    return z - (z @ A.T + B)


def test_straightness_is_zero_for_a_deterministic_affine_coupling() -> None:
    den = Denoiser.from_function(affine_velocity, Flow(), "velocity")
    s = straightness(den, (2,), 2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert 0 <= s < 1e-24, s  # measured 4.5e-29: zero up to float64 rounding
    # and one Euler step is the coupling itself
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = sample(den, (500, 2), "euler", 1, x_T=z)
    assert torch.allclose(x, z @ A.T + B, rtol=0, atol=1e-12)


def test_straightness_of_gaussian_data_matches_its_closed_form() -> None:
    """Data N(mu, sd^2) per coordinate: the flow's paths are x_t = (1 - t) mu + z r(t), r = sqrt((1 - t)^2 sd^2 + t^2),
    so S = int_0^1 (((1 - t) sd^2 - t) / r(t) + 1 - sd)^2 dt per coordinate (1 - pi / 4 for sd = 0.5); the estimate
    is the same on every process (their ODEs are one ODE in the flow's time)."""
    mu, sd = torch.tensor([0.5, -0.3], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    t = torch.linspace(0, 1, 1_000_001, dtype=F64)[:, None]
    dev = ((1 - t) * sd**2 - t) / ((1 - t) ** 2 * sd**2 + t**2).sqrt() + 1 - sd
    per_coord = torch.trapezoid(dev**2, t[:, 0], dim=0)
    assert float(per_coord[0]) == pytest.approx(1 - math.pi / 4, abs=1e-9)
    exact = float(per_coord.sum())
    for proc in (Flow(), VP(), EDM()):
        s = straightness(gaussian_denoiser(proc, mu, sd), (2,), 20_000, generator=torch.Generator().manual_seed(0),
                         dtype=F64)
        # Monte Carlo: relative std about sqrt(2 / n) = 1%; measured 0.996 .. 0.997 of the closed form
        assert s == pytest.approx(exact, rel=0.03), (proc.name, s, exact)


def test_straightness_of_the_independent_coupling_of_a_mixture() -> None:
    s_flow = straightness(mixture_denoiser(Flow()), (2,), 4000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert s_flow > 1.0, s_flow  # measured 1.346: far from straight
    # any process's ODE read in the flow's time is the same ODE (measured within 0.2%)
    for proc in (DiscreteDDPM("cosine", 1000), VP(), VE(), EDM()):
        s = straightness(mixture_denoiser(proc), (2,), 4000, generator=torch.Generator().manual_seed(0), dtype=F64)
        assert s == pytest.approx(s_flow, rel=0.01), (proc.name, s, s_flow)


@pytest.mark.parametrize("proc", [VP(), EDM()], ids=["vp", "edm"])
def test_reflow_pairs_keep_the_marginals_of_the_exact_mixture(proc) -> None:
    pairs = reflow_pairs(mixture_denoiser(proc), (2,), N, "rk4", 25, generator=torch.Generator().manual_seed(0))
    z, x = pairs["noise"].double(), pairs["sample"].double()
    assert z.shape == x.shape == (N, 2)
    mc = 4 / math.sqrt(N)  # four standard errors
    assert (z.mean(0).abs() < mc).all() and ((z.std(0) - 1).abs() < mc / math.sqrt(2)).all()
    assert abs(float(torch.corrcoef(z.T)[0, 1])) < mc
    ed = ed_to_real_set(x)
    assert ed < 2 * FLOOR, (ed, FLOOR)  # the sample end is the mixture: measured 1.3x FLOOR (vp, edm)


def test_reflow_pairs_keep_the_teachers_marginals(moons_run: Path) -> None:
    pipe = diffusa.load(moons_run)
    n = 2000
    pairs = reflow_pairs(pipe.run.denoiser, (2,), n, "rk4", 25, generator=torch.Generator().manual_seed(0))
    z = pairs["noise"].double()
    mc = 4 / math.sqrt(n)
    assert (z.mean(0).abs() < mc).all() and ((z.std(0) - 1).abs() < mc / math.sqrt(2)).all()
    own = pipe(n=n, sampler="rk4", steps=25, seed=1).samples  # the teacher's own draw, other noise
    ed = energy_distance(pairs["sample"], own)
    # two draws of one law: E[ED] = 2 E|Y - Y'| / n ~ 0.002 here, scattering by tens of percent; measured 0.0037
    assert ed < 0.006, ed


def train_flow(out: Path, steps: int = 300) -> Path:
    from conftest import MOONS_OVERRIDES, train_run

    return train_run(out, [*MOONS_OVERRIDES, 'process.name="flow"', f"train.steps={steps}"])


def test_reflow_straightens_moons_and_improves_one_euler_step(tmp_path: Path, cli) -> None:
    teacher = train_flow(tmp_path / "rf1")  # the 1-rectified flow: trained from data, 300 steps
    out = tmp_path / "rf2"
    res = cli("distill", "--teacher", teacher, "--method", "reflow", "--out", out, "--steps", 300, "--quiet")
    assert res.code == 0, res.err
    meta = json.loads((out / "config.json").read_text())
    assert meta["process"] == {"name": "flow"} and meta["config"]["model"]["prediction"] == "velocity"
    assert meta["distill"] == {"method": "reflow", "teacher": str(teacher), "teacher_process": {"name": "flow"},
                               "k": 2, "seed": 0, "start": "teacher", "pairs": 10_000, "solver": "rk4",
                               "ode_steps": 25, "init": "auto"}
    from diffusa.checkpoint import load_tensors_and_metadata

    tensors, header = load_tensors_and_metadata(out / "pairs.safetensors")  # safetensors, never pickle
    assert tensors["noise"].shape == tensors["sample"].shape == (10_000, 2) and header["teacher"] == str(teacher)
    ref = load_dataset("moons", "test").x[:2000]
    s, ed = {}, {}
    for k, run in ((1, teacher), (2, out)):
        pipe = diffusa.load(run)
        s[k] = straightness(pipe.run.denoiser, (2,), 2000, generator=torch.Generator().manual_seed(0))
        one = pipe(n=2000, sampler="euler", steps=1, seed=1)
        assert one.settings["nfe"] == 1
        ed[k] = energy_distance(one.samples, ref)
    # measured: S 1.076 -> 0.0046 (ratio 0.004); one Euler step 0.81 -> 0.010 (floor 0.0012)
    assert s[2] < 0.05 * s[1], s
    assert ed[2] < ed[1] / 10 and ed[2] < 0.05, ed
    res = cli("straightness", out, "--n", 500)
    got = json.loads(res.out)
    assert res.code == 0 and got["reflow_k"] == 2 and got["process"] == "flow" and got["straightness"] < 0.05 * s[1]
    res = cli("sample", out, "--sampler", "ode_euler", "--steps", 1, "--n", 8, "--out", tmp_path / "one.npz")
    assert res.code == 0 and res.err == "", res.err
    # the 2-rectified flow is an ordinary run: a diffusion `train --resume` is refused, a further reflow is k = 3
    res = cli("train", "--resume", "--out", out)
    assert res.code == 2 and "is a distilled student" in res.err, res.err
    engine = reflow_engine(out, tmp_path / "rf3", reflow_settings(steps=2), ReflowConfig(pairs=64, ode_steps=2),
                           progress=False)
    assert engine.task.k == 3 and engine.task.start == "teacher"
    res = cli("distill", "--teacher", out, "--method", "cd", "--out", tmp_path / "cm", "--steps", 2, "--quiet")
    assert res.code == 0, res.err  # and a consistency student of it


def test_distilling_a_flow_to_k_euler_steps(tmp_path: Path, cli) -> None:
    """Liu et al. 2022, Sec. 2.3: the flow's loss on its own pairs at the K times of K-step Euler's grid only."""
    teacher = train_flow(tmp_path / "rf1")
    out = tmp_path / "one"
    res = cli("distill", "--teacher", teacher, "--method", "reflow", "--distill-steps", 1, "--pairs", 4000,
              "--out", out, "--steps", 300, "--quiet")
    assert res.code == 0, res.err
    assert "a 1-step distillation of the 1-rectified flow" in res.out and "--sampler euler --steps 1 " in res.out
    meta = json.loads((out / "config.json").read_text())
    assert meta["distill"]["distill_steps"] == 1 and meta["distill"]["k"] == 1  # distilling does not reflow
    assert meta["sampling"]["sampler"] == "euler" and meta["sampling"]["steps"] == 1
    pairs = load_tensor_file(out / "pairs.safetensors")
    z, x = pairs["noise"][:2000], pairs["sample"][:2000]
    ref = pairs["sample"][2000:]  # the teacher's law in its model space, other pairs
    err, ed = {}, {}
    for name, run in (("teacher", teacher), ("student", out)):
        den = diffusa.load(run).run.denoiser
        one = sample(den, (2000, 2), "euler", 1, x_T=z)  # one Euler step from the pairs' noise
        err[name] = float(((one - x) ** 2).sum(1).mean())
        ed[name] = float(energy_distance(one, ref))
    # measured: one Euler step from a pair's noise lands 0.0017 from its sample in mean squared distance (the
    # teacher's own one step: 2.72); energy distance to the teacher's law 0.0022 (the teacher's one step: 0.79)
    assert err["student"] < 0.01 * err["teacher"], err
    assert ed["student"] < 0.02 * ed["teacher"], ed
    pipe = diffusa.load(out)
    drawn = pipe(n=16, seed=3)  # the recommendation: one Euler step
    assert drawn.settings["sampler"] == "euler" and drawn.settings["nfe"] == 1
    # K = 2: the loss sees t only at 1 and 1/2
    mine = reflow_settings(steps=1)
    two = reflow_engine(teacher, tmp_path / "two", mine, ReflowConfig(pairs=64, ode_steps=2, distill_steps=2),
                        progress=False)
    assert mine.sample_steps == reflow_settings(steps=1).sample_steps  # the caller's settings are not changed
    idx = torch.arange(64)
    got = two.task.loss(idx, two.task.pairs["sample"][idx], torch.Generator().manual_seed(0)).extra
    assert set(got.tolist()) == {0.5, 1.0} and two.task.k == 1, got
    res = cli("distill", "--teacher", teacher, "--method", "reflow", "--distill-steps", -1, "--out", tmp_path / "bad")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res.err


def test_resume_is_exact_and_reads_the_stored_pairs(moons_run: Path, tmp_path: Path, monkeypatch) -> None:
    from diffusa.checkpoint import load_tensors

    config = ReflowConfig(pairs=512, ode_steps=4)

    def settings():
        s = reflow_settings(steps=8, batch_size=64)
        s.checkpoint_every, s.log_every = 4, 4
        return s

    whole = reflow_engine(moons_run, tmp_path / "whole", settings(), config, progress=False).fit()
    meta = json.loads((whole / "config.json").read_text())
    assert meta["distill"]["start"] == "fresh" and meta["distill"]["teacher_process"]["name"] == "ddpm"

    def stop(engine) -> None:
        if engine.step == 5:  # Ctrl-C between checkpoints: the engine saves one at step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reflow_engine(moons_run, tmp_path / "cut", settings(), config, progress=False).fit(on_step=stop)

    def solve_again(*args, **kwargs):
        raise AssertionError("a resumed reflow solved the teacher's ODE again")

    monkeypatch.setattr("diffusa.tasks.reflow.reflow_pairs", solve_again)
    cut = reflow_engine(moons_run, tmp_path / "cut", settings(), config, resume=True, progress=False).fit()
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(cut / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DiffusaError, match="other settings"):
        reflow_engine(moons_run, tmp_path / "cut", settings(), ReflowConfig(pairs=512, ode_steps=5), resume=True,
                      progress=False)


TEACHERS = {  # any run is a teacher: process, parameterization, class conditioning
    "edm": ['data.name="moons"', 'process.name="edm"', "model.net.hidden=32", "model.net.depth=2"],
    "vp-x0": ['data.name="moons"', 'process.name="vp"', 'model.prediction="x0"', "model.net.hidden=32",
              "model.net.depth=2"],
    "digits-class": ['data.name="digits"', 'model.conditioning="class"', "model.net.channels=8",
                     "train.batch_size=16"],
    "flow-standardized": ['data.name="moons"', 'data.standardize="on"', 'process.name="flow"', "model.net.hidden=32",
                          "model.net.depth=2"],
}


@pytest.mark.parametrize("name", list(TEACHERS))
def test_every_kind_of_teacher_reflows(name: str, tmp_path: Path) -> None:
    from conftest import train_run

    teacher = train_run(tmp_path / "teacher", [*TEACHERS[name], "train.steps=10", "train.warmup=2",
                                               "train.sample_every=0", "train.checkpoint_every=0"])
    settings = reflow_settings(steps=4, batch_size=16)
    settings.sample_n = 16
    out = reflow_engine(teacher, tmp_path / "student", settings, ReflowConfig(pairs=48, ode_steps=2, solver="heun"),
                        progress=False).fit()
    pipe = diffusa.load(out)
    label = {"label": 3} if "class" in name else {}
    res = pipe(n=4, sampler="euler", steps=1, **label)
    assert torch.isfinite(res.samples).all() and res.settings["nfe"] == 1
    pairs = load_tensor_file(out / "pairs.safetensors")
    assert ("labels" in pairs) == ("class" in name)
    meta, base = (json.loads((p / "config.json").read_text()) for p in (out, teacher))
    # the teacher's data settings and statistics: samples come back in the data's units, as the teacher's do
    assert meta.get("standardize") == base.get("standardize") and meta["config"]["data"] == base["config"]["data"]
    assert meta["distill"]["start"] == ("teacher" if name.startswith("flow") else "fresh")
    s = straightness(pipe.run.denoiser, pipe.data_shape, 8, 10, label=3 if "class" in name else None)
    assert math.isfinite(s) and s >= 0


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    from diffusa.checkpoint import load_tensors

    return load_tensors(path)


def test_cli_refusals_are_one_line(moons_run: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "empty").mkdir()
    latent = tmp_path / "latent"  # a latent teacher: its config.json names an autoencoder
    latent.mkdir()
    meta = json.loads((moons_run / "config.json").read_text())
    meta["latent"] = {"autoencoder": "ae", "scale_factor": 1.0}
    (latent / "config.json").write_text(json.dumps(meta))
    student = tmp_path / "cm"  # a consistency model (`diffusa distill --method cd`): its config.json says so
    student.mkdir()
    meta = json.loads((moons_run / "config.json").read_text())
    meta["consistency"] = {"t_min": 1e-3, "sigma_min": 0.002, "sigma_max": 80.0, "levels": 18}
    (student / "config.json").write_text(json.dumps(meta))
    (student / "model.safetensors").write_bytes((moons_run / "model.safetensors").read_bytes())
    cases = [
        (("--teacher", tmp_path / "empty"), "is not a diffusa run: config.json is missing"),
        (("--teacher", tmp_path / "nowhere"), "does not exist"),
        (("--teacher", moons_run, "--pairs", 0), "argument --pairs: expected a positive integer, got 0"),
        (("--teacher", moons_run, "--ode-steps", 0), "argument --ode-steps: expected a positive integer, got 0"),
        (("--teacher", latent), "reflow in a latent space is not supported yet"),
        (("--teacher", moons_run, "--levels", 5), "--levels does not apply to --method reflow"),
        (("--teacher", moons_run, "--ode-steps", 20_000), "--ode-steps must be an integer in [1, 10000]"),
        (("--teacher", student), "is a consistency model: it has no probability-flow ODE"),
        (("--resume", "--pairs", 5), "drop --method, --pairs"),
    ]
    for args, msg in cases:
        res = cli("distill", "--method", "reflow", "--out", tmp_path / "student", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res.err
    res = cli("distill", "--teacher", moons_run, "--fresh", "--out", tmp_path / "student")  # cd is the default
    assert res.code == 2 and "--fresh does not apply to --method cd" in res.err, res.err
    for args, msg in (((moons_run, "--label", 3), "needs a class-conditional run"),
                      ((tmp_path / "empty",), "is not a diffusa run"),
                      ((student,), "has no probability-flow ODE whose straightness")):
        res = cli("straightness", *args, "--n", 10)
        assert res.code == 2 and msg in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "student").exists()
