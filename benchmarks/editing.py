"""Editing held-out mnist5k digits (issue 19): SDEdit's fidelity/realism trade-off against the strength, and
inpainting on the issue's six masks: RePaint with resampling jumps against plain replacement on the shipped models,
and a mask-conditioned inpainting model (Palette, Saharia et al. 2022: `data.inpaint`), against two ceilings of what
the visible part determines.

    OMP_NUM_THREADS=1 python benchmarks/editing.py [--n 200] [--out docs/results/editing.md]
    OMP_NUM_THREADS=2 python benchmarks/editing.py --train-inpaint-model runs/inpaint --train-steps 4500 --n 200
    python benchmarks/editing.py --quick --out table.md     # seconds: 10 digits, 4 steps, a 3-step tiny model

Digits: the held-out split, --n of them, every class in turn. img2img: DPM-Solver++(2M), --steps steps, strengths
0.2 .. 1.0; mnist-pixel unconditional, mnist-text asked for each digit's own label (guidance 3). "Agreement": the
project's digit judge reads the output as the source digit's label; L2: mean Euclidean distance to the input in
[-1, 1] pixels (28 x 28); FD: Frechet distance in the judge's features to the 1,000 held-out digits (n outputs only:
biased upwards, compare rows, not other tables).

Inpainting masks (MASKS): the top, bottom, left and right halves, the centred 14 x 14 box, and random strokes
(`diffusa.inpainting.stroke_masks`, one mask per held-out digit, drawn for the whole split with seed STROKE_SEED).
Shipped models (unconditional: mnist-pixel, and mnist-text with the empty prompt at guidance 1): DPM-Solver++(2M)
run step by step (so first order) with plain replacement (jump_n_sample 1) and with RePaint jumps 5 x 5, and RePaint
with ancestral (DDPM) steps, the paper's. The mask-conditioned model (--inpaint-model; trained first with
--train-inpaint-model RUN: the default image recipe plus data.inpaint="all", --train-steps steps), given the masked
digit and the mask at every step: ancestral steps with the known region replaced by the noised input before every
step (jump_n_sample 1, its default), without replacement (jump_n_sample 0: conditioning alone) with ancestral and
with DPM-Solver++(2M) steps, and with RePaint jumps 5 x 5 on top (ancestral). Accuracy: the judge
against the true label. Ceilings of what the visible part determines: a 5-nearest-neighbour vote of the visible
pixels among the 4,000 training digits, and a small CNN trained on the training digits with the mask applied
(`visible_part_classifier`: the input is `diffusa.inpainting.masked_condition`, the inpainting model's own condition;
strokes: fresh random strokes per digit and epoch), its accuracy on the same n digits and on all 1,000 held-out ones.
The issue's target: accuracy >= the ceiling (on the n digits; the higher of the two: both estimate what the visible
part determines) minus 3 points. Seam: mean |difference| between
each repainted pixel and its kept 4-neighbours, beside the same pairs in the original digits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _tables import emit, write_json
from torch import nn

import diffusa
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.errors import DiffusaError
from diffusa.inpainting import masked_condition, stroke_masks
from diffusa.metrics import classify, frechet_distance
from diffusa.pipelines.edit import named_mask
from diffusa.viz import _plt, save_strip

STRENGTHS = [0.2, 0.4, 0.6, 0.8, 1.0]
MASKS = ["top", "bottom", "left", "right", "center", "strokes"]
STROKE_SEED = 0  # the strokes masks of the held-out split (and, + 1 + epoch, of the ceiling classifier's training)
MODELS = ["mnist-pixel", "mnist-text"]
MASK_MODEL = "mask-conditioned model"
NOT_MEASURED = "not yet measured"
FIGURE_MASKS = ["center", "top"]  # the shipped models' figure: these masks, every variant
TARGET_GAP = 0.03  # the issue: accuracy >= the visible-part ceiling minus 3 points


def variants(jump: int) -> dict[str, tuple[str, int, int]]:
    """The shipped models' variants: name -> (sampler, jump_length, jump_n_sample)."""
    return {"replacement": ("dpmpp_2m", 1, 1), f"RePaint {jump}x{jump}": ("dpmpp_2m", jump, jump),
            f"RePaint {jump}x{jump}, ancestral": ("ddpm", jump, jump)}


def model_variants(jump: int, scales: list[float] = (), auto: list[float] = (),
                   repaint: bool = False) -> dict[str, dict]:
    """The mask-conditioned model's variants: name -> `pipe.inpaint` keywords; the first is its default;
    jump_n_sample 0: conditioning alone, the sampler's own grid (no jump length); then the default with mask
    guidance at each of `scales` (a model trained with mask dropout), and autoguided at each of `auto` (against the
    snapshot the run kept at train.guide_at); with `repaint`, RePaint's jumps with mask guidance at each scale too."""
    def kw(sampler: str, length: int | None, passes: int, **extra: float) -> dict:
        return {"sampler": sampler, "jump_length": length, "jump_n_sample": passes, **extra}

    out = {"replacement, ancestral (default)": kw("ddpm", jump, 1),
           "no replacement, ancestral": kw("ddpm", None, 0),
           "no replacement, DPM-Solver++(2M)": kw("dpmpp_2m", None, 0),
           f"RePaint {jump}x{jump}, ancestral": kw("ddpm", jump, jump)}
    out.update({f"replacement, ancestral, mask guidance w = {w:g}": kw("ddpm", jump, 1, guidance_scale=w)
                for w in scales})
    out.update({f"replacement, ancestral, autoguidance w = {w:g}": kw("ddpm", jump, 1, autoguidance=w)
                for w in auto})
    out.update({f"RePaint {jump}x{jump}, ancestral, mask guidance w = {w:g}": kw("ddpm", jump, jump, guidance_scale=w)
                for w in (scales if repaint else ())})
    return out


def asked_variants(args: argparse.Namespace) -> dict[str, dict]:
    """The mask-conditioned model's variants this invocation measures (--default-and-guided: its default and the
    guided variants only, for a large n)."""
    out = model_variants(args.jump, args.mask_guidance, args.mask_autoguidance, args.guided_repaint)
    if args.default_and_guided:
        base = list(model_variants(args.jump))
        out = {k: v for k, v in out.items() if k == base[0] or k not in base}
    return out


# -- data and masks ------------------------------------------------------------------------------------------------
def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n held-out digits, classes 0..9 in turn (the split holds 100 of each, sorted by class): (x, y, indices)."""
    test = load_dataset("mnist5k", "test")
    idx = torch.tensor([c * 100 + k for k in range(n // 10 + 1) for c in range(10)][:n])
    return test.x[idx], test.labels[idx], idx


def split_masks(mask: str, count: int, seed: int = STROKE_SEED) -> torch.Tensor:
    """The benchmark's mask for `count` digits of a split, bool (count or 1, 1, 28, 28), True = repaint: a named
    mask (one for all), or strokes drawn per digit with `seed`."""
    if mask == "strokes":
        return stroke_masks(count, 28, 28, torch.Generator().manual_seed(seed))
    return named_mask(mask, 28, 28)


def seam(x: torch.Tensor, repaint: torch.Tensor) -> float:
    """Mean |x_p - x_q| over 4-neighbour pairs with p repainted and q kept (the mask's border); one mask or one
    per image."""
    repaint = repaint.expand(x.shape[0], *repaint.shape[1:])
    diffs = []
    for dim in (-1, -2):
        pairs = repaint ^ repaint.roll(-1, dim)
        valid = torch.ones_like(pairs)
        valid.select(dim, -1).fill_(False)  # roll wraps around: the last row/column has no neighbour
        d = (x - x.roll(-1, dim)).abs()
        diffs.append(d[(pairs & valid).expand_as(d)])
    return float(torch.cat(diffs).mean())


# -- ceilings: what the visible part alone determines ---------------------------------------------------------------
def knn_ceiling(x: torch.Tensor, y: torch.Tensor, repaint: torch.Tensor, k: int = 5) -> float:
    """A k-NN vote on each digit's visible pixels among the training digits (one mask, or one per digit)."""
    train = load_dataset("mnist5k", "train")
    keep = (~repaint).expand(x.shape[0], *repaint.shape[1:]).flatten(1).float()
    t = train.x.flatten(1)
    # squared distance over the visible pixels: sum_p keep (x - t)^2, expanded
    d = (keep * x.flatten(1).square()).sum(1, keepdim=True) - 2 * (keep * x.flatten(1)) @ t.T + keep @ t.square().T
    votes = train.labels[d.topk(k, largest=False).indices]
    return float((votes.mode(1).values == y).float().mean())


class VisibleCNN(nn.Module):
    """Conv(16) - pool - Conv(32) - pool - FC(128) - FC(10) on the masked digit and its mask (2 x 28 x 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def visible_part_classifier(mask: str | None, epochs: int, train_n: int | None = None,
                            seed: int = 0) -> VisibleCNN:
    """A small CNN trained on the training digits with `mask` applied (None: the whole digit), input
    `masked_condition(x, mask)`; strokes: fresh masks per digit and epoch. AdamW, batch 64, `epochs` epochs."""
    train = load_dataset("mnist5k", "train")
    x, y = train.x[:train_n], train.labels[:train_n]
    torch.manual_seed(seed)
    net = VisibleCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        repaint = (torch.zeros(1, 1, 28, 28, dtype=torch.bool) if mask is None
                   else split_masks(mask, len(x), STROKE_SEED + 1 + epoch))
        inputs = masked_condition(x, repaint)
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(net(inputs[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: VisibleCNN, x: torch.Tensor, y: torch.Tensor, repaint: torch.Tensor) -> float:
    return float((net(masked_condition(x, repaint)).argmax(1) == y).float().mean())


def ceilings(masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, epochs: int,
             train_n: int | None) -> dict[str, dict[str, float]]:
    """Per mask (and "none", the whole digit): the 5-NN vote, and the trained classifier's accuracy on the n
    digits and on the whole held-out split, with the seconds it took to train."""
    test = load_dataset("mnist5k", "test")
    out = {}
    for mask in ["none", *masks]:
        t0 = time.time()
        net = visible_part_classifier(None if mask == "none" else mask, epochs, train_n)
        seconds = time.time() - t0
        whole = (torch.zeros(1, 1, 28, 28, dtype=torch.bool) if mask == "none"
                 else split_masks(mask, len(test)))
        here = whole if mask == "none" else masks[mask]
        out[mask] = {"knn": knn_ceiling(x, y, here), "classifier": accuracy(net, x, y, here),
                     "classifier_all": accuracy(net, test.x, test.labels, whole), "train_seconds": seconds}
        print(mask, out[mask], flush=True)
    return out


# -- the mask-conditioned model --------------------------------------------------------------------------------------
def train_inpaint_model(run: Path, steps: int, extra: list[str]) -> None:
    """The default image recipe on mnist5k plus data.inpaint="all" (boxes, strokes, halves), `steps` steps; a run
    already there is kept (delete it to retrain)."""
    from diffusa.train import diffusion_engine

    if (run / "model.safetensors").exists():
        print(f"{run}: trained already, kept", flush=True)
        return
    cfg = load_config(overrides=["data.name='mnist5k'", "data.inpaint='all'", f"train.steps={steps}", *extra])
    t0 = time.time()
    diffusion_engine(cfg, run, progress=False).fit()
    print(f"{run}: {steps} steps in {time.time() - t0:.0f} s", flush=True)


# -- the benchmark ---------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    ap.add_argument("--jump", type=int, default=5, help="RePaint's jump length and passes")
    ap.add_argument("--models", nargs="*", default=MODELS, help="shipped models to edit and inpaint with (none: "
                                                                "the ceilings and the mask-conditioned model only)")
    ap.add_argument("--inpaint-model", default="runs/inpaint", help="the mask-conditioned run (rows are 'not yet "
                                                                     "measured' while it is missing)")
    ap.add_argument("--train-inpaint-model", metavar="RUN", help="train the mask-conditioned model here first "
                                                                  "(unless trained already), then measure it")
    ap.add_argument("--train-steps", type=int, default=4500, help="its training steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="its extra config overrides")
    ap.add_argument("--seed", type=int, default=0, help="the sampling seed of every edit")
    ap.add_argument("--mask-guidance", type=float, nargs="*", default=[], metavar="W",
                    help="also the mask-conditioned model's default with mask guidance at these scales (a model "
                         "trained with data.inpaint_dropout > 0)")
    ap.add_argument("--guided-repaint", action="store_true",
                    help="also RePaint's jumps with mask guidance at each --mask-guidance scale")
    ap.add_argument("--mask-autoguidance", type=float, nargs="*", default=[], metavar="W",
                    help="also its default autoguided at these scales (against the snapshot at train.guide_at)")
    ap.add_argument("--default-and-guided", action="store_true",
                    help="of the mask-conditioned model's base variants, only its default (with the guided ones)")
    ap.add_argument("--ceiling-epochs", type=int, default=10, help="epochs of each visible-part classifier")
    ap.add_argument("--raw", default="docs/results/raw/editing.json")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--out", default="docs/results/editing.md")
    ap.add_argument("--quick", action="store_true", help="seconds-long check, everything tiny, in ./quick")
    args = ap.parse_args()
    train_n = None
    if args.quick:  # 10 digits, 4 steps, jumps 2 x 2, mnist-pixel, a tiny model trained 3 steps, 1-epoch ceilings
        args.n, args.steps, args.jump, args.models, args.ceiling_epochs, train_n = 10, 4, 2, ["mnist-pixel"], 1, 500
        args.train_inpaint_model, args.train_steps = "quick/runs/inpaint", 3
        args.set = [*args.set, "model.net.channels=8", "train.warmup=1", "train.sample_every=0"]
        args.raw, args.img = "quick/raw/editing.json", "quick/img"
        args.mask_guidance, args.mask_autoguidance = args.mask_guidance or [2.0], args.mask_autoguidance or [2.0]
    try:
        if args.train_inpaint_model:
            args.inpaint_model = args.train_inpaint_model
            train_inpaint_model(Path(args.train_inpaint_model), args.train_steps, args.set)
        run(args, train_n)
    except DiffusaError as e:  # bad input (a damaged run, a wrong setting): one line, as the CLI says it
        raise SystemExit(f"error: {e}") from None


def run(args: argparse.Namespace, train_n: int | None) -> None:
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    x, y, idx = held_out(args.n)
    test = load_dataset("mnist5k", "test")
    ref, _ = classify(test.x)
    masks = {m: split_masks(m, len(test))[idx] if m == "strokes" else split_masks(m, 1) for m in MASKS}
    rec: dict = {"n": args.n, "steps": args.steps, "seed": args.seed, "img2img": [], "inpaint": [],
                 "stroke_seed": STROKE_SEED,
                 "ceiling": ceilings(masks, x, y, args.ceiling_epochs, train_n)}
    pipes = {name: diffusa.load(name) for name in args.models}
    sweep = {}
    for name, pipe in pipes.items():
        cond = {"label": y} if pipe.is_text else {}
        for s in STRENGTHS:
            t0 = time.time()
            res = pipe.img2img(x, s, steps=args.steps, seed=args.seed, **cond)
            feats, probs = classify(res.samples)
            row = {"model": name, "strength": s, "t_start": res.settings["t_start"], "nfe": res.settings["nfe"],
                   "agreement": float((probs.argmax(1) == y).float().mean()),
                   "l2": float((res.samples - x).flatten(1).norm(dim=1).mean()),
                   "fd": frechet_distance(feats, ref), "seconds": time.time() - t0}
            rec["img2img"].append(row)
            sweep[(name, s)] = res.samples
            print(row, flush=True)
            write_json(Path(args.raw), rec)
    model = Path(args.inpaint_model)
    mask_pipe = diffusa.load(model) if (model / "model.safetensors").exists() else None
    rec["inpaint_model"] = str(model) if mask_pipe is not None else None
    jobs = [(name, pipe, v, {"sampler": sp, "jump_length": j, "jump_n_sample": r})
            for name, pipe in pipes.items() for v, (sp, j, r) in variants(args.jump).items()]
    if mask_pipe is not None:  # unguided unless a variant says so, whatever the model recommends (mnist-inpaint: 3)
        unguided = {"guidance_scale": 1.0} if mask_pipe.run.recommended_guidance is not None else {}
        jobs += [(MASK_MODEL, mask_pipe, v, {**unguided, **kw})
                 for v, kw in asked_variants(args).items()]
    for mask in MASKS:
        repaint = masks[mask]
        keep = (~repaint).expand_as(x)
        original = seam(x, repaint)
        for name, pipe, variant, kw in jobs:
            cond = {"prompt": "", "guidance_scale": 1} if pipe.is_text else {}
            t0 = time.time()
            res = pipe.inpaint(x, repaint, steps=args.steps, seed=args.seed, **kw, **cond)
            row = {"model": name, "mask": mask, "variant": variant, "nfe": res.settings["nfe"],
                   "accuracy": float((classify(res.samples)[1].argmax(1) == y).float().mean()),
                   "seam": seam(res.samples, repaint), "seam_original": original,
                   "unmasked_max_abs_diff": float((res.samples[keep] - x[keep]).abs().max()),
                   "seconds": time.time() - t0}
            rec["inpaint"].append(row)
            sweep[(name, mask, variant)] = res.samples
            print(row, flush=True)
            write_json(Path(args.raw), rec)
    figures(sweep, x, masks, args, img, mask_pipe is not None)
    table(rec, args, img)


def figures(sweep: dict, x: torch.Tensor, masks: dict[str, torch.Tensor], args: argparse.Namespace, img: Path,
            with_model: bool) -> None:
    rows = slice(0, 6)

    def masked(mask: str) -> torch.Tensor:
        return torch.where(masks[mask].expand_as(x), torch.zeros(()), x)[rows]

    for name in args.models:
        short = name.split("-")[1]
        save_strip([x[rows], *(sweep[(name, s)][rows] for s in STRENGTHS)], img / f"editing_strength_{short}.png",
                   ["input", *(f"{s:g}" for s in STRENGTHS)])
        cols, labels = [x[rows]], ["input"]
        for mask in FIGURE_MASKS:
            cols += [masked(mask), *(sweep[(name, mask, v)][rows] for v in variants(args.jump))]
            labels += [f"{mask} mask", *variants(args.jump)]
        save_strip(cols, img / f"editing_inpaint_{short}.png", labels)
    if with_model:  # every mask: masked input, then the default conditional sampling
        default = next(iter(model_variants(args.jump)))
        cols, labels = [x[rows]], ["input"]
        for mask in MASKS:
            cols += [masked(mask), sweep[(MASK_MODEL, mask, default)][rows]]
            labels += [f"{mask} mask", "completed"]
        save_strip(cols, img / "editing_inpaint_model.png", labels)
        guided = [v for v in asked_variants(args) if v not in model_variants(args.jump)]  # the guided ones
        if guided:  # the centre box (the hardest mask): the default, then each guided variant
            drawn = [sweep[(MASK_MODEL, "center", v)][rows] for v in [default, *guided]]
            save_strip([x[rows], masked("center"), *drawn], img / "editing_inpaint_guidance.png",
                       ["input", "center mask", "default", *(v.split(", ")[-1] for v in guided)])


def table(rec: dict, args: argparse.Namespace, img: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name in args.models:
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
    ceil = rec["ceiling"]
    lines = [f"Held-out mnist5k digits, n = {rec['n']}, seed {rec.get('seed', 0)}, {rec['steps']} steps "
             "(benchmarks/editing.py).", "",
             "| model | strength | t_start | NFE | agreement with the source label | L2 to the input | FD |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['strength']:g} | {r['t_start']:.3f} | {r['nfe']} | {r['agreement']:.2f} | "
              f"{r['l2']:.2f} | {r['fd']:.0f} |" for r in rec["img2img"]]
    lines += ["", "Ceilings of what the visible part determines (5-NN vote among the 4,000 training digits; a small "
              "CNN trained on them with the mask applied, on these digits and on all 1,000 held-out ones):", "",
              "| mask | 5-NN, these digits | classifier, these digits | classifier, all held-out | training s |",
              "|---|---|---|---|---|"]
    lines += [f"| {m} | {c['knn']:.3f} | {c['classifier']:.3f} | {c['classifier_all']:.3f} | "
              f"{c['train_seconds']:.0f} |" for m, c in ceil.items()]
    lines += ["", "Inpainting (accuracy: the judge against the true label; the target: at least the higher ceiling "
              "on these digits minus 3 points):", "",
              "| mask | model | variant | NFE | accuracy | ceiling - 3 points met | seam (original) | "
              "max |diff| outside the mask |", "|---|---|---|---|---|---|---|---|"]
    for mask in MASKS:
        target = max(ceil[mask]["classifier"], ceil[mask]["knn"]) - TARGET_GAP
        rows = [r for r in rec["inpaint"] if r["mask"] == mask]
        lines += [f"| {mask} | {r['model']} | {r['variant']} | {r['nfe']} | {r['accuracy']:.3f} | "
                  f"{'yes' if r['accuracy'] >= target - 1e-9 else 'no'} | {r['seam']:.3f} ({r['seam_original']:.3f}) | "
                  f"{r['unmasked_max_abs_diff']:g} |" for r in rows]
        if rec.get("inpaint_model") is None:
            lines += [f"| {mask} | {MASK_MODEL} | {v} | | {NOT_MEASURED} | | | |"
                      for v in asked_variants(args)]
    emit(lines, args.out)
    print(json.dumps({"seconds": sum(r["seconds"] for r in rec["img2img"] + rec["inpaint"])
                      + sum(c["train_seconds"] for c in ceil.values())}))


if __name__ == "__main__":
    main()
