"""Guidance on mnist5k: conditional accuracy and Frechet distance against the guidance scale, for classifier-free
guidance (Ho & Salimans 2021) and classifier guidance (Dhariwal & Nichol 2021), and text prompts written with
templates never seen in training.

    python benchmarks/guidance.py train [--steps 800]      # class- and text-conditional runs, a classifier
    python benchmarks/guidance.py eval  [--n 200]          # the sweeps
    python benchmarks/guidance.py report [--out docs/results/guidance.md]
    python benchmarks/guidance.py prompts --text-run mnist-text    # one text run (and its snapshots), every template

The prompts stage measures a text-conditional run (a folder or a shipped model's name; with its EMA snapshots in
RUN/snapshots, if any) on every (digit, template) pair of the training and of the held-out templates, each the
same number of times, at the --prompt-scales, and reports the accuracy per held-out template.

The class-conditional run (label dropout 0.1) serves both kinds of guidance: classifier-free guidance mixes its
conditional and null-label outputs; classifier guidance steers its null-label (unconditional) output with a
noise-aware classifier trained under the same process. Samples: DPM-Solver++(2M), 20 steps, classes 0..9 in
turn, one seed. Conditional accuracy is the project's digit classifier's argmax against the requested class;
FD is in its features against the held-out split.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _tables import emit, run_stages, stage_parser, write_json

import diffusa
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.metrics import classify, frechet_distance
from diffusa.pipelines import Pipeline
from diffusa.runs import load_run, read_run_meta
from diffusa.tasks.classifier import train_classifier
from diffusa.text import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, digit_caption
from diffusa.train import diffusion_engine
from diffusa.viz import save_image_grid

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parent.parent / ".cache" / "matplotlib"))

CFG_SCALES = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0]
CLF_SCALES = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
CLF_COND_SCALES = [1.0, 2.0, 4.0]  # classifier guidance of the conditional model (Dhariwal & Nichol 2021, Table 4)
TEXT_SCALES = [1.0, 3.0]
PROMPT_SCALES = [3.0, 5.0]


def cmd_train(args: argparse.Namespace) -> None:
    root = Path(args.root)
    for name, cond in (("class", "class"), ("text", "text")):
        out = root / name
        if (out / "model.safetensors").exists():
            print(f"{name}: already trained", flush=True)
            continue
        own = [o for o in args.set if cond == "text" or not o.startswith("model.text")]  # text settings: text run
        cfg = load_config(overrides=[f"data.name='{args.data}'", f"model.conditioning='{cond}'",
                                     f"train.steps={args.steps}", "train.sample_every=0",
                                     "train.checkpoint_every=200", *own])
        t0 = time.time()
        diffusion_engine(cfg, out, progress=False, resume=(out / "train_state.json").exists()).fit()
        print(json.dumps({"run": name, "steps": args.steps, "seconds": time.time() - t0}), flush=True)
    if not (root / "classifier" / "config.json").exists():
        t0 = time.time()
        train_classifier(root / "class", root / "classifier", steps=args.classifier_steps, progress=False)
        print(json.dumps({"run": "classifier", "steps": args.classifier_steps, "seconds": time.time() - t0}),
              flush=True)


def cmd_eval(args: argparse.Namespace) -> None:
    root, raw = Path(args.root), Path(args.raw) / "guidance.json"
    rec = json.loads(raw.read_text()) if raw.exists() else {"cfg": {}, "classifier": {}, "text": {}}
    test = load_dataset(args.data, "test")
    ref, _ = classify(test.x)
    labels = torch.arange(args.n) % 10

    def draw(pipe: Pipeline, tag: str, **request) -> torch.Tensor:
        """All n samples in one batch, x_T from seed 0 (DPM-Solver++(2M) draws no further noise)."""
        x = pipe(n=args.n, sampler="dpmpp_2m", steps=args.sample_steps, seed=0, batch_size=args.n, **request).samples
        save_image_grid(x[:100], root / "grids" / f"{tag}.png", nrow=10)
        return x

    def score(x: torch.Tensor, want: torch.Tensor) -> dict:
        feats, probs = classify(x)
        return {"fd": frechet_distance(feats, ref), "accuracy": float((probs.argmax(1) == want).float().mean())}

    pipe = diffusa.load(root / "class")
    for w in args.cfg_scales:
        if str(w) not in rec["cfg"]:
            rec["cfg"][str(w)] = score(draw(pipe, f"cfg_{w:g}", label=labels, guidance_scale=w), labels)
            print(json.dumps({"cfg": w, **rec["cfg"][str(w)]}), flush=True)
            write_json(raw, rec)
    classifier = root / "classifier"
    for s in args.classifier_scales:
        if str(s) not in rec["classifier"]:
            # guidance_scale 0: the model's null-label (unconditional) output, which the classifier steers
            x = draw(pipe, f"classifier_{s:g}", label=labels, guidance_scale=0.0, classifier=classifier,
                     classifier_scale=s)
            rec["classifier"][str(s)] = score(x, labels)
            print(json.dumps({"classifier": s, **rec["classifier"][str(s)]}), flush=True)
            write_json(raw, rec)
    rec.setdefault("classifier_on_conditional", {})
    for s in args.classifier_cond_scales:
        if str(s) not in rec["classifier_on_conditional"]:
            # no guidance_scale: the label-conditional model itself, steered by the classifier
            x = draw(pipe, f"classifier_cond_{s:g}", label=labels, classifier=classifier, classifier_scale=s)
            rec["classifier_on_conditional"][str(s)] = score(x, labels)
            print(json.dumps({"classifier_on_conditional": s, **rec["classifier_on_conditional"][str(s)]}), flush=True)
            write_json(raw, rec)
    text = diffusa.load(root / "text")
    for split, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
        prompts = [digit_caption(int(y), templates[i % len(templates)]) for i, y in enumerate(labels.tolist())]
        for w in args.text_scales:
            key = f"{split}@{w:g}"
            if key not in rec["text"]:
                rec["text"][key] = score(draw(text, f"text_{key}", prompt=prompts, guidance_scale=w), labels)
                print(json.dumps({"text": key, **rec["text"][key]}), flush=True)
                write_json(raw, rec)
    rec["n"], rec["steps"] = args.n, args.sample_steps
    write_json(raw, rec)


def prompt_grid(templates: list[str], n: int) -> tuple[list[str], torch.Tensor, list[int]]:
    """Prompts covering every (digit, template) pair equally often (about n in all): prompts, labels, template
    index of each."""
    reps = max(1, round(n / (10 * len(templates))))
    pairs = [(d, t) for _ in range(reps) for t in range(len(templates)) for d in range(10)]
    return ([digit_caption(d, templates[t]) for d, t in pairs], torch.tensor([d for d, _ in pairs]),
            [t for _, t in pairs])


def cmd_prompts(args: argparse.Namespace) -> None:
    """Accuracy of one text run (and of its EMA snapshots) on the training and the held-out templates."""
    from diffusa.shipped import run_path

    path = run_path(args.text_run or str(Path(args.root) / "text"))
    raw = Path(args.raw) / "guidance_prompts.json"
    rec = json.loads(raw.read_text()) if raw.exists() else {}
    cell = rec.setdefault(f"{args.text_run or 'text'}, n {args.n}", {"path": str(path), "n": args.n, "rows": {}})
    ref, _ = classify(load_dataset(args.data, "test").x)
    weights = [] if args.final_only else [(int(p.stem[5:]), f"snapshots/{p.name}")
                                          for p in (path / "snapshots").glob("step_*.safetensors")]
    state = path / "train_state.json"  # a training folder; a shipped model records its steps in config.json
    meta = read_run_meta(path)
    if not state.exists() and "shipped" not in meta:
        raise SystemExit(f"{path}: neither a training folder (train_state.json) nor a shipped model")
    final_step = json.loads(state.read_text())["step"] if state.exists() else meta["shipped"]["steps"]
    for step, w_file in [*sorted(weights), (final_step, "model.safetensors")]:
        # load_run, not diffusa.load: an EMA snapshot is a weights file of the run, which diffusa.load cannot name
        pipe = Pipeline(load_run(path, weights=w_file), f"{path} ({w_file})")
        for w in args.prompt_scales:
            key = f"{step}@{w:g}"
            if key in cell["rows"]:
                continue
            row: dict = {"step": step, "scale": w}
            for split, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
                prompts, labels, which = prompt_grid(templates, args.n)
                # every prompt in one batch, x_T from seed 0
                x = pipe(prompts, sampler=args.prompt_sampler, steps=args.sample_steps, guidance_scale=w, seed=0,
                         batch_size=len(prompts)).samples
                feats, probs = classify(x)
                hit = (probs.argmax(1) == labels).float()
                row[split] = float(hit.mean())
                row[f"fd_{split}"] = frechet_distance(feats, ref)
                if split == "held_out":
                    row["per_template"] = {templates[t]: float(hit[torch.tensor(which) == t].mean())
                                           for t in range(len(templates))}
                    save_image_grid(x[:100], Path(args.root) / "grids" / f"prompts_{step}_{w:g}.png", nrow=10)
            cell["rows"][key] = row
            write_json(raw, rec)
            print(json.dumps({"run": args.text_run, **row}), flush=True)


def prompts_report(raw: Path) -> list[str]:
    """The prompts stage's table: accuracy on training and held-out templates per run, step and scale."""
    if not (raw / "guidance_prompts.json").exists():
        return []
    rec = json.loads((raw / "guidance_prompts.json").read_text())
    lines = ["", "| text run, --n | training step | w | training templates | held-out templates | "
             "FD (held-out) | worst held-out template |", "|---|---|---|---|---|---|---|"]
    for name, cell in rec.items():
        for row in sorted(cell["rows"].values(), key=lambda r: (r["step"], r["scale"])):
            worst = min(row["per_template"].items(), key=lambda kv: kv[1])
            lines.append(f"| {name} | {row['step']} | {row['scale']:g} | {row['train']:.3f} | "
                         f"{row['held_out']:.3f} | {row['fd_held_out']:.1f} | \"{worst[0]}\" {worst[1]:.2f} |")
    return lines


def cmd_report(args: argparse.Namespace) -> None:
    from diffusa.viz import _plt

    rec = json.loads((Path(args.raw) / "guidance.json").read_text())
    lines = [f"{args.data}, {rec.get('n')} samples per row (classes 0..9 in turn), DPM-Solver++(2M) "
             f"{rec.get('steps')} steps, one seed.", "",
             "| guidance | scale | conditional accuracy | FD |", "|---|---|---|---|"]
    names = {"cfg": "classifier-free (w)", "classifier": "classifier on the unconditional model (s)",
             "classifier_on_conditional": "classifier on the conditional model (s)"}
    for kind, name in names.items():
        for s, v in sorted(rec.get(kind, {}).items(), key=lambda kv: float(kv[0])):
            lines.append(f"| {name} | {float(s):g} | {v['accuracy']:.3f} | {v['fd']:.1f} |")
    lines += ["", "| text prompts | guidance w | conditional accuracy | FD |", "|---|---|---|---|"]
    for k, v in rec["text"].items():
        split, w = k.split("@")
        lines.append(f"| {'training templates' if split == 'train' else 'held-out templates'} | {w} | "
                     f"{v['accuracy']:.3f} | {v['fd']:.1f} |")
    emit(lines + prompts_report(Path(args.raw)), args.out)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, label in (("cfg", "classifier-free, w"), ("classifier", "classifier, s"),
                        ("classifier_on_conditional", "classifier on the conditional model, s")):
        pts = sorted((float(s), v) for s, v in rec.get(kind, {}).items())
        ax.plot([v["accuracy"] for _, v in pts], [v["fd"] for _, v in pts], marker="o", label=label)
        for s, v in pts:
            ax.annotate(f"{s:g}", (v["accuracy"], v["fd"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel="conditional accuracy", ylabel="Frechet distance", title=f"Guidance trade-off ({args.data})")
    ax.legend()
    fig.tight_layout()
    Path(args.img).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.img) / "guidance_tradeoff.png", dpi=120)
    print(f"wrote {Path(args.img) / 'guidance_tradeoff.png'}")


def main() -> None:
    ap = stage_parser(__doc__, ["train", "eval", "prompts", "report"])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--root", default="runs/guidance")
    ap.add_argument("--steps", type=int, default=800, help="train: steps per run")
    ap.add_argument("--sample-steps", type=int, default=20, help="eval: DPM-Solver++(2M) steps")
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cfg-scales", type=float, nargs="+", default=CFG_SCALES)
    ap.add_argument("--classifier-scales", type=float, nargs="+", default=CLF_SCALES)
    ap.add_argument("--classifier-cond-scales", type=float, nargs="+", default=CLF_COND_SCALES)
    ap.add_argument("--text-scales", type=float, nargs="+", default=TEXT_SCALES)
    ap.add_argument("--text-run", help="prompts: a text run folder or shipped model (default ROOT/text)")
    ap.add_argument("--prompt-scales", type=float, nargs="+", default=PROMPT_SCALES)
    ap.add_argument("--prompt-sampler", default="dpmpp_2m",
                    help="prompts: the sampler (\"consistency\" for a distilled student, with --sample-steps 1)")
    ap.add_argument("--final-only", action="store_true", help="prompts: the final weights only, no snapshots")
    args = ap.parse_args()
    run_stages(ap, args, {"train": cmd_train, "eval": cmd_eval, "prompts": cmd_prompts, "report": cmd_report},
               quick)


def quick(args: argparse.Namespace) -> None:
    """8x8 digits, 3 training steps, tiny networks, 20 samples, two scales each, in ./quick."""
    args.data, args.root, args.raw, args.img = "digits", "quick/runs", "quick/raw", "quick/img"
    args.steps, args.classifier_steps, args.n, args.sample_steps = 3, 3, 20, 3
    args.cfg_scales, args.classifier_scales, args.text_scales = [0.0, 2.0], [0.0, 2.0], [2.0]
    args.prompt_scales = [2.0]
    args.classifier_cond_scales = [1.0]
    args.set = ["model.net.channels=8", "model.text.width=16", "model.text.depth=1", "model.text.heads=2",
                "train.sample_steps=3", "train.sample_n=8"]

if __name__ == "__main__":
    main()
