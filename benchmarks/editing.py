"""Editing held-out mnist5k digits with the shipped models (issue 19): SDEdit's fidelity/realism trade-off against the
strength, and RePaint with resampling jumps against plain replacement on a centred box and a half-image mask.

    OMP_NUM_THREADS=1 python benchmarks/editing.py [--n 100] [--out docs/results/editing.md]

Digits: the held-out split, --n of them, every class in turn. img2img: DPM-Solver++(2M), 20 steps, strengths 0.2 ..
1.0; mnist-pixel unconditional, mnist-text asked for each digit's own label (guidance 3). "Agreement": the project's
digit classifier reads the output as the source digit's label; L2: mean Euclidean distance to the input in [-1, 1]
pixels (28 x 28); FD: Frechet distance in the classifier's features to the 1,000 held-out digits (n outputs only:
biased upwards, compare rows, not other tables). Inpainting: DPM-Solver++(2M) 20 steps (run step by step, so first
order), plain replacement (jump_n_sample 1, 20 evaluations) against RePaint jumps 5 x 5 (80 evaluations), and
RePaint with ancestral (DDPM) steps as the paper's;
unconditional: mnist-pixel, and mnist-text with the empty prompt (guidance 1). Accuracy: the classifier against
the true label; the visible-part ceiling: a 5-nearest-neighbour vote of the visible pixels among the 4,000 training
digits. Seam: mean |difference| between each repainted pixel and its kept 4-neighbours, beside the same pairs in
the original digits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _tables import emit, write_json

import diffusa
from diffusa.data import load_dataset
from diffusa.metrics import classify, frechet_distance
from diffusa.pipelines.edit import named_mask
from diffusa.viz import _plt, save_strip

STRENGTHS = [0.2, 0.4, 0.6, 0.8, 1.0]
MASKS = ["center", "top"]
VARIANTS = {"replacement": ("dpmpp_2m", 1, 1), "RePaint 5x5": ("dpmpp_2m", 5, 5),
            "RePaint 5x5, ancestral": ("ddpm", 5, 5)}  # (sampler, jump_length, jump_n_sample)
MODELS = {"mnist-pixel": {}, "mnist-text": {}}


def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n held-out digits, classes 0..9 in turn (the split holds 100 of each, sorted by class)."""
    test = load_dataset("mnist5k", "test")
    idx = torch.tensor([c * 100 + k for k in range(n // 10 + 1) for c in range(10)][:n])
    return test.x[idx], test.labels[idx]


def seam(x: torch.Tensor, repaint: torch.Tensor) -> float:
    """Mean |x_p - x_q| over 4-neighbour pairs with p repainted and q kept (the mask's border)."""
    diffs = []
    for dim in (-1, -2):
        a, b = repaint, repaint.roll(-1, dim)
        pairs = (a ^ b)
        valid = torch.ones_like(pairs)
        valid.select(dim, -1).fill_(False)  # roll wraps around: the last row/column has no neighbour
        d = (x - x.roll(-1, dim)).abs()
        diffs.append(d[(pairs & valid).expand_as(d)])
    return float(torch.cat(diffs).mean())


def knn_ceiling(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, k: int = 5) -> float:
    """A 5-NN vote on the visible pixels among the training digits: how often the visible part names the digit."""
    train = load_dataset("mnist5k", "train")
    v = keep.flatten()
    d = torch.cdist(x.flatten(1)[:, v], train.x.flatten(1)[:, v])
    votes = train.labels[d.topk(k, largest=False).indices]
    return float((votes.mode(1).values == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--raw", default="docs/results/raw/editing.json")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--out", default="docs/results/editing.md")
    args = ap.parse_args()
    img = Path(args.img)
    x, y = held_out(args.n)
    ref, _ = classify(load_dataset("mnist5k", "test").x)
    rec: dict = {"n": args.n, "img2img": [], "inpaint": [], "ceiling": {}}
    pipes = {name: diffusa.load(name) for name in MODELS}
    sweep = {}
    for name, pipe in pipes.items():
        cond = {"label": y} if pipe.is_text else {}
        for s in STRENGTHS:
            t0 = time.time()
            res = pipe.img2img(x, s, steps=20, seed=0, **cond)
            feats, probs = classify(res.samples)
            row = {"model": name, "strength": s, "t_start": res.settings["t_start"], "nfe": res.settings["nfe"],
                   "agreement": float((probs.argmax(1) == y).float().mean()),
                   "l2": float((res.samples - x).flatten(1).norm(dim=1).mean()),
                   "fd": frechet_distance(feats, ref), "seconds": time.time() - t0}
            rec["img2img"].append(row)
            sweep[(name, s)] = res.samples
            print(row, flush=True)
            write_json(Path(args.raw), rec)
    for mask in MASKS:
        repaint = named_mask(mask, 28, 28)
        rec["ceiling"][mask] = knn_ceiling(x, y, ~repaint[0, 0])
        original = seam(x, repaint)
        for name, pipe in pipes.items():
            cond = {"prompt": "", "guidance_scale": 1} if pipe.is_text else {}
            for variant, (sampler, j, r) in VARIANTS.items():
                t0 = time.time()
                res = pipe.inpaint(x, mask, sampler=sampler, steps=20, jump_length=j, jump_n_sample=r, seed=0,
                                   **cond)
                keep = ~repaint.expand_as(x)
                row = {"model": name, "mask": mask, "variant": variant, "nfe": res.settings["nfe"],
                       "accuracy": float((classify(res.samples)[1].argmax(1) == y).float().mean()),
                       "seam": seam(res.samples, repaint), "seam_original": original,
                       "unmasked_max_abs_diff": float((res.samples[keep] - x[keep]).abs().max()),
                       "seconds": time.time() - t0}
                rec["inpaint"].append(row)
                sweep[(name, mask, variant)] = res.samples
                print(row, flush=True)
                write_json(Path(args.raw), rec)
    figures(sweep, x, img)
    table(rec, args.out, img)


def figures(sweep: dict, x: torch.Tensor, img: Path) -> None:
    rows = slice(0, 6)
    for name in MODELS:
        save_strip([x[rows], *(sweep[(name, s)][rows] for s in STRENGTHS)],
                   img / f"editing_strength_{name.split('-')[1]}.png", ["input", *(f"{s:g}" for s in STRENGTHS)])
        cols, labels = [x[rows]], ["input"]
        for mask in MASKS:
            m = named_mask(mask, 28, 28)
            cols += [torch.where(m, torch.zeros(()), x[rows]), *(sweep[(name, mask, v)][rows] for v in VARIANTS)]
            labels += [f"{mask} mask", *VARIANTS]
        save_strip(cols, img / f"editing_inpaint_{name.split('-')[1]}.png", labels)


def table(rec: dict, out: str, img: Path) -> None:
    import json

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name in MODELS:
        rows = [r for r in rec["img2img"] if r["model"] == name]
        axes[0].plot([r["strength"] for r in rows], [r["agreement"] for r in rows], marker="o", label=name)
        axes[1].plot([r["strength"] for r in rows], [r["l2"] for r in rows], marker="o", label=name)
    axes[0].set(xlabel="strength", ylabel="classifier agrees with the source label")
    axes[1].set(xlabel="strength", ylabel="mean L2 distance to the input")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(img / "editing_tradeoff.png", dpi=90)
    plt.close(fig)
    lines = [f"Held-out mnist5k digits, n = {rec['n']}, seed 0 (benchmarks/editing.py).", "",
             "| model | strength | t_start | NFE | agreement with the source label | L2 to the input | FD |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['strength']:g} | {r['t_start']:.3f} | {r['nfe']} | {r['agreement']:.2f} | "
              f"{r['l2']:.2f} | {r['fd']:.0f} |" for r in rec["img2img"]]
    lines += ["", "| mask | visible-part 5-NN | model | variant | NFE | accuracy | seam (original) | "
              "max |diff| outside the mask |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mask']} | {rec['ceiling'][r['mask']]:.2f} | {r['model']} | {r['variant']} | {r['nfe']} | "
              f"{r['accuracy']:.2f} | {r['seam']:.3f} ({r['seam_original']:.3f}) | {r['unmasked_max_abs_diff']:g} |"
              for r in rec["inpaint"]]
    emit(lines, out)
    print(json.dumps({"seconds": sum(r["seconds"] for r in rec["img2img"] + rec["inpaint"])}))


if __name__ == "__main__":
    main()
