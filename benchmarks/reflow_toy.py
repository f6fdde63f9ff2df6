"""Rectified flow and reflow (Liu, Gong & Liu 2022) on a 2-D toy: straightness S and the energy distance of 1-, 2-,
4- and 20-step Euler samples to held-out points, against the real-vs-real floor, for the 1-rectified flow (a flow
run trained from data), the 2-rectified flow (reflowed from it) and the 3-rectified flow (reflowed from that)
(docs/distillation.md, "Rectified flow"). Also each flow's ODE solved by RK4 in 25 steps, the solver of the next
reflow's pairs.

    python benchmarks/reflow_toy.py [--data moons] [--seeds 0,1,2] [--default] [--out docs/results/reflow_toy.md]
                                    [--raw docs/results/raw/reflow_toy.json] [--quick]

Recipes: "short" is tests/test_reflow.py's (every flow 300 steps, MLP 64 x 3, batch 256; the 1-rectified flow
`diffusa train --process flow` with the tests' moons settings, each reflow `diffusa distill --method reflow --steps
300`: 10,000 pairs of RK4 in 25 steps, fine-tuned from the previous flow); "default" (with --default) is `diffusa
train --data D --process flow` and `diffusa distill --method reflow` with nothing else (3,000 and 2,000 steps, MLP
256 x 4). S is measured on 2,000 Euler paths of 100 steps (`diffusa.reflow.straightness`); each draw is 2,000
samples (seed 1) against 2,000 held-out points; the floor is 2,000 training points against the same. Everything runs
on one thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _tables import emit, write_json

SHORT = ["train.steps=300", "train.batch_size=256", "train.warmup=20", "model.net.hidden=64", "model.net.depth=3"]
EULER_STEPS = (1, 2, 4, 20)
ODE = ("rk4", 25)  # the pairs' solver (100 network evaluations): the flow's ODE solved accurately


def train_flow(data: str, recipe: list[str], seed: int, out: Path) -> float:
    """The 1-rectified flow: a flow run trained from data; its training seconds."""
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    cfg = load_config(overrides=[f"data.name={data!r}", 'process.name="flow"', "train.sample_every=0",
                                 "train.checkpoint_every=0", f"train.seed={seed}", *recipe])
    start = time.time()
    diffusion_engine(cfg, out, progress=False).fit()
    return time.time() - start


def reflow_once(teacher: Path, out: Path, steps: int | None, seed: int, pairs: int) -> tuple[float, float]:
    """The next rectified flow of `teacher`: (seconds solving the pairs, seconds training)."""
    from diffusa.tasks.reflow import ReflowConfig, reflow_engine, reflow_settings

    settings = reflow_settings(seed=seed) if steps is None else reflow_settings(steps=steps, seed=seed)
    settings.checkpoint_every = 0
    start = time.time()
    engine = reflow_engine(teacher, out, settings, ReflowConfig(pairs=pairs), progress=False)
    made = time.time()
    engine.fit()
    return made - start, time.time() - made


def measure(run: Path, ref: torch.Tensor, n_paths: int) -> dict[str, Any]:
    """S, and the energy distance of Euler draws in 1, 2, 4, 20 steps to `ref`."""
    import diffusa
    from diffusa.metrics import energy_distance
    from diffusa.reflow import straightness

    pipe = diffusa.load(run)
    s = straightness(pipe.run.denoiser, pipe.data_shape, n_paths, generator=torch.Generator().manual_seed(0))
    ed = {k: energy_distance(pipe(n=len(ref), sampler="euler", steps=k, seed=1).samples, ref) for k in EULER_STEPS}
    ode = energy_distance(pipe(n=len(ref), sampler=ODE[0], steps=ODE[1], seed=1).samples, ref)
    return {"straightness": s, "ed": ed, "ode": ode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="moons")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--default", action="store_true", help="also the default recipe (seed 0)")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--raw", help="write the raw JSON record here")
    ap.add_argument("--quick", action="store_true", help="seconds-long check: tiny runs, one seed, 200 samples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusa.data import load_dataset
    from diffusa.metrics import energy_distance

    n = 200 if args.quick else 2000
    ref = load_dataset(args.data, "test").x[:n]
    train_x = load_dataset(args.data, "train").x
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))[:n]
    floor = energy_distance(train_x[pick], ref)
    jobs: list[tuple[str, list[str], int | None, int]] = [("short", SHORT, 300, int(s)) for s in args.seeds.split(",")]
    pairs = 10_000
    if args.quick:
        jobs, pairs = [("short", [*SHORT, "train.steps=30"], 20, 0)], 500
    elif args.default:
        jobs.append(("default", [], None, 0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe, reflow_steps, seed in jobs:
            work = Path(tmp) / f"{name}-{seed}"
            flows = [work / "rf1"]
            seconds = {1: (0.0, train_flow(args.data, recipe, seed, flows[0]))}
            for k in (2, 3):
                flows.append(work / f"rf{k}")
                seconds[k] = reflow_once(flows[-2], flows[-1], reflow_steps, seed, pairs)
            for k, run in enumerate(flows, start=1):
                got = measure(run, ref, n)
                rows.append({"recipe": name, "seed": seed, "k": k, "pairs_s": seconds[k][0], "train_s": seconds[k][1],
                             **got})
                print(name, seed, f"{k}-rectified", {"S": round(got["straightness"], 5), "ode": round(got["ode"], 4),
                                                     **{f"{s} steps": round(v, 4) for s, v in got["ed"].items()}},
                      flush=True)
    lines = [f"Straightness S ({n:,} Euler paths of 100 steps) and energy distance of Euler draws to {n:,} held-out "
             f"{args.data} points (floor {floor:.4f}: {n:,} training points, x floor in brackets); "
             "`benchmarks/reflow_toy.py`, one thread. k-rectified: k = 1 trained from data, then reflowed; Euler in "
             f"1, 2, 4, 20 steps, and the flow's ODE solved by {ODE[0]} in {ODE[1]} steps (the solver of the next "
             "reflow's pairs).", "",
             "| flow | recipe | seed | pairs s | train s | S | " + " | ".join(f"Euler {k}" for k in EULER_STEPS)
             + f" | {ODE[0]} {ODE[1]} |", "|---|---|---|---|---|---|" + "---|" * (len(EULER_STEPS) + 1)]
    for r in rows:
        cells = " | ".join(f"{v:.4f} ({v / floor:.1f}x)" for v in (*r["ed"].values(), r["ode"]))
        pairs_s = f"{r['pairs_s']:.1f}" if r["k"] > 1 else ""
        lines.append(f"| {r['k']}-rectified | {r['recipe']} | {r['seed']} | {pairs_s} | {r['train_s']:.1f} | "
                     f"{r['straightness']:.4f} | {cells} |")
    emit(lines, args.out)
    if args.raw:
        write_json(Path(args.raw), {"data": args.data, "floor": floor, "n": n, "pairs": pairs, "rows": rows})


if __name__ == "__main__":
    main()
