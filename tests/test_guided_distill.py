"""Guided consistency distillation (Meng et al. 2023; Luo et al. 2023, latent consistency models): the student takes
the classifier-free guidance scale w as an input, zero-initialised so that it starts as the teacher; the teacher's
ODE step is classifier-free guided at each example's w; sampling asks the student once per step, inside the range it
was distilled on (docs/distillation.md, "Guided one-step text-to-image")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import diffusa
from diffusa.cond import Cond
from diffusa.consistency import ConsistencyDenoiser, levels_at
from diffusa.errors import DiffusaError
from diffusa.guidance import GuidanceInput, classifier_free
from diffusa.runs import GuidanceRange, load_run
from diffusa.tasks.consistency import (
    DistillConfig,
    consistency_distance,
    distill_engine,
    distill_settings,
    teacher_step,
)

TINY_TEXT = ["model.text.width=16", "model.text.depth=1", "model.text.heads=2", "model.text.max_len=16"]
TEACHERS = {"text": ['model.conditioning="text"', *TINY_TEXT], "class": ['model.conditioning="class"']}
PROMPT = "a handwritten 7"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny text- and a tiny class-conditional U-Net (8 channels) trained 4 steps on 8x8 digits, their weights
    then jittered (N(0, 0.05^2) added) so that the condition moves the output, as it would after real training
    (read-only)."""
    from conftest import DIGITS_OVERRIDES, train_run
    from safetensors.torch import save_file

    from diffusa.checkpoint import load_tensors

    root = tmp_path_factory.mktemp("guided-teachers")
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, extra in TEACHERS.items():
        out[name] = train_run(root / name, [*DIGITS_OVERRIDES, *extra, "train.steps=4", "train.checkpoint_every=0"])
        weights = load_tensors(out[name] / "model.safetensors")
        save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                   for k, v in weights.items()}, out[name] / "model.safetensors")
    return out


def settings(steps: int = 3):
    s = distill_settings(steps=steps, batch_size=16)
    s.sample_n = 4
    return s


def engine(teacher: Path, out: Path, steps: int = 3, guidance: tuple[float, float] = (1.0, 5.0), **kw):
    return distill_engine(teacher, out, settings(steps), DistillConfig(levels=6, guidance_range=guidance),
                          progress=False, **kw)


def conditioning(run, n: int) -> Cond:
    if run.is_text:
        return run.net.tokenize([PROMPT] * n)
    return Cond(labels=torch.full((n,), 7))


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_student_starts_as_the_teacher(teachers: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """Zero-initialised, the guidance embedding adds exactly 0: at every w the student's network is the teacher's
    conditional network, bit for bit, and so is its consistency function."""
    task = engine(teachers[kind], tmp_path / "student").task
    teacher = load_run(teachers[kind])
    own, theirs = task.model.state_dict(), teacher.net.state_dict()
    new = sorted(set(own) - set(theirs))
    assert new and all("guidance_emb" in k.split(".") for k in new) and set(theirs) <= set(own)
    assert all(torch.equal(own[k], theirs[k]) for k in theirs)
    student_net = task.model.eval()
    g = torch.Generator().manual_seed(0)
    x, c_noise = torch.randn(6, 1, 8, 8, generator=g), torch.rand(6, generator=g) * 1000
    cond = conditioning(teacher, 6)
    with torch.no_grad():
        want = teacher.net(x, c_noise, cond)
        for w in (0.0, 1.0, 3.0, 5.0, 12.0):
            got = student_net(x, c_noise, cond.replace(guidance=torch.full((6,), w)))
            assert torch.equal(got, want), (w, float((got - want).abs().max()))
        # the consistency function the student is read as, against the teacher's conditional denoiser's
        t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
        xt = teacher.denoiser.process.q_sample(x, t, torch.randn(x.shape, generator=g))
        f_teacher = ConsistencyDenoiser.from_table(teacher.denoiser, task.consistency_table())(xt, t, cond).x0
        for student in (task.ema_denoiser, GuidanceInput(task.ema_denoiser.base, 4.0)):  # at w = 3 (default), 4
            assert torch.equal(student(xt, t, cond).x0, f_teacher)


def test_w_reaches_the_network(teachers: dict[str, Path], tmp_path: Path) -> None:
    """Once the embedding is not zero, w changes the output; trained 3 steps, the student's embedding is not zero."""
    out = engine(teachers["text"], tmp_path / "student").fit()
    pipe = diffusa.load(out)
    unet = pipe.run.net.unet
    assert float(unet.guidance_emb[2].weight.detach().abs().max()) > 0
    g = torch.Generator().manual_seed(0)
    x, c_noise = torch.randn(4, 1, 8, 8, generator=g), torch.full((4,), 500.0)
    cond = conditioning(pipe.run, 4)
    with torch.no_grad():
        outs = [pipe.run.net(x, c_noise, cond.replace(guidance=torch.full((4,), w))) for w in (1.0, 3.0, 5.0)]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    a, b = (pipe(PROMPT, n=4, steps=1, guidance_scale=w, seed=1).samples for w in (1.5, 4.5))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match=r"give cond\.guidance"):  # the network never runs without a w
        pipe.run.net(x, c_noise, cond)


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_teacher_target_is_classifier_free_guidance_at_each_w(teachers: dict[str, Path], tmp_path: Path,
                                                              kind: str) -> None:
    """The task's loss equals, example by example, distillation against guidance.py's classifier-free guided
    teacher at that example's drawn w (one batched cond + uncond call)."""
    eng = engine(teachers[kind], tmp_path / "student")
    task = eng.task
    teacher = load_run(teachers[kind])
    idx = torch.arange(8)
    x = task.data.get(idx)
    got = task.loss(idx, x, torch.Generator().manual_seed(3)).losses
    # the same draws, in the task's order: level, noise, conditioning (dropped captions / labels included), w
    g = torch.Generator().manual_seed(3)
    levels = levels_at(0, task.settings.steps, 6, None)
    times = task.times(levels, x.device)
    n = torch.randint(0, levels - 1, (8,), generator=g)
    z = torch.randn(x.shape, generator=g)
    cond = task.conditioner.training(idx, g, x.device, x)
    w = task.config.guidance.sample(8, g)
    assert 1 <= float(w.min()) and float(w.max()) <= 5 and float(w.std()) > 0
    cond = cond.replace(guidance=w)
    x_hi = teacher.denoiser.process.q_sample(x, times[n + 1], z)
    want = []
    with torch.no_grad():
        for i in range(8):  # the teacher guided at w_i (its network takes no w); the student and target given w_i
            one = slice(i, i + 1)
            guided = classifier_free(teacher.denoiser, float(w[i]), teacher.null_cond())
            x_lo = teacher_step(guided, x_hi[one], times, n[one], cond[one].replace(guidance=None))
            goal = task.target(x_lo, times[n[one]], cond[one]).x0
            want.append(consistency_distance(task.student(x_hi[one], times[n[one] + 1], cond[one]).x0, goal))
    want = torch.cat(want)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (got, want)
    # the teacher's step itself: per-example guidance in one batch = guidance.py at each w, example by example
    with torch.no_grad():
        batched = teacher_step(task.guided_teacher, x_hi, times, n, cond)
        single = torch.cat([teacher_step(classifier_free(teacher.denoiser, float(w[i]), teacher.null_cond()),
                                         x_hi[i:i + 1], times, n[i:i + 1], cond[i:i + 1].replace(guidance=None))
                            for i in range(8)])
        unguided = teacher_step(teacher.denoiser, x_hi, times, n, cond.replace(guidance=None))
    scale = float(batched.abs().max())  # up to sigma_max 80 times the data: float32 rounding of other batchings
    assert torch.allclose(batched, single, rtol=1e-5, atol=1e-6 * scale), (float((batched - single).abs().max()),
                                                                           scale)
    assert float((batched - unguided).abs().max()) > 1e3 * float((batched - single).abs().max())  # w moves the step


def test_one_network_call_per_step(teachers: dict[str, Path], tmp_path: Path) -> None:
    """A guided student at w: each step is one call of n examples (a guided teacher's is one call of 2n)."""
    out = engine(teachers["text"], tmp_path / "student").fit()
    student, teacher = diffusa.load(out), diffusa.load(teachers["text"])

    def batches(pipe, **kw) -> tuple[list[int], dict]:
        seen: list[int] = []
        handle = pipe.run.net.register_forward_hook(lambda m, args, res: seen.append(args[0].shape[0]))
        try:
            res = pipe(PROMPT, n=4, **kw)
        finally:
            handle.remove()
        return seen, res.settings

    for steps in (1, 2, 4):
        seen, s = batches(student, steps=steps, guidance_scale=3.0)
        assert seen == [4] * steps and s["nfe"] == steps and s["guidance_scale"] == 3.0
    seen, s = batches(teacher, sampler="ddim", steps=2, guidance_scale=3.0)
    assert seen == [8, 8] and s["nfe"] == 2  # classifier-free guidance: both branches in one batched call
    seen, s = batches(student)  # the defaults: one consistency step at the recorded default w
    assert seen == [4] and s["guidance_scale"] == 3.0 and s["sampler"] == "consistency"


def test_range_default_and_refusals(teachers: dict[str, Path], moons_run: Path, digits_run: Path, tmp_path: Path,
                                    cli) -> None:
    out = engine(teachers["class"], tmp_path / "student", steps=2, guidance=(2.0, 6.0)).fit()
    meta = json.loads((out / "config.json").read_text())
    assert meta["guidance"] == {"min": 2.0, "max": 6.0, "default": 3.0}
    assert meta["distill"]["guidance_range"] == [2.0, 6.0] and meta["network"]["config"]["guidance_embed"] is True
    pipe = diffusa.load(out)
    assert pipe(n=2, label=3).settings["guidance_scale"] == 3.0  # none given: the recorded default
    assert pipe(n=2, label=3, guidance_scale=6).settings["guidance_scale"] == 6.0  # the ends are inside
    assert pipe(n=2).settings["nfe"] == 1  # an unconditional draw (the null label) still gives the network a w
    for w in (1.0, 6.5, 100):
        with pytest.raises(DiffusaError, match=rf"^guidance_scale {w:g} is outside 2..6, the guidance scales this "
                                               r"student was distilled on; give one inside \(default 3\)$"):
            pipe(n=2, label=3, guidance_scale=w)
    res = cli("sample", out, "--label", 3, "--guidance-scale", 9, "--n", 2, "--out", tmp_path / "s.png")
    assert res.code == 2 and "guidance_scale 9 is outside 2..6" in res.err and len(res.err.strip().splitlines()) == 1
    text = engine(teachers["text"], tmp_path / "text", steps=1, guidance=(4.0, 8.0)).fit()
    res = cli("generate", PROMPT, "--model", text, "--steps", 1, "--guidance-scale", 3, "--n", 2, "--out",
              tmp_path / "g.png")
    assert res.code == 2 and res.err.count("\n") == 1 and "guidance_scale 3 is outside 4..8" in res.err, res.err
    res = cli("generate", PROMPT, "--model", text, "--steps", 1, "--n", 2, "--out", tmp_path / "g.png")
    assert res.code == 0 and "guidance 4," in res.out, res.err  # the default 3 clamped into 4..8
    assert GuidanceRange.of((1, 2)).default == 2 and GuidanceRange.of((1, 5)).default == 3
    with pytest.raises(DiffusaError, match="the file is damaged"):
        GuidanceRange.from_table({"min": 5, "max": 1, "default": 3}, "x/config.json")
    cases = [
        (("--teacher", teachers["class"], "--guidance-range", "5,1"), "--guidance-range must be 0 <= W_MIN <= W_MAX"),
        (("--teacher", teachers["class"], "--guidance-range", "1"), "expected two guidance scales W_MIN,W_MAX"),
        (("--teacher", teachers["class"], "--guidance-range", "1,nan"), "--guidance-range must be a finite number"),
        (("--teacher", moons_run, "--guidance-range", "1,5"), "network 'mlp' cannot take the guidance scale"),
        (("--teacher", digits_run, "--guidance-range", "1,5"), "needs a class- or text-conditional teacher"),
        (("--teacher", moons_run, "--method", "reflow", "--guidance-range", "1,5"), "does not apply to --method "
                                                                                    "reflow"),
        (("--resume", "--guidance-range", "1,5"), "drop --guidance-range"),
    ]
    for args, msg in cases:
        res = cli("distill", "--out", tmp_path / "refused", "--steps", 1, "--quiet", *args)
        assert res.code == 2 and msg in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res.err
    assert not (tmp_path / "refused").exists()


def test_resume_is_exact(teachers: dict[str, Path], tmp_path: Path) -> None:
    """Interrupted and resumed, a guided distillation ends with the uninterrupted one's weights, bit for bit."""
    from diffusa.checkpoint import load_tensors

    def make(out: Path, **kw):
        eng = engine(teachers["text"], out, steps=8, **kw)
        eng.cfg.checkpoint_every = 4
        return eng

    whole = make(tmp_path / "whole").fit()

    def stop(eng) -> None:
        if eng.step == 5:  # Ctrl-C between checkpoints: the engine saves one at step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "cut").fit(on_step=stop)
    cut = make(tmp_path / "cut", resume=True).fit()
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("guidance_emb" in k for k in a)
    with pytest.raises(DiffusaError, match="other settings"):
        engine(teachers["text"], tmp_path / "cut", steps=8, guidance=(1.0, 4.0), resume=True)


def test_a_diffusion_run_refuses_the_guidance_input(tmp_path: Path) -> None:
    """model.net.guidance_embed is a guided student's: a diffusion run (or a fine-tune from such a student) with it
    is one line before anything trains, not a traceback at the first step."""
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    cfg = load_config(overrides=['data.name="digits"', "train.steps=1", "model.net.channels=8",
                                 "model.net.guidance_embed=true"])
    with pytest.raises(DiffusaError, match=r"model\.net\.guidance_embed: only a guided consistency student"):
        diffusion_engine(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
