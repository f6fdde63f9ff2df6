"""What would exact posterior sampling score on issue 19's inpainting bar? (The bar: the judge reads the true digit
in the completions at least as often as the visible-part ceiling minus 3 points.)

    python benchmarks/inpaint_posterior.py [--masks top,bottom,left,right,center,strokes] [--seeds 0,1,2]
    python benchmarks/inpaint_posterior.py --quick --out table.md      # seconds: one mask, one seed, one epoch

The ceiling is the argmax accuracy of a classifier of the visible part (editing.py's `visible_part_classifier`, on
all 1,000 held-out digits): a decision, the likeliest digit. An inpainting model that draws from p(x | visible)
exactly completes digit y with probability p(y | visible), so the judge (were it perfect) reads the true digit with
probability p(true | visible), and over the digits E[p(true | visible)], which is below the argmax accuracy wherever
the visible part leaves more than one digit possible. The same classifier estimates it: its softmax at the
temperature that minimises the negative log-likelihood on these digits (`diffusa.metrics.fit_temperature`,
calibrated in-sample), and at temperature 1 as trained (overconfident here: the fitted temperatures are above 1).
It is an estimate from a small classifier: a better-informed one would be sharper, raising both its ceiling and
this figure, so read it as roughly what exact sampling scores, not as a bound. Each classifier is trained at
--seeds (its initialisation and batch order), which moves the ceiling itself by a point or more. One JSON record
per (mask, seed) in --raw; the table: per mask, the mean over the seeds and their range.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _tables import emit, write_json
from editing import MASKS, TARGET_GAP, split_masks, visible_part_classifier

from diffusa.data import load_dataset
from diffusa.inpainting import masked_condition
from diffusa.metrics import fit_temperature

DEFAULT_OUT = "docs/results/inpaint_posterior.md"


def measure(mask: str, seed: int, epochs: int) -> dict[str, Any]:
    """One visible-part classifier: its ceiling (argmax accuracy) and E[p(true | visible)] at T = 1 and calibrated."""
    test = load_dataset("mnist5k", "test")
    net = visible_part_classifier(mask, epochs, seed=seed)
    with torch.no_grad():
        logits = net(masked_condition(test.x, split_masks(mask, len(test.x))))
    y, rows = test.labels, torch.arange(len(test.labels))
    t = fit_temperature(logits, y)
    p = F.softmax(logits / t, 1)
    return {"mask": mask, "seed": seed, "ceiling": float((logits.argmax(1) == y).float().mean()),
            "posterior_T1": float(F.softmax(logits, 1)[rows, y].mean()), "temperature": t,
            "posterior_calibrated": float(p[rows, y].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", default=",".join(MASKS))
    ap.add_argument("--seeds", default="0,1,2", help="the classifiers' training seeds")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of each classifier (editing.py's default)")
    ap.add_argument("--raw", default="docs/results/raw/inpaint_posterior.json")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="seconds: the box, one seed, one epoch")
    args = ap.parse_args()
    if args.quick:
        args.masks, args.seeds, args.epochs, args.raw = "center", "0", 1, "quick/raw/inpaint_posterior.json"
        args.out = args.out if args.out != DEFAULT_OUT else "quick/inpaint_posterior.md"
    if args.epochs < 1:
        raise SystemExit(f"error: --epochs {args.epochs}: each classifier needs at least one epoch")
    masks = args.masks.split(",")
    if unknown := [m for m in masks if m not in MASKS]:
        raise SystemExit(f"error: --masks: unknown {', '.join(unknown)}; known: {', '.join(MASKS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None
    rows = []
    for mask in masks:
        for seed in seeds:
            rows.append(measure(mask, seed, args.epochs))
            print(rows[-1], flush=True)
    write_json(Path(args.raw), {"epochs": args.epochs, "seeds": seeds, "rows": rows})

    def cell(mask: str, key: str) -> str:
        vals = [r[key] for r in rows if r["mask"] == mask]
        return f"{statistics.mean(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"

    emit([f"Visible-part classifiers on the 1,000 held-out digits, training seeds {args.seeds} (mean, range; "
          "`python benchmarks/inpaint_posterior.py`): the ceiling (argmax accuracy), the bar (ceiling - 3 points), "
          "and what exact posterior sampling scores, E[p(true | visible)], calibrated and as trained:", "",
          "| mask | ceiling | bar | posterior sampling, calibrated | at T = 1 | temperature |",
          "|---|---|---|---|---|---|",
          *(f"| {m} | {cell(m, 'ceiling')} | "
            f"{statistics.mean(r['ceiling'] for r in rows if r['mask'] == m) - TARGET_GAP:.3f} | "
            f"{cell(m, 'posterior_calibrated')} | {cell(m, 'posterior_T1')} | "
            f"{statistics.mean(r['temperature'] for r in rows if r['mask'] == m):.2f} |" for m in masks)], args.out)


if __name__ == "__main__":
    main()
