"""Random SIGKILLs during training, each followed by `--resume`: does the run end bit-identical to one that was
never interrupted? (issue 16: "20 random kills with a checkpoint every step").

    python benchmarks/kill_resume.py [--kills 20] [--steps 400] [--seed 0] [--out docs/results/kill_resume.md]

Trains a small MLP on `moons` with a checkpoint after every step (`train.checkpoint_every=1`), once straight
through (the reference), then again in a fresh `diffusa train` process that is killed with SIGKILL after a random
delay (uniform over the process's start-up and its steps), resumed with `--resume`, killed again, ... `--kills`
times, then left to finish. After each kill it records the step of the last complete checkpoint. At the end the
run's weights, EMA weights, optimizer state, time-sampler state, train_state.json and log records are compared
with the reference's, tensor by tensor (`torch.equal`), and no temporary file may be left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _tables import emit, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from resume_check import same_checkpoint  # the tests' own comparison, not a second copy

SETTINGS = ['data.name="moons"', "model.net.hidden=16", "model.net.depth=2", "train.batch_size=32",
            "train.warmup=2", "train.log_every=3", "train.checkpoint_every=1", "train.sample_every=0",
            "train.sample_steps=2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/results/kill_resume.md")
    ap.add_argument("--raw", default="docs/results/raw")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref, run = Path(tmp) / "reference", Path(tmp) / "run"

        def cmd(out: Path) -> list[str]:
            return [sys.executable, "-m", "diffusa.cli", "train", "--out", str(out), "--quiet",
                    *[a for o in SETTINGS for a in ("--set", o)], "--set", f"train.steps={args.steps}"]

        t0 = time.perf_counter()
        subprocess.run(cmd(ref), check=True, capture_output=True, env=env)
        straight = time.perf_counter() - t0
        # a kill lands anywhere in the start-up (imports, data: ~2.5 s) or the next ~2 x steps/kills steps, so the
        # kills spread over the whole run
        per_step = straight / args.steps
        window = 2.5 + 2 * args.steps / max(args.kills, 1) * per_step
        kills: list[dict[str, object]] = []
        t0 = time.perf_counter()
        while True:
            resume = ["--resume"] if (run / "config.json").exists() else []
            proc = subprocess.Popen([*cmd(run), *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            delay = rng.uniform(0.2, window) if len(kills) < args.kills else None
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                state = run / "train_state.json"
                step = json.loads(state.read_text())["step"] if state.is_file() else 0
                kills.append({"after_s": round(delay, 2), "checkpoint_step": step})
                print(f"kill {len(kills):2d} after {delay:5.2f} s: last complete checkpoint at step {step}", flush=True)
                continue
            if proc.returncode != 0:
                raise SystemExit(proc.stderr.read().decode()[-2000:])
            break
        interrupted = time.perf_counter() - t0
        same_checkpoint(run, ref)  # raises on the first tensor, record or log line that differs
        leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers, leftovers
    killed_mid_run = sum(1 for k in kills if 0 < int(k["checkpoint_step"]) < args.steps)
    rows = [["kills", str(len(kills))], ["kills after the first checkpoint, before the last", str(killed_mid_run)],
            ["steps (a checkpoint after each)", str(args.steps)],
            ["uninterrupted run (s)", f"{straight:.1f}"], ["killed and resumed, in all (s)", f"{interrupted:.1f}"],
            ["weights, EMA, optimizer, log equal to the uninterrupted run", "yes (torch.equal, every tensor)"],
            ["temporaries left", "0"]]
    lines = [f"# SIGKILL at random moments, resumed each time (`python benchmarks/kill_resume.py --kills {args.kills} "
             f"--steps {args.steps} --seed {args.seed}`)", "", "| | |", "|---|---|",
             *(f"| {a} | {b} |" for a, b in rows), "", "Last complete checkpoint after each kill: "
             + ", ".join(str(k["checkpoint_step"]) for k in kills) + "."]
    emit(lines, args.out)
    write_json(Path(args.raw) / "kill_resume.json", {"args": vars(args), "kills": kills, "straight_s": straight,
                                                      "interrupted_s": interrupted})


if __name__ == "__main__":
    main()
