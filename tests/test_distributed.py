"""`torchrun --nproc_per_node=2 -m diffusa.cli train ...`: DDP on CPU (gloo), rank 0 writes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from diffusa.checkpoint import load_json
from diffusa.runs import load_run


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffusa.cli", "train", "--data", "moons", "--out", str(out), "--steps", "40", "--quiet",
           "--batch-size", "64", "--set", "train.sample_every=0", "--set", "train.sample_steps=2",
           "--set", "model.net.hidden=32", "--set", "model.net.depth=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # only rank 0 talks and writes
    assert proc.stdout.count("training mlp") == 1 and proc.stdout.count("done:") == 1, proc.stdout

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [25, 40]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in log)
    assert load_json(out / "train_state.json")["step"] == 40
    for name in ("model.safetensors", "train_state.safetensors", "loss.png", "samples/final.png"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    run = load_run(out)  # the checkpoint is a plain (non-DDP) state dict
    assert not any(k.startswith("module.") for k in run.net.state_dict())
    assert run.config.train.batch_size == 64 and run.config.train.steps == 40
