"""2-D toys: energy distance of samples after the default training, against the real-vs-real floor.

    python benchmarks/toys.py [--steps N] [--quick] [--out docs/results/toys.md]

For each toy, trains `diffusa train --data TOY` with the default config, draws 2,000 samples
(DDIM, 50 steps and ancestral, 1000 steps) and compares them with 2,000 held-out points; the floor is
2,000 other real points against the same held-out set. Target: within 3x the floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _tables import emit

from diffusa.config import load_config
from diffusa.data import TOYS, load_dataset
from diffusa.metrics import energy_distance
from diffusa.runs import load_run
from diffusa.samplers import sample
from diffusa.train import diffusion_engine
from diffusa.viz import save_points

N = 2000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="a few steps, one toy: checks the script runs")
    ap.add_argument("--out", default=None, help="markdown file for the table")
    ap.add_argument("--plots", default="docs/img", help="folder for the sample plots")
    args = ap.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    toys = ["moons"] if args.quick else list(TOYS)
    steps = 20 if args.quick else args.steps
    rows = []
    work = Path(tempfile.mkdtemp(prefix="diffusa-toys-"))
    for toy in toys:
        overrides = [f"data.name={toy!r}", "train.sample_every=0"]
        if steps:
            overrides.append(f"train.steps={steps}")
        cfg = load_config(overrides=overrides)
        start = time.time()
        diffusion_engine(cfg, work / toy, progress=False).fit()
        train_s = time.time() - start
        run = load_run(work / toy)
        test = load_dataset(toy, "test").x[:N]
        real = load_dataset(toy, "train").x[torch.randperm(20000, generator=torch.Generator().manual_seed(1))[:N]]
        floor = energy_distance(real, test)
        row = {"toy": toy, "steps": cfg.train.steps, "train_s": train_s, "floor": floor}
        for sampler, k in (("ddim", 50), ("ancestral", 1000)):
            x = sample(run.denoiser, (N, 2), sampler, k, generator=torch.Generator().manual_seed(0))
            row[sampler] = energy_distance(x, test)
            if sampler == "ddim" and not args.quick:
                save_points(x, Path(args.plots) / f"toy_{toy}.png", reference=test, title=f"{toy}: DDIM 50 steps")
        rows.append(row)
        print(f"{toy:12s} floor {floor:.5f}  ddim50 {row['ddim']:.5f} ({row['ddim'] / floor:.2f}x)  "
              f"ancestral1000 {row['ancestral']:.5f} ({row['ancestral'] / floor:.2f}x)  train {train_s:.0f}s",
              flush=True)
    lines = ["| toy | train steps | train s | floor (real vs real) | DDIM 50 | ratio | ancestral 1000 | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['toy']} | {r['steps']} | {r['train_s']:.0f} | {r['floor']:.5f} | {r['ddim']:.5f} | "
                     f"{r['ddim'] / r['floor']:.2f}x | {r['ancestral']:.5f} | {r['ancestral'] / r['floor']:.2f}x |")
    emit(lines, args.out)
    if args.quick and not all(torch.isfinite(torch.tensor(r["ddim"])) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
