"""Reproduction of Nichol & Dhariwal 2021 ("Improved DDPM") at mnist5k scale: docs/reproductions/iddpm.md.

Five runs on mnist5k with the same network, batch, learning rate and number of steps, all eps-prediction:

    a  linear betas, L_simple, fixed sigma^2 = beta
    b  cosine, L_simple, fixed variance (beta and beta-tilde both evaluated)
    c  cosine, L_hybrid (lambda = 0.001), learned Sigma (eq. 15)
    d  cosine, L_vlb, learned Sigma, importance-sampled t (Sec. 3.3)
    e  cosine, L_vlb, learned Sigma, uniform t (only for the paper's Figure 6)

    python benchmarks/iddpm_repro.py train [--runs a b c d e] [--steps 800]   # writes RUNS/<x>, curves
    python benchmarks/iddpm_repro.py eval  [--runs a b c d e] [--n 128]       # bits/dim, FD/KID at 1000..25 steps
    python benchmarks/iddpm_repro.py report [--out docs/reproductions/iddpm_results.md]

Every stage writes its numbers to --raw (JSON, one file per run and stage) so the stages can run apart; the
report reads them and draws the paper's Figures 2, 6 and 8. During training the EMA weights' held-out bound is
estimated every --curve-every steps on the same 100 test images with the same 20 random terms each (one
generator seed), so curves of different runs differ only by their weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _tables import emit, line_figure, run_stages, stage_parser, write_json

from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.engine import Engine
from diffusa.likelihood import bits_per_dim
from diffusa.metrics import classify, frechet_distance, kernel_inception_distance
from diffusa.runs import load_run
from diffusa.samplers import sample
from diffusa.train import diffusion_engine
from diffusa.viz import save_image_grid

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parent.parent / ".cache" / "matplotlib"))

PAPER = ["process.name='ddpm'", "model.prediction='eps'", "loss.weighting='none'", "loss.time_sampler='uniform'"]
RUNS: dict[str, dict] = {
    "a": {"label": "linear, L_simple, sigma^2 = beta", "set": ["process.schedule='linear'"], "variance": "beta"},
    "b": {"label": "cosine, L_simple", "set": ["process.schedule='cosine'"], "variance": "beta"},
    "c": {"label": "cosine, L_hybrid, learned Sigma", "variance": None,
          "set": ["process.schedule='cosine'", "loss.kind='hybrid'", "model.learned_variance=true"]},
    "d": {"label": "cosine, L_vlb, learned Sigma, importance t", "variance": None,
          "set": ["process.schedule='cosine'", "loss.kind='vlb'", "model.learned_variance=true",
                  "loss.time_sampler='importance'"]},
    "e": {"label": "cosine, L_vlb, learned Sigma, uniform t", "variance": None,
          "set": ["process.schedule='cosine'", "loss.kind='vlb'", "model.learned_variance=true"]},
}
SAMPLE_STEPS = [1000, 250, 100, 50, 25]


def raw_path(args: argparse.Namespace, run: str, stage: str) -> Path:
    return Path(args.raw) / f"iddpm_{run}_{stage}.json"


def held_out_bound(denoiser, x: torch.Tensor, variance: str | None, terms: int) -> tuple[float, float]:
    res = bits_per_dim(denoiser, x, terms=terms, variance=variance or "beta_tilde",
                       generator=torch.Generator().manual_seed(0))
    return res.total, res.se


def cmd_train(args: argparse.Namespace) -> None:
    test = load_dataset("mnist5k", "test").x[:args.curve_n]
    for name in args.runs:
        out = Path(args.root) / name
        if (out / "model.safetensors").exists() and raw_path(args, name, "train").exists():
            print(f"{name}: already trained, skipping", flush=True)
            continue
        train_one(name, out, test, args)


def train_one(name: str, out: Path, test: torch.Tensor, args: argparse.Namespace) -> None:
    """Train run `name`, estimating the EMA weights' held-out bound every --curve-every steps."""
    spec = RUNS[name]
    cfg = load_config(overrides=["data.name='mnist5k'", *PAPER, *spec["set"], f"train.steps={args.steps}",
                                 "train.sample_every=0", "train.checkpoint_every=200", "train.log_every=25",
                                 *args.set])
    trainer = diffusion_engine(cfg, out, progress=False, resume=(out / "train_state.json").exists())
    curve: list[dict] = []
    clock = {"start": time.time(), "eval": 0.0}

    def on_step(tr: Engine) -> None:
        if tr.step % args.curve_every == 0 or tr.step == args.steps:
            t0 = time.time()
            bpd, se = held_out_bound(tr.task.ema_denoiser, test, spec["variance"], args.curve_terms)
            clock["eval"] += time.time() - t0
            train_s = time.time() - clock["start"] - clock["eval"]
            curve.append({"step": tr.step, "bpd": bpd, "se": se, "train_s": train_s})
            print(json.dumps({"run": name, **curve[-1]}), flush=True)

    trainer.fit(on_step=on_step)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    write_json(raw_path(args, name, "train"), {"run": name, "label": spec["label"], "steps": args.steps,
                                               "curve": curve, "log": log, "config": cfg.to_dict()})


def cmd_eval(args: argparse.Namespace) -> None:
    test = load_dataset("mnist5k", "test")
    train = load_dataset("mnist5k", "train")
    ref, _ = classify(test.x)
    floor_x = train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n]]
    floor_feats, _ = classify(floor_x)
    floor = {"fd": frechet_distance(floor_feats, ref),
             "kid": kernel_inception_distance(floor_feats, ref, subset_size=min(args.n, 100))[0]}
    for name in args.runs:
        spec = RUNS[name]
        path = raw_path(args, name, "eval")
        rec = json.loads(path.read_text()) if path.exists() else {"run": name, "label": spec["label"], "fd": {}}
        run = load_run(Path(args.root) / name)
        variances = ["beta", "beta_tilde"] if spec["variance"] else [None]
        if "bpd" not in rec:
            rec["bpd"] = {}
            for v in variances:
                t0 = time.time()
                res = bits_per_dim(run.denoiser, test.x[:args.bpd_n], terms=args.terms, variance=v or "beta_tilde",
                                   generator=torch.Generator().manual_seed(1))
                rec["bpd"][v or "learned"] = {"bpd": res.total, "se": res.se, "prior": res.prior,
                                              "n": args.bpd_n, "terms": args.terms, "seconds": time.time() - t0}
            full = bits_per_dim(run.denoiser, test.x[:args.full_n], terms=None, variance=spec["variance"] or
                                "beta_tilde", generator=torch.Generator().manual_seed(2))
            rec["terms_curve"] = {"t": full.times.tolist(), "bpd": full.terms.tolist(), "n": args.full_n,
                                  "total": full.total}
            write_json(path, rec)
            print(json.dumps({"run": name, "bpd": rec["bpd"]}), flush=True)
        if name == "e":
            continue  # e is trained only for the learning curves
        for steps in args.sample_steps:
            key = str(steps)
            if key in rec["fd"]:
                continue
            t0 = time.time()
            g = torch.Generator().manual_seed(0)
            opts = {"variance": spec["variance"]} if spec["variance"] else {}
            x = torch.cat([sample(run.denoiser, (min(args.batch, args.n - i), *run.data_shape), "ancestral", steps,
                                  spacing="even", generator=g, **opts) for i in range(0, args.n, args.batch)])
            feats, _ = classify(x)
            rec["fd"][key] = {"fd": frechet_distance(feats, ref),
                              "kid": kernel_inception_distance(feats, ref, subset_size=min(args.n, 100))[0],
                              "seconds": time.time() - t0, "n": args.n}
            save_image_grid(x[:64], Path(args.root) / f"{name}_ancestral{steps}.png")
            write_json(path, rec)
            print(json.dumps({"run": name, "steps": steps, **rec["fd"][key]}), flush=True)
        rec["floor"] = floor
        write_json(path, rec)


def cmd_report(args: argparse.Namespace) -> None:
    trains = {r: json.loads(raw_path(args, r, "train").read_text()) for r in RUNS
              if raw_path(args, r, "train").exists()}
    evals = {r: json.loads(raw_path(args, r, "eval").read_text()) for r in RUNS if raw_path(args, r, "eval").exists()}
    cols = args.sample_steps
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    floor = next((e["floor"] for e in evals.values() if "floor" in e), None)
    lines = ["| run | configuration | bits/dim (own variance) | bits/dim, sigma^2 = beta | bits/dim, beta-tilde | "
             + " | ".join(f"FD {s}" for s in cols) + " |",
             "|---|---|---|---|---|" + "---|" * len(cols)]
    for r, e in evals.items():
        b = e["bpd"]
        own = b.get("learned") or b.get(RUNS[r]["variance"])
        fmt = (lambda d: f"{d['bpd']:.3f} ± {d['se']:.3f}" if d else "–")  # noqa: E731
        fds = " | ".join(f"{e['fd'][str(s)]['fd']:.1f}" if str(s) in e["fd"] else "–" for s in cols)
        lines.append(f"| {r} | {e['label']} | {fmt(own)} | {fmt(b.get('beta'))} | {fmt(b.get('beta_tilde'))} | {fds} |")
    if floor:
        lines += ["", f"Real-vs-real floor at the same sample size: FD {floor['fd']:.1f}, KID {floor['kid']:.4g}."]
    lines += ["", "| run | " + " | ".join(f"KID {s}" for s in cols) + " |", "|---|" + "---|" * len(cols)]
    for r, e in evals.items():
        if e["fd"]:
            lines.append(f"| {r} | " + " | ".join(f"{e['fd'][str(s)]['kid']:.4g}" if str(s) in e["fd"] else "–"
                                                  for s in cols) + " |")
    emit(lines, args.out)

    # Figure 2: the bound's terms against t; Figure 6: held-out bound during training; Figure 8: FD against steps
    line_figure([(f"{r}: {e['label']}", e["terms_curve"]["t"], e["terms_curve"]["bpd"], {"lw": 1})
                 for r, e in evals.items() if "terms_curve" in e], img / "iddpm_terms.png", yscale="log",
                xlabel="t (step / T)", ylabel="bound term L_t (bits/dim)",
                title="Terms of the variational bound (cf. IDDPM Fig. 2)")
    line_figure([(f"{r}: {t['label']}", [p["step"] for p in t["curve"]], [p["bpd"] for p in t["curve"]],
                  {"marker": "o", "ms": 3}) for r, t in trains.items()], img / "iddpm_learning_curves.png",
                xlabel="training step", ylabel="held-out bound (bits/dim, EMA weights)", yscale="log",
                title="Learning curves of the bound (cf. IDDPM Fig. 6)")
    line_figure([(f"{r}: {e['label']}", sorted(int(s) for s in e["fd"]),
                  [e["fd"][str(s)]["fd"] for s in sorted(int(s) for s in e["fd"])], {"marker": "o"})
                 for r, e in evals.items() if e["fd"]], img / "iddpm_fd_vs_steps.png", xscale="log",
                xlabel="sampling steps (ancestral, even respacing)", ylabel="Frechet distance",
                title="Quality against sampling steps (cf. IDDPM Fig. 8)",
                hline=(floor["fd"], "real-vs-real floor") if floor else None)
    print(f"wrote {img}/iddpm_terms.png, iddpm_learning_curves.png, iddpm_fd_vs_steps.png")


def main() -> None:
    ap = stage_parser(__doc__, ["train", "eval", "report"])
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--root", default="runs/iddpm", help="folder of the run folders")
    ap.add_argument("--steps", type=int, default=800, help="train: steps per run (batch 64)")
    ap.add_argument("--curve-every", type=int, default=100)
    ap.add_argument("--n", type=int, default=128, help="eval: samples per Frechet distance")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample-steps", type=int, nargs="+", default=SAMPLE_STEPS)
    ap.add_argument("--bpd-n", type=int, default=500, help="eval: held-out images for bits/dim")
    ap.add_argument("--terms", type=int, default=100, help="eval: bound terms per image (unbiased estimate)")
    ap.add_argument("--full-n", type=int, default=16, help="eval: images for the all-terms curve (Figure 2)")
    ap.add_argument("--curve-n", type=int, default=100, help="train: held-out images for the learning curves")
    ap.add_argument("--curve-terms", type=int, default=20, help="train: bound terms per image for the curves")
    args = ap.parse_args()
    run_stages(ap, args, {"train": cmd_train, "eval": cmd_eval, "report": cmd_report}, quick)


def quick(args: argparse.Namespace) -> None:
    """A 20-step chain, two runs (fixed and learned variance), a few images, in ./quick."""
    args.runs, args.steps, args.curve_every, args.curve_n, args.curve_terms = ["b", "c"], 2, 1, 4, 2
    args.n, args.batch, args.sample_steps, args.bpd_n, args.terms, args.full_n = 8, 8, [4, 2], 4, 2, 2
    args.root, args.raw, args.img = "quick/runs", "quick/raw", "quick/img"
    args.set = ["process.num_steps=20", "train.sample_n=8"]

if __name__ == "__main__":
    main()
