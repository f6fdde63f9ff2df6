"""Consistency training without a teacher (improved CT, Song & Dhariwal 2023) on a 2-D toy: energy distance of 1-,
2- and 4-step samples to held-out points, against the real-vs-real floor and an EDM diffusion model trained with the
same recipe (docs/distillation.md).

    python benchmarks/ict_toy.py [--data moons] [--seeds 0,1,2] [--default] [--out docs/results/ict_toy.md]
                                 [--raw docs/results/raw/ict_toy.json]

Recipes: "short" is tests/test_ict.py's (`diffusa train --objective ict` for 400 steps, MLP 64 x 3, batch 256,
lr 4e-3 cosine, no gradient clipping); "default" (with --default) is `diffusa train --data D --objective ict` with
nothing else (3,000 steps, MLP 256 x 4, lr 2e-3, clipping at 1). The reference diffusion model is the short recipe
with loss.kind "simple" (EDM's own loss), sampled with DPM-Solver++(2M) at 1, 2, 4 and 20 network evaluations. Each
draw is 2,000 samples (seed 1) against 2,000 held-out points; the floor is 2,000 training points against the same.
Everything runs on one thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _tables import emit, write_json

SHORT = ["train.steps=400", "train.lr=4e-3", "train.grad_clip=0.0", "train.warmup=20", "model.net.hidden=64",
         "model.net.depth=3"]
STEPS = (1, 2, 4)


def train(data: str, objective: str, recipe: list[str], seed: int, work: Path) -> tuple[Path, float]:
    """Train one run; (its folder, training seconds)."""
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    cfg = load_config(overrides=[f"data.name={data!r}", 'process.name="edm"', f"loss.kind={objective!r}",
                                 "train.sample_every=0", "train.checkpoint_every=0", f"train.seed={seed}", *recipe])
    start = time.time()
    out = diffusion_engine(cfg, work / f"{objective}-{seed}-{len(recipe)}", progress=False).fit()
    return out, time.time() - start


def scores(run: Path, ref: torch.Tensor, draws: dict[str, tuple[str, int]]) -> dict[str, float]:
    """Energy distance of each draw (name -> (sampler, steps)) to `ref`."""
    import diffusa
    from diffusa.metrics import energy_distance

    pipe = diffusa.load(run)
    return {name: energy_distance(pipe(n=len(ref), sampler=s, steps=k, seed=1).samples, ref)
            for name, (s, k) in draws.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="moons")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--default", action="store_true", help="also the default recipe (3,000 steps, seed 0)")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--raw", help="write the raw JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from diffusa.data import load_dataset
    from diffusa.metrics import energy_distance

    ref = load_dataset(args.data, "test").x[:2000]
    train_x = load_dataset(args.data, "train").x
    pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))[:2000]
    floor = energy_distance(train_x[pick], ref)
    ict_draws = {f"{k} step{'s' * (k > 1)}": ("consistency", k) for k in STEPS}
    dif_draws = {f"{k} NFE": ("dpmpp_2m", k) for k in (*STEPS, 20)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = [("ict", "short", SHORT, int(s)) for s in args.seeds.split(",")]
        jobs += [("simple", "short", SHORT, int(s)) for s in args.seeds.split(",")]
        if args.default:
            jobs.append(("ict", "default", [], 0))
        for objective, name, recipe, seed in jobs:
            run, seconds = train(args.data, objective, recipe, seed, work)
            ed = scores(run, ref, ict_draws if objective == "ict" else dif_draws)
            rows.append({"objective": objective, "recipe": name, "seed": seed, "train_s": seconds, "ed": ed})
            print(objective, name, seed, f"{seconds:.1f}s", {k: round(v, 4) for k, v in ed.items()}, flush=True)
    lines = [f"Energy distance to 2,000 held-out {args.data} points (floor {floor:.4f}: 2,000 training points); "
             "`benchmarks/ict_toy.py`, one thread.", "",
             "| model | recipe | seed | train s | draws (energy distance, x floor) |", "|---|---|---|---|---|"]
    for r in rows:
        cells = ", ".join(f"{k}: {v:.4f} ({v / floor:.1f}x)" for k, v in r["ed"].items())
        model = "iCT, consistency sampler" if r["objective"] == "ict" else "EDM diffusion, DPM-Solver++(2M)"
        lines.append(f"| {model} | {r['recipe']} | {r['seed']} | {r['train_s']:.1f} | {cells} |")
    emit(lines, args.out)
    if args.raw:
        write_json(Path(args.raw), {"data": args.data, "floor": floor, "rows": rows})


if __name__ == "__main__":
    main()
