"""Memory and speed of the training options: fp32, bf16, fp16 (autocast) and gradient checkpointing.

    python benchmarks/memory.py [--batch 64] [--steps 6] [--quick] [--out docs/results/memory.md]

Each option trains diffusa's default mnist5k U-Net in a fresh process (so peak resident memory is its
own): a warm-up step, then `--steps` timed steps (forward, backward, AdamW, EMA). Reports the median
step time and the process's peak resident set size, each against fp32.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _tables import emit

OPTIONS = {"fp32": [], "bf16": ["train.precision='bf16'"], "fp16": ["train.precision='fp16'"],
           "fp32 + grad checkpoint": ["train.grad_checkpoint=true"]}


def child(batch: int, steps: int, overrides: list[str]) -> None:
    """Train in this process and print one JSON line."""
    import tempfile

    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = load_config(overrides=["data.name='mnist5k'", f"train.batch_size={batch}", f"train.steps={steps + 1}",
                                 "train.sample_every=0", "train.checkpoint_every=0", *overrides])
    tr = diffusion_engine(cfg, out, progress=False)
    tr.start_data()
    tr.train_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        tr.train_step()
        times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_step": statistics.median(times), "peak_mib": peak_mib}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(OPTIONS))
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.batch, args.steps, args.child)
        return
    if args.quick:
        args.batch, args.steps = 4, 1
    rows = {}
    chosen = args.only.split(",") if args.only else list(OPTIONS)
    for name, overrides in OPTIONS.items():
        if name not in chosen:
            continue
        proc = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                               "--child", *overrides], capture_output=True, text=True, check=True)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = rows["fp32"]
    lines = [f"batch {args.batch}, median of {args.steps} steps after one warm-up, one process per option", "",
             "| option | s/step | vs fp32 | peak RSS (MiB) | vs fp32 |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['s_per_step'] / base['s_per_step']:.2f}x | "
                     f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f}x |")
    emit(lines, args.out, append=bool(args.only))


if __name__ == "__main__":
    main()
