"""Training: the loss falls, samples land on the data, the run folder is complete, and resuming from a
checkpoint reproduces the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from resume_check import interrupt_then_resume, same_checkpoint

import diffusa.engine.loop as loop_mod
from diffusa.checkpoint import load_json, load_tensors
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.metrics import energy_distance
from diffusa.runs import load_run
from diffusa.samplers import sample
from diffusa.train import diffusion_engine


def train_run(out: Path, overrides: list[str], **kwargs) -> Path:
    return diffusion_engine(load_config(overrides=overrides), out, progress=False, **kwargs).fit()


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


N = 12  # steps before the interruption; every run goes to 2N
TINY = ['data.name="moons"', "model.net.hidden=16", "model.net.depth=2", "train.batch_size=64",
        "train.warmup=5", "train.log_every=4", "train.checkpoint_every=0", "train.sample_every=0",
        "train.sample_steps=2"]


# -- a short run on moons ----------------------------------------------------------------------


def test_loss_goes_down(moons_run: Path) -> None:
    log = _log(moons_run)
    assert [r["step"] for r in log] == list(range(25, 301, 25))
    losses = [r["loss"] for r in log]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.95 * first, losses  # observed ~0.89 (v-prediction has a high irreducible loss)


def test_samples_land_near_the_data(moons_run: Path) -> None:
    """Energy distance to held-out data: samples far below draws from the prior N(0, I)."""
    run = load_run(moons_run)
    g = torch.Generator().manual_seed(0)
    x = run.to_data(sample(run.denoiser, (1000, 2), "ddim", 20, generator=g))  # standardised points, mapped back
    prior = torch.randn(1000, 2, generator=g)
    held_out = load_dataset("moons", "test").x[:1000]
    ed_samples, ed_prior = energy_distance(x, held_out), energy_distance(prior, held_out)
    assert ed_samples < 0.25 * ed_prior, (ed_samples, ed_prior)


def test_run_folder_is_complete(moons_run: Path) -> None:
    for name in ("config.json", "model.safetensors", "train_state.safetensors", "train_state.json", "log.jsonl",
                 "loss.png", "samples/final.png"):
        assert (moons_run / name).is_file(), name
    assert not [p.name for p in moons_run.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing
    assert load_json(moons_run / "train_state.json")["step"] == 300
    assert load_tensors(moons_run / "train_state.safetensors")["step"].item() == 300
    assert (moons_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_into_an_existing_run_needs_resume(moons_run: Path) -> None:
    cfg = load_config(overrides=['data.name="moons"'])
    with pytest.raises(DiffusaError, match="--resume"):
        diffusion_engine(cfg, moons_run, progress=False)


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(overrides=['data.name="moons"'])
    with pytest.raises(DiffusaError, match="resume"):
        diffusion_engine(cfg, tmp_path / "fresh", resume=True, progress=False)


@pytest.mark.parametrize("override, match", [("train.steps=0", "steps"), ("train.batch_size=0", "batch"),
                                             ("train.lr=0", "lr"), ("train.ema_decay=1.0", "ema_decay")])
def test_bad_settings_are_rejected_before_any_work(tmp_path: Path, override: str, match: str) -> None:
    cfg = load_config(overrides=['data.name="moons"', override])
    with pytest.raises(DiffusaError, match=match):
        diffusion_engine(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, match", [('train.lr_decay="cosin"', "lr_decay"),
                                             ('train.sampler="dim"', "sampler")])
def test_unknown_names_are_rejected_before_any_work(tmp_path: Path, override: str, match: str) -> None:
    """A misspelt lr_decay or sampler must fail like train.lr=0 does: before the run folder exists (else the
    folder 'already holds a run' that cannot be resumed) and before training (the sampler is only used
    for the final grid, after all the steps)."""
    cfg = load_config(overrides=[*TINY, override, "train.steps=2"])
    with pytest.raises(DiffusaError, match=match):
        diffusion_engine(cfg, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run" / "config.json").exists()


# -- exact resume ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2N-step reference runs, with constant and with cosine learning-rate decay."""
    base = tmp_path_factory.mktemp("uninterrupted")
    return {decay: train_run(base / decay, [*TINY, f'train.lr_decay="{decay}"', f"train.steps={2 * N}"])
            for decay in ("constant", "cosine")}


def test_resume_with_more_steps_equals_uninterrupted(uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    """N steps with train.steps=N, then resume with train.steps=2N. (The learning rate is constant here:
    under cosine decay the schedule itself depends on train.steps, so that run legitimately differs.)"""
    overrides = [*TINY, 'train.lr_decay="constant"']
    out = train_run(tmp_path / "run", [*overrides, f"train.steps={N}"])
    assert load_json(out / "train_state.json")["step"] == N
    train_run(out, [*overrides, f"train.steps={2 * N}"], resume=True)
    same_checkpoint(out, uninterrupted["constant"])
    steps = [r["step"] for r in _log(out)]
    assert steps[-1] == 2 * N and steps == sorted(steps)
    for name in ("log.jsonl", "loss.png", "samples/final.png"):
        assert (out / name).is_file()


def test_ctrl_c_then_resume_equals_uninterrupted(uninterrupted: dict[str, Path], tmp_path: Path) -> None:
    """Ctrl-C between steps saves a checkpoint; --resume then matches the uninterrupted run (cosine decay), its
    log included: the record after the interruption averages the steps before it too."""
    cfg = load_config(overrides=[*TINY, 'train.lr_decay="cosine"', f"train.steps={2 * N}", "train.log_every=5"])
    reference = train_run(tmp_path / "whole", [*TINY, 'train.lr_decay="cosine"', f"train.steps={2 * N}",
                                                "train.log_every=5"])
    interrupt_then_resume(lambda resume: diffusion_engine(cfg, tmp_path / "run", resume=resume, progress=False), N)
    same_checkpoint(tmp_path / "run", reference)


def test_ctrl_c_inside_the_parameter_update_then_resume_equals_uninterrupted(
        uninterrupted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C can arrive anywhere, e.g. after the optimizer step but before the EMA update and the step
    counter; the checkpoint written on the way out must still be one that resumes exactly. A real SIGINT
    is sent to this process at that moment (so a fix that defers the signal over the update passes)."""
    # a background job (as CI may run us) inherits SIGINT ignored; install Python's own handler for the test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_inside_update(uninterrupted, tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_inside_update(uninterrupted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(overrides=[*TINY, 'train.lr_decay="cosine"', f"train.steps={2 * N}"])
    trainer = diffusion_engine(cfg, tmp_path / "run", progress=False)
    real_ema_update = loop_mod.ema_update
    sent = []

    def ema_update(ema, net, decay):
        if trainer.step == N and not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)  # Python raises KeyboardInterrupt at its next check
        real_ema_update(ema, net, decay)

    monkeypatch.setattr(loop_mod, "ema_update", ema_update)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(loop_mod, "ema_update", real_ema_update)
    diffusion_engine(cfg, tmp_path / "run", resume=True, progress=False).fit()
    same_checkpoint(tmp_path / "run", uninterrupted["cosine"])
