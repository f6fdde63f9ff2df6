"""Checkpoints as one unit (issue 16): a run killed at any write boundary, or by SIGKILL at a random moment,
resumes from its last complete checkpoint and ends bit-identical to the uninterrupted run — weights, EMA,
optimizer, time-sampler history and log records."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_check import same_checkpoint

import diffusa.checkpoint as checkpoint_mod
from diffusa.config import load_config
from diffusa.engine.state import STATE
from diffusa.train import diffusion_engine

STEPS = 4
TINY = ['data.name="moons"', "model.net.hidden=16", "model.net.depth=2", "train.batch_size=32", "train.warmup=2",
        "train.log_every=3", "train.checkpoint_every=1", "train.sample_every=0", "train.sample_steps=2",
        f"train.steps={STEPS}"]


class Killed(BaseException):
    """What the process would see of a kill -9: nothing more runs (not even the Ctrl-C handler's save)."""


def train(out: Path, resume: bool = False) -> Path:
    return diffusion_engine(load_config(overrides=TINY), out, resume=resume, progress=False).fit()


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("whole") / "run")


def renames_in_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    calls = []
    real = checkpoint_mod.os.replace
    monkeypatch.setattr(checkpoint_mod.os, "replace", lambda a, b: (calls.append(b), real(a, b))[1])
    train(tmp_path / "count")
    monkeypatch.setattr(checkpoint_mod.os, "replace", real)
    return len(calls)


def test_a_kill_at_every_write_boundary_resumes_exactly(whole: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write (config.json, the checkpoint, model.safetensors, train_state.json, log rewrites), killed
    just before its rename and just after it; then `--resume` (or a plain restart when no config.json was
    written) runs to the end."""
    total = renames_in_a_run(tmp_path, monkeypatch)
    assert total >= 3 * STEPS  # each checkpoint writes at least three files
    real = checkpoint_mod.os.replace
    for k in range(1, total + 1):
        for after in (False, True):
            out = tmp_path / f"kill_{k}_{'after' if after else 'before'}"
            count = [0]

            def replace(a: str, b: str, k: int = k, after: bool = after, count: list[int] = count) -> None:
                count[0] += 1
                if count[0] == k and not after:
                    raise Killed
                real(a, b)
                if count[0] == k:
                    raise Killed

            monkeypatch.setattr(checkpoint_mod.os, "replace", replace)
            with pytest.raises(Killed):
                train(out)
            monkeypatch.setattr(checkpoint_mod.os, "replace", real)
            out.mkdir(exist_ok=True)  # a temporary that a real kill leaves behind (the simulated one is removed)
            (out / ".model.safetensors.1234.0123456789ab.tmp").write_bytes(b"half a file")
            train(out, resume=(out / "config.json").exists())
            same_checkpoint(out, whole)
            assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], (k, after)


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path: Path) -> None:
    """`diffusa train` killed with SIGKILL at random moments (a checkpoint every step), resumed each time until it
    finishes: the run equals the uninterrupted one bit for bit."""
    out = tmp_path / "run"
    rng = random.Random(0)
    cmd = [sys.executable, "-m", "diffusa.cli", "train", "--out", str(out), "--quiet",
           *[a for o in TINY for a in ("--set", o)], "--set", "train.steps=60"]
    reference = tmp_path / "reference"
    subprocess.run([*cmd[:5], str(reference), *cmd[6:]], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    while True:  # three random kills (under load the run may need them all to get going), then to the end
        resume = ["--resume"] if (out / "config.json").exists() else []
        proc = subprocess.Popen([*cmd, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            proc.wait(timeout=rng.uniform(2.5, 6.0) if kills < 3 else 300)  # start-up (imports, data) ~2 s
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        break
    assert kills >= 1
    same_checkpoint(out, reference)
    assert (out / STATE).is_file() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_loss_that_is_not_finite_stops_training_and_keeps_the_checkpoint(whole: Path, tmp_path: Path) -> None:
    """No silent NaN: the step whose loss is not finite is named, nothing after the last checkpoint is written."""
    import shutil

    from diffusa.checkpoint import load_tensors
    from diffusa.errors import DiffusaError

    out = tmp_path / "run"
    shutil.copytree(whole, out)
    before = load_tensors(out / STATE)
    cfg = load_config(overrides=[*TINY, f"train.steps={STEPS + 3}", "train.lr=1e30", "train.warmup=0"])
    engine = diffusion_engine(cfg, out, resume=True, progress=False)
    with pytest.raises(DiffusaError, match=r"step \d+: the loss is (nan|inf)"):
        engine.fit()
    after = load_tensors(out / STATE)
    assert all(bool(torch.isfinite(v).all()) for k, v in after.items() if v.is_floating_point())
    assert int(after["step"]) >= STEPS and set(after) == set(before)


@pytest.mark.parametrize("damage", ["nan", "int8"])
def test_weights_that_are_not_finite_floats_are_refused(whole: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    from diffusa.checkpoint import load_tensors, save_tensors
    from diffusa.errors import DiffusaError
    from diffusa.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(whole, run)
    weights = load_tensors(run / "model.safetensors")
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key].clone().fill_(float("nan")) if damage == "nan" else weights[key].to(torch.int8)
    save_tensors(run / "model.safetensors", weights)
    with pytest.raises(DiffusaError, match="non-finite" if damage == "nan" else "int8"):
        load_run(run)


def test_a_torn_or_foreign_log_line_is_dropped_on_resume(whole: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A kill mid-write leaves half a JSON line; a hand-edited log may hold anything: resume drops them with one
    warning and writes the records the uninterrupted run has."""
    import shutil

    from resume_check import log_records

    from diffusa.engine.state import trim_log

    out = tmp_path / "run"
    shutil.copytree(whole, out)
    expected = log_records(out)
    with (out / "log.jsonl").open("a") as f:
        f.write('{"step": "x", "loss": 1}\n[1, 2]\n{"step": 9999, "loss": 1.0}\n{"step": 3, "lo')
    trim_log(out, STEPS)
    assert log_records(out) == expected
    assert "dropped 3 torn or foreign line(s)" in capsys.readouterr().err
