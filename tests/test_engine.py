"""The one training engine: every task (diffusion, autoencoder, noise-aware classifier) resumes bit-exactly after
an interruption; `--init` starts a new run from exactly another run's weights; a concatenated condition image
reaches the network through the whole training path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from resume_check import interrupt_then_resume, same_checkpoint

from diffusa.autoencoder import AutoencoderConfig
from diffusa.checkpoint import load_json, load_tensors
from diffusa.config import load_config
from diffusa.engine import Engine
from diffusa.engine.loop import lr_at
from diffusa.errors import DiffusaError
from diffusa.tasks.autoencoder import AutoencoderTask, autoencoder_settings
from diffusa.tasks.classifier import ClassifierTask, classifier_settings
from diffusa.train import diffusion_engine

N = 6  # steps before the interruption; every run goes to 2N


AE = AutoencoderConfig(kind="kl", channels=8, channel_mult=(1, 2), latent_channels=2)


def test_autoencoder_resumes_exactly(tmp_path: Path) -> None:
    def make(out: Path) -> Callable[[bool], Engine]:
        return lambda resume: Engine(AutoencoderTask("digits", AE, autoencoder_settings(2 * N, 16, 1e-3, 0)), out,
                                     resume=resume, progress=False)

    make(tmp_path / "whole")(False).fit()
    interrupt_then_resume(make(tmp_path / "resumed"), N)
    same_checkpoint(tmp_path / "whole", tmp_path / "resumed")
    meta = load_json(tmp_path / "resumed" / "config.json")
    assert meta["scale_factor"] > 0 and meta["held_out"]["mse"] > 0  # finished: the loader accepts it
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 * N and {"loss", "mse", "reg", "kl"} <= set(log[-1])


def test_classifier_resumes_exactly(tmp_path: Path, digits_run: Path) -> None:
    def make(out: Path) -> Callable[[bool], Engine]:
        return lambda resume: Engine(ClassifierTask(digits_run, classifier_settings(2 * N, 32)), out, resume=resume,
                                     progress=False)

    make(tmp_path / "whole")(False).fit()
    interrupt_then_resume(make(tmp_path / "resumed"), N)
    same_checkpoint(tmp_path / "whole", tmp_path / "resumed")
    assert set(load_json(tmp_path / "resumed" / "config.json")["held_out_accuracy"]) == {
        "t=0.1", "t=0.3", "t=0.5", "t=0.7", "t=0.9"}


def test_tasks_share_one_folder_layout(tmp_path: Path, digits_run: Path) -> None:
    ae = Engine(AutoencoderTask("digits", AE, autoencoder_settings(2, 16)), tmp_path / "ae", progress=False).fit()
    clf = Engine(ClassifierTask(digits_run, classifier_settings(2, 16)), tmp_path / "clf", progress=False).fit()
    for out in (ae, clf, digits_run):
        for name in ("config.json", "model.safetensors", "train_state.safetensors", "train_state.json",
                     "log.jsonl", "loss.png"):
            assert (out / name).is_file(), (out, name)


def test_learning_rate_schedules_of_the_tasks() -> None:
    """The classifier's cosine from the first step to 0 and the autoencoder's 50-step warm-up then cosine to 5%."""
    clf = classifier_settings(steps=100, lr=1.0)
    assert [lr_at(clf, s) for s in (0, 50)] == pytest.approx([1.0, 0.5])
    ae = autoencoder_settings(steps=150, lr=1.0)
    assert lr_at(ae, 0) == pytest.approx(1 / 50) and lr_at(ae, 49) == pytest.approx(1.0)
    assert lr_at(ae, 100) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_at(ae, 150) == pytest.approx(0.05)


@pytest.mark.parametrize("lr", ["-1", "nan"])
def test_bad_learning_rates_are_one_line(cli, tmp_path: Path, lr: str) -> None:
    r = cli("train-autoencoder", "--data", "digits", "--out", tmp_path / "ae", "--steps", 2, "--lr", lr)
    assert r.code == 2 and "train.lr must be a number in (0, inf)" in r.err and "Traceback" not in r.err


# -- fine-tuning: --init -----------------------------------------------------------------------

DIGITS_TINY = ['data.name="digits"', "train.batch_size=16", "train.sample_every=0", "train.sample_n=4",
               "train.sample_steps=2"]


def test_init_starts_from_exactly_the_base_weights(digits_run: Path, tmp_path: Path) -> None:
    from diffusa.train import init_base

    cfg = load_config(overrides=[*DIGITS_TINY, "train.steps=3"], base=init_base(digits_run))
    engine = diffusion_engine(cfg, tmp_path / "tuned", progress=False, init=digits_run)
    base = load_tensors(digits_run / "model.safetensors")
    for module in (engine.model, engine.ema):
        own = module.state_dict()
        assert set(own) == set(base) and all(torch.equal(own[k], base[k]) for k in base)
    assert engine.step == 0 and not engine.opt.state  # its own, fresh optimizer
    out = engine.fit()
    meta = load_json(out / "config.json")
    assert meta["init"] == {"from": str(digits_run)} and load_json(out / "train_state.json")["step"] == 3
    assert not torch.equal(load_tensors(out / "model.safetensors")["conv_out.weight"], base["conv_out.weight"])


def test_init_from_the_cli_and_an_incompatible_network(cli, digits_run: Path, tmp_path: Path) -> None:
    r = cli("train", "--init", digits_run, "--data", "digits", "--steps", 2, "--out", tmp_path / "ok", "--quiet",
            "--set", "train.sample_n=4", "--set", "train.sample_steps=2")
    assert r.code == 0 and f"from {digits_run}" in r.out, r.err
    r = cli("train", "--init", digits_run, "--data", "digits", "--steps", 2, "--out", tmp_path / "bad", "--quiet",
            "--set", "model.net.channels=16")
    assert r.code == 2 and "does not fit" in r.err and "tensor " in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "bad" / "config.json").exists()
    r = cli("train", "--init", "mnist-pixel", "--data", "digits", "--steps", 2, "--out", tmp_path / "px", "--quiet")
    assert r.code == 2 and "does not fit" in r.err and "tensor " in r.err, r.err
    r = cli("train", "--init", tmp_path / "nowhere", "--data", "digits", "--out", tmp_path / "x", "--quiet")
    assert r.code == 2 and "does not exist" in r.err


def test_init_widens_a_plain_model_into_an_image_conditioned_one(digits_run: Path, tmp_path: Path) -> None:
    """An inpainting (or super-resolution) model from an unconditional one, as Stable Diffusion's inpainting model
    was made: the masked image and mask enter as extra input channels whose weights start at zero, so at step 0 the
    new network is the base, whatever the condition; every other tensor is the base's; training moves the new
    columns."""
    from diffusa.cond import Cond
    from diffusa.train import init_base

    cfg = load_config(overrides=[*DIGITS_TINY, "train.steps=3", "data.inpaint='all'"], base=init_base(digits_run))
    engine = diffusion_engine(cfg, tmp_path / "inpaint", progress=False, init=digits_run)
    base, own = load_tensors(digits_run / "model.safetensors"), engine.model.state_dict()
    assert engine.model.cfg.cond_channels == 2 and set(own) == set(base)
    w = own["conv_in.weight"]
    plain = base["conv_in.weight"].shape[1]
    assert w.shape[1] == 3 * plain and torch.equal(w[:, :plain], base["conv_in.weight"])
    assert not w[:, plain:].any()
    assert all(torch.equal(own[k], v) for k, v in base.items() if k != "conv_in.weight")
    from diffusa.runs import load_run

    plain_net = load_run(digits_run).net
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((4,), 250.0)
    image = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(engine.model(x, t, Cond(image=image)), plain_net(x, t), atol=1e-6)
    out = engine.fit()
    tuned = load_tensors(out / "model.safetensors")["conv_in.weight"]
    assert tuned[:, plain:].any() and engine.model.conv_in.weight[:, plain:].any()  # the condition's columns train
    # an upscaler from the same base, with noise-conditioning augmentation (a level embedding the base lacks, added
    # at zero): at step 0 it is the base too, whatever the condition and its level
    sr = diffusion_engine(load_config(overrides=[*DIGITS_TINY, "data.super_resolution=2"], base=init_base(digits_run)),
                          tmp_path / "sr", progress=False, init=digits_run).model
    assert sr.cfg.cond_channels == 1 and sr.cfg.image_level and not sr.level_emb[2].weight.any()
    low = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(sr(x, t, Cond(image=low, image_level=torch.full((4,), 0.2))), plain_net(x, t), atol=1e-6)
    # only a base without a condition image is widened: an inpainter's two channels do not become an upscaler's one
    sr = load_config(overrides=[*DIGITS_TINY, "data.super_resolution=2"], base=init_base(out))
    with pytest.raises(DiffusaError, match=r"does not fit this one: tensor conv_in\.weight"):
        diffusion_engine(sr, tmp_path / "sr2", progress=False, init=out)


def test_init_from_a_shipped_model_keeps_its_weights(tmp_path: Path) -> None:
    from diffusa.shipped import resolve_model
    from diffusa.train import init_base

    cfg = load_config(overrides=['data.name="mnist5k"', "train.steps=1"], base=init_base("mnist-pixel"))
    engine = diffusion_engine(cfg, tmp_path / "tuned", progress=False, init="mnist-pixel")
    base = load_tensors(resolve_model("mnist-pixel") / "model.safetensors")
    assert all(torch.equal(engine.model.state_dict()[k], v) for k, v in base.items())


def test_init_and_resume_together_are_refused(digits_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffusaError, match="pick one"):
        diffusion_engine(load_config(overrides=DIGITS_TINY, base=load_json(digits_run / "config.json")["config"]),
                         digits_run, resume=True, init=digits_run, progress=False)


# -- a condition image through the whole training path ----------------------------------------


def test_a_concatenated_condition_image_is_learned(tmp_path: Path) -> None:
    """The data are the condition images themselves, flipped: an 8x8 digit x0 = flip(c). Only a model that sees c
    can do better than the data's mean; trained through `diffusa train` on an .npz with `cond_images`, it draws
    flip(c) for held-out c, while the same network trained without the condition cannot."""
    from diffusa.data import load_dataset
    from diffusa.pipelines import load

    digits = load_dataset("digits", "train")
    c = digits.x[:512]
    x0 = torch.flip(c, dims=[-1])
    with_cond, without = tmp_path / "pairs.npz", tmp_path / "plain.npz"
    np.savez(with_cond, x=x0.numpy(), cond_images=c.numpy())
    np.savez(without, x=x0.numpy())
    errors = {}
    for name, data in (("cond", with_cond), ("plain", without)):
        cfg = load_config(overrides=[f'data.name="{data}"', "train.steps=150", "train.batch_size=64",
                                     "train.sample_every=0", "train.checkpoint_every=0", "model.net.channels=16",
                                     "train.lr=2e-3"])
        run = diffusion_engine(cfg, tmp_path / name, progress=False).fit()
        held = load_dataset("digits", "test").x[:64]
        pipe = load(run)
        kwargs = {"image": held} if name == "cond" else {}
        x = pipe(n=64, steps=10, seed=0, **kwargs).samples
        errors[name] = float((x - torch.flip(held, dims=[-1])).square().mean())
    assert load_json(tmp_path / "cond" / "config.json")["network"]["config"]["cond_channels"] == 1
    assert errors["cond"] < 0.5 * errors["plain"], errors


def test_time_limit_stops_with_a_log_record_and_a_checkpoint(tmp_path: Path) -> None:
    """train.max_minutes: the run stops at the first step past the budget, writes that step's record (the window
    is not dropped) and a checkpoint that --resume continues."""
    cfg = load_config(overrides=[*DIGITS_TINY, "train.steps=50", "train.log_every=25", "train.max_minutes=1e-9",
                                 "model.net.channels=8"])
    out = diffusion_engine(cfg, tmp_path / "run", progress=False).fit()
    state = load_json(out / "train_state.json")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert state["step"] == 1 and [r["step"] for r in records] == [1] and state["seconds"] > 0
    assert state["log"] == {"n": 0, "sums": {}}


@pytest.mark.parametrize("override, match", [
    ("train.grad_clip=nan", r"train\.grad_clip must be a finite number, got nan"),  # clipping silently off
    ("train.grad_clip=-1", r"train\.grad_clip must be a number in \[0, inf\), got -1"),
    ("train.lr_min_ratio=nan", r"train\.lr_min_ratio"), ("train.lr_min_ratio=1.5", r"\[0, 1\]"),
    ("train.max_minutes=nan", r"train\.max_minutes"), ("train.max_minutes=-1", "--minutes"),
    ("train.seed=1000000000000000000000000000000", "--seed"),
    ("train.sample_n=0", r"train\.sample_n must be an integer in \[1, 10000\]"),
    ("train.sample_steps=0", r"train\.sample_steps"), ("train.checkpoint_every=-1", "checkpoint_every"),
    ("train.warmup=-5", "warmup"), ("train.weight_decay=inf", "weight_decay"),
])
def test_every_training_number_is_checked_before_any_work(tmp_path: Path, override: str, match: str) -> None:
    """Each refused before the network is built or the folder made, not after training (sample_n, sample_steps
    were used only by the final preview) and never silently (a NaN clip norm turned clipping off)."""
    with pytest.raises(DiffusaError, match=match) as info:  # NaN and inf already where the config is read
        cfg = load_config(overrides=[*DIGITS_TINY, "train.steps=2", override])
        diffusion_engine(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


# -- a time budget instead of a step count (diffusa.engine.budget) -------------------------------------------------
def test_budget_estimate_and_fit_by_hand() -> None:
    """The estimate counts the remaining steps at the measured rate, a preview every sample_every steps before the
    last and the final one, a checkpoint every checkpoint_every steps, the snapshot and the final save; the fit
    is the largest step count whose estimate is within the budget."""
    from diffusa.config import TrainConfig
    from diffusa.engine.budget import estimate, fit_steps

    tc = TrainConfig(steps=None, budget_minutes=10.0, sample_every=400, checkpoint_every=200, guide_at=0.25)
    kw = dict(step=100, elapsed_s=30.0, rate=4.0, checkpoint_s=0.5, preview_s=5.0)
    # 1,900 steps at 4/s = 475 s; previews at 400..1600 and the last = 5 x 5 s; saves at 200..2000, the snapshot
    # and the final one = 12 x 0.5 s; and the 30 s already spent
    assert estimate(tc, 2000, **kw) == 30 + 475 + 25 + 6  # the snapshot at step 500 included
    fit = fit_steps(tc, **kw)
    assert estimate(tc, fit.steps, **kw) <= 600 < estimate(tc, fit.steps + 1, **kw)
    assert 2150 < fit.steps < 2250 and fit.estimated_s == estimate(tc, fit.steps, **kw)


def test_a_budget_already_spent_trains_one_step_past_the_fit_and_says_what_it_loses() -> None:
    """Past the budget at the fit, the run stops one step later; where a quarter of its steps falls before the fit
    there is no autoguidance snapshot, and the message says so."""
    from diffusa.config import TrainConfig
    from diffusa.engine.budget import fit_steps

    kw = dict(step=100, elapsed_s=120.0, rate=4.0, checkpoint_s=0.5, preview_s=5.0)
    tc = TrainConfig(budget_minutes=1.0, guide_at=0.25)
    fit = fit_steps(tc, **kw)
    assert fit.steps == 101 and "too short to keep the autoguidance snapshot" in fit.message(tc, 100)
    tc = TrainConfig(budget_minutes=10.0, guide_at=0.25)
    assert "snapshot" not in fit_steps(tc, **kw).message(tc, 100)


def test_a_budgeted_run_is_the_run_of_the_steps_it_chose(tmp_path: Path) -> None:
    """The steps are fixed at the end of the warm-up, before the learning rate depends on them, and written to
    config.json: training that many steps from the start gives the same weights bit for bit."""
    base = ['data.name="moons"', "train.batch_size=32", "train.warmup=20", "train.guide_at=0",
            "train.sample_every=0", "train.checkpoint_every=0", "model.net.hidden=32"]
    out = diffusion_engine(load_config(overrides=[*base, "train.budget_minutes=0.03"]), tmp_path / "budget",
                           progress=False).fit()
    meta = load_json(out / "config.json")
    steps = meta["config"]["train"]["steps"]
    assert meta["budget"]["steps"] == steps == load_json(out / "train_state.json")["step"] > 20
    assert meta["budget"]["fitted_at_step"] == 20 and meta["budget"]["steps_per_s"] > 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps and records[-1]["elapsed_s"] < 0.03 * 60 + 5
    again = diffusion_engine(load_config(overrides=[*base, f"train.steps={steps}"]), tmp_path / "steps",
                             progress=False).fit()
    a, b = load_tensors(out / "model.safetensors"), load_tensors(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_budget_refusals_are_one_line(cli, tmp_path: Path) -> None:
    """--budget with --steps or --resume; a warm-up too short to time; a task whose schedule reads the step count
    from the first step (consistency training)."""
    r = cli("train", "--data", "moons", "--out", tmp_path / "a", "--budget", "1", "--steps", "5", "--quiet")
    assert r.code != 0 and "--budget" in r.err and "--steps" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", "moons", "--out", tmp_path / "b", "--budget", "1", "--resume", "--quiet")
    assert r.code != 0 and "--resume" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", "moons", "--out", tmp_path / "c", "--budget", "1", "--set", "train.warmup=5",
            "--quiet")
    assert r.code != 0 and "train.warmup >= 10" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", "moons", "--out", tmp_path / "d", "--budget", "1", "--objective", "ict", "--quiet")
    assert r.code != 0 and "budget_minutes is not available" in r.err and "Traceback" not in r.err
    assert not any((tmp_path / n / "model.safetensors").exists() for n in "abcd")


BUDGET_BASE = ['data.name="moons"', "train.batch_size=32", "train.warmup=20", "train.guide_at=0",
               "train.sample_every=0", "train.checkpoint_every=0", "model.net.hidden=32"]


def test_a_budgeted_run_stopped_before_its_fit_fits_on_resume_and_keeps_its_steps_after(tmp_path: Path) -> None:
    """Stopped before the fit (here by --minutes at step 1), a budgeted run records no steps and fits them when
    resumed, still equal to the run of those steps from the start; resumed after the fit, it keeps the fitted
    steps whatever the config passed in says (the checkpoint holds the fit)."""
    stop = load_config(overrides=[*BUDGET_BASE, "train.budget_minutes=0.03", "train.max_minutes=1e-9"])
    out = diffusion_engine(stop, tmp_path / "run", progress=False).fit()
    assert load_json(out / "train_state.json")["step"] == 1 and "budget" not in load_json(out / "config.json")
    resumed = load_config(overrides=[*BUDGET_BASE, "train.budget_minutes=0.03"])
    diffusion_engine(resumed, out, resume=True, progress=False).fit()
    steps = load_json(out / "config.json")["budget"]["steps"]
    assert load_json(out / "train_state.json")["budget"]["steps"] == steps == load_json(out / "train_state.json")[
        "step"]
    again = diffusion_engine(load_config(overrides=[*BUDGET_BASE, f"train.steps={steps}"]), tmp_path / "steps",
                             progress=False).fit()
    a, b = load_tensors(out / "model.safetensors"), load_tensors(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    later = load_config(overrides=[*BUDGET_BASE, "train.budget_minutes=0.03", "train.steps=5000"])
    assert diffusion_engine(later, out, resume=True, progress=False).cfg.steps == steps


def test_budget_flag_refusals_on_resume_and_zero(cli, tmp_path: Path) -> None:
    """`--resume --steps` on a budgeted run (its steps are the fit's) and `--budget 0` are one line each."""
    out = tmp_path / "run"
    r = cli("train", "--data", "moons", "--out", out, "--budget", "0.02", "--set", "train.warmup=20", "--set",
            "train.sample_every=0", "--set", "train.guide_at=0", "--quiet")
    assert r.code == 0 and "budget 0.02 min" in r.out  # the fit's line, printed without a progress bar
    r = cli("train", "--out", out, "--resume", "--steps", "9000", "--quiet")
    assert r.code != 0 and "fitted to its --budget" in r.err and "Traceback" not in r.err
    r = cli("train", "--data", "moons", "--out", tmp_path / "zero", "--budget", "0", "--quiet")
    assert r.code != 0 and "> 0" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("record", ['"x"', '{"steps": "abc"}', '{"steps": 0}', '{"steps": true}', '{}'])
def test_a_damaged_budget_record_in_the_checkpoint_is_one_line(tmp_path: Path, record: str) -> None:
    """Resuming a budgeted run whose checkpoint's budget record is damaged names the file, no traceback."""
    cfg = load_config(overrides=[*BUDGET_BASE, "train.budget_minutes=0.01"])
    out = diffusion_engine(cfg, tmp_path / "run", progress=False).fit()
    from diffusa.checkpoint import load_tensors_and_metadata, save_tensors

    tensors, metadata = load_tensors_and_metadata(out / "train_state.safetensors")
    state = json.loads(metadata["state"])
    state["budget"] = json.loads(record)
    save_tensors(out / "train_state.safetensors", tensors, {**metadata, "state": json.dumps(state)})
    with pytest.raises(DiffusaError, match="train_state") as info:
        diffusion_engine(load_config(overrides=[*BUDGET_BASE, "train.budget_minutes=0.01"]), out, resume=True,
                         progress=False)
    assert "\n" not in str(info.value)
