"""Latent against pixel space (Rombach et al. 2022): the same text-conditional task, diffusion on 28x28 pixels or
on an f = 4 KL autoencoder's 4x7x7 latents. Frechet distance, conditional accuracy, seconds per training step,
training time, seconds per sample and the compression factor.

    python benchmarks/guidance.py train                 # the pixel text model: runs/guidance/text
    python scripts/train_shipped_models.py ae text --text-steps 1800   # autoencoder and latent text model: runs/shipped
    python benchmarks/ldm.py eval [--n 200]
    python benchmarks/ldm.py third                      # re-time both on an idle machine; a latent run for 1/3
    python benchmarks/ldm.py report [--out docs/results/ldm.md]

`train` trains whichever of the three is missing, with the same settings as those scripts. Seconds per training
step are timed here, one model after the other on an otherwise idle machine (the runs' own logs may have shared
the CPU); training time = steps x that. Samples: DPM-Solver++(2M), 20 steps, classifier-free guidance w = 3,
prompts for digits 0..9 in turn, from the training caption templates and from templates held out of training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _tables import emit, line_figure, run_stages, stage_parser, write_json

import diffusa
from diffusa.autoencoder import AutoencoderConfig
from diffusa.config import load_config
from diffusa.data import load_dataset
from diffusa.metrics import classify, frechet_distance
from diffusa.pipelines import Pipeline
from diffusa.runs import load_run
from diffusa.tasks.autoencoder import train_autoencoder
from diffusa.text import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, digit_caption
from diffusa.train import diffusion_engine, last_log, snapshots
from diffusa.viz import save_image_grid

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parent.parent / ".cache" / "matplotlib"))

TEXT = ["model.conditioning='text'", "train.sample_every=0", "train.checkpoint_every=200"]
LATENT_NET = ["model.net.channels=32"]  # as scripts/train_shipped_models.py


def cmd_train(args: argparse.Namespace) -> None:
    base = [f"data.name='{args.data}'", *TEXT, *args.set]
    pixel, ae, latent = Path(args.pixel_run), Path(args.ae), Path(args.latent_run)
    if not (pixel / "model.safetensors").exists():
        diffusion_engine(load_config(overrides=[*base, f"train.steps={args.pixel_steps}"]), pixel, progress=False).fit()
    if not (ae / "config.json").exists():
        train_autoencoder(args.data, ae, AutoencoderConfig(channels=args.ae_channels, latent_channels=4),
                          steps=args.ae_steps, progress=False)
    if not (latent / "model.safetensors").exists():
        cfg = load_config(overrides=[*base, *LATENT_NET, f"data.latent='{ae.resolve()}'",
                                     f"train.steps={args.latent_steps}", *args.latent_set])
        snaps = [round(args.latent_steps * f) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3)]
        diffusion_engine(cfg, latent, progress=False).fit(on_step=snapshots(snaps))


def step_seconds(run: Path, repeats: int) -> float:
    """Median seconds of one training step of this run's configuration (after two warm-up steps)."""
    cfg = load_config(base=json.loads((run / "config.json").read_text())["config"],
                      overrides=[f"train.steps={repeats + 3}", "train.sample_every=0", "train.checkpoint_every=0"])
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        diffusion_engine(cfg, Path(tmp) / "t", progress=False).fit(on_step=lambda _: stamps.append(time.perf_counter()))
    times = [b - a for a, b in itertools.pairwise(stamps[2:])]  # after two warm-up steps
    return statistics.median(times)


def draw(pipe: Pipeline, prompts: str | list[str], scale: float, steps: int, n: int | None = None) -> torch.Tensor:
    """Images (decoded) for these prompts: classifier-free guidance w = scale against the empty caption,
    DPM-Solver++(2M), every sample in one batch with x_T from seed 0."""
    n = len(prompts) if n is None else n
    return pipe(prompts, n=n, sampler="dpmpp_2m", steps=steps, guidance_scale=scale, seed=0, batch_size=n).samples


def quality(pipe: Pipeline, labels: torch.Tensor, ref: torch.Tensor, args: argparse.Namespace) -> dict:
    """{split: (FD, conditional accuracy, images)} for prompts from the training and the held-out templates."""
    out = {}
    for split, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
        prompts = [digit_caption(int(y), templates[i % len(templates)]) for i, y in enumerate(labels.tolist())]
        x = draw(pipe, prompts, args.scale, args.sample_steps)
        feats, probs = classify(x)
        out[split] = (frechet_distance(feats, ref), float((probs.argmax(1) == labels).float().mean()), x)
    return out


def timing(pipe: Pipeline, path: Path, args: argparse.Namespace) -> dict:
    """Seconds per training step of the run's configuration, the training time that makes, and the median seconds
    of `diffusa generate`'s work (16 images, --gen-steps steps, w, decoded)."""
    sps = step_seconds(path, args.time_repeats)
    gen = []
    for _ in range(3):
        t0 = time.perf_counter()
        draw(pipe, digit_caption(7, TRAIN_TEMPLATES[0]), args.scale, args.gen_steps, n=16)
        gen.append(time.perf_counter() - t0)
    return {"step_seconds": sps, "train_seconds": sps * last_log(path).get("step", 0),
            "generate16_seconds": statistics.median(gen)}


def cmd_third(args: argparse.Namespace) -> None:
    """Time both configurations again (on an idle machine), then train a latent model for a third of the pixel
    model's training time, with its own full learning-rate schedule, and measure it."""
    raw = Path(args.raw) / "ldm.json"
    rec = json.loads(raw.read_text())
    for name, path in (("pixel", Path(args.pixel_run)), ("latent", Path(args.latent_run))):
        m = rec["models"][name]
        m.update(timing(diffusa.load(path), path, args))
        for c in m["curve"]:
            c["train_seconds"] = c["step"] * m["step_seconds"]
        print(json.dumps({name: {k: m[k] for k in ("step_seconds", "train_seconds", "generate16_seconds")}}),
              flush=True)
    write_json(raw, rec)
    steps = max(1, int(rec["models"]["pixel"]["train_seconds"] / 3 / rec["models"]["latent"]["step_seconds"]))
    third = Path(args.third_run)
    if not (third / "model.safetensors").exists():
        base = json.loads((Path(args.latent_run) / "config.json").read_text())["config"]
        diffusion_engine(load_config(base=base, overrides=[f"train.steps={steps}"]), third, progress=False).fit()
    test = load_dataset(args.data, "test")
    ref, _ = classify(test.x)
    labels = torch.arange(args.n) % 10
    m = {"steps": steps, "train_seconds": steps * rec["models"]["latent"]["step_seconds"]}
    for split, (fd, acc, x) in quality(diffusa.load(third), labels, ref, args).items():
        m[split] = {"fd": fd, "accuracy": acc}
        save_image_grid(x[:100], Path(args.img) / f"ldm_latent_third_{split}.png", nrow=10)
    rec["models"]["latent_third"] = m
    print(json.dumps({"latent_third": m}), flush=True)
    write_json(raw, rec)


def cmd_eval(args: argparse.Namespace) -> None:
    raw = Path(args.raw) / "ldm.json"
    test = load_dataset(args.data, "test")
    ref, _ = classify(test.x)
    labels = torch.arange(args.n) % 10
    rec: dict = {"n": args.n, "steps": args.sample_steps, "scale": args.scale, "gen_steps": args.gen_steps,
                 "models": {}}
    ae_meta = json.loads((Path(args.ae) / "config.json").read_text())
    rec["autoencoder"] = {k: ae_meta[k] for k in ("steps", "train_seconds", "scale_factor", "held_out")}
    for name, path in (("pixel", Path(args.pixel_run)), ("latent", Path(args.latent_run))):
        pipe = diffusa.load(path)
        log = last_log(path)
        m = {"steps": log.get("step"), "logged_seconds": log.get("elapsed_s"), "data_shape": list(pipe.data_shape),
             "image_shape": list(test.x.shape[1:]), "parameters": sum(p.numel() for p in pipe.run.net.parameters())}
        m.update(timing(pipe, path, args))
        sps = m["step_seconds"]
        for split, (fd, acc, x) in quality(pipe, labels, ref, args).items():
            m[split] = {"fd": fd, "accuracy": acc}
            save_image_grid(x[:100], Path(args.img) / f"ldm_{name}_{split}.png", nrow=10)
        m["curve"] = []
        for snap in sorted((path / "snapshots").glob("step_*.safetensors"), key=lambda p: int(p.stem[5:])):
            step = int(snap.stem[5:])
            # load_run, not diffusa.load: an EMA snapshot is a weights file of the run, which diffusa.load cannot name
            snap_pipe = Pipeline(load_run(path, weights=f"snapshots/{snap.name}"), f"{path} (snapshots/{snap.name})")
            q = quality(snap_pipe, labels, ref, args)
            point = {"step": step, "train_seconds": step * sps}
            for s, (fd, acc, _) in q.items():
                point.update({f"fd_{s}": fd, f"accuracy_{s}": acc})
            m["curve"].append(point)
        m["curve"].append({"step": m["steps"], "train_seconds": m["train_seconds"],
                           **{f"{k}_{s}": m[s][k] for s in ("train", "held_out") for k in ("fd", "accuracy")}})
        rec["models"][name] = m
        print(json.dumps({name: m}), flush=True)
        write_json(raw, rec)


def cmd_report(args: argparse.Namespace) -> None:
    rec = json.loads((Path(args.raw) / "ldm.json").read_text())
    p, q = rec["models"]["pixel"], rec["models"]["latent"]
    ae = rec["autoencoder"]
    comp = math.prod(p["data_shape"]) / math.prod(q["data_shape"])
    rows = [("data the diffusion model sees", "x".join(map(str, p["data_shape"])),
             "x".join(map(str, q["data_shape"])), f"{comp:.0f}x fewer numbers"),
            ("network parameters", f"{p['parameters'] / 1e6:.2f} M", f"{q['parameters'] / 1e6:.2f} M", ""),
            ("seconds per training step (batch 64)", f"{p['step_seconds']:.3f}", f"{q['step_seconds']:.3f}",
             f"{q['step_seconds'] / p['step_seconds']:.2f}x"),
            ("training steps", str(p["steps"]), str(q["steps"]), ""),
            ("training time (steps x s/step)", f"{p['train_seconds']:.0f} s", f"{q['train_seconds']:.0f} s",
             f"{q['train_seconds'] / p['train_seconds']:.2f}x"),
            (f"seconds for 16 images, {rec.get('gen_steps', 20)} steps, w = 3", f"{p['generate16_seconds']:.2f}",
             f"{q['generate16_seconds']:.2f}", f"{q['generate16_seconds'] / p['generate16_seconds']:.2f}x")]
    for split, name in (("train", "training templates"), ("held_out", "held-out templates")):
        rows.append((f"FD, {name}", f"{p[split]['fd']:.1f}", f"{q[split]['fd']:.1f}",
                     f"{q[split]['fd'] / p[split]['fd']:.2f}x"))
        rows.append((f"conditional accuracy, {name}", f"{p[split]['accuracy']:.3f}", f"{q[split]['accuracy']:.3f}",
                     ""))
    lines = [f"{args.data}; {rec['n']} samples per row, DPM-Solver++(2M) {rec['steps']} steps, w = {rec['scale']:g}. "
             f"Autoencoder (trained once, shared by every latent model): {ae['steps']} steps, "
             f"{ae['train_seconds']:.0f} s; "
             f"held-out reconstruction {json.dumps(ae['held_out'])}.", "",
             "| | pixel space | latent space | latent / pixel |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    t = rec["models"].get("latent_third")
    if t:
        lines += ["", f"A latent model trained for a third of the pixel model's time ({t['steps']} steps, "
                      f"{t['train_seconds']:.0f} s, its own full learning-rate schedule; `benchmarks/ldm.py third`):",
                  "", "| | pixel space, full time | latent space, a third of it | latent / pixel |",
                  "|---|---|---|---|"]
        for split, name in (("train", "training templates"), ("held_out", "held-out templates")):
            lines.append(f"| FD, {name} | {p[split]['fd']:.1f} | {t[split]['fd']:.1f} | "
                         f"{t[split]['fd'] / p[split]['fd']:.2f}x |")
            lines.append(f"| conditional accuracy, {name} | {p[split]['accuracy']:.3f} | "
                         f"{t[split]['accuracy']:.3f} | |")
    lines += ["", "The latent model along its training (EMA snapshots; time = steps x seconds per step):", "",
              "| latent step | training time | time / pixel model's | FD (training templates) | accuracy | "
              "FD (held-out templates) | accuracy |", "|---|---|---|---|---|---|---|"]
    for c in q.get("curve", []):
        lines.append(f"| {c['step']} | {c['train_seconds']:.0f} s | {c['train_seconds'] / p['train_seconds']:.2f} | "
                     f"{c['fd_train']:.1f} | {c['accuracy_train']:.3f} | {c['fd_held_out']:.1f} | "
                     f"{c['accuracy_held_out']:.3f} |")
    emit(lines, args.out)
    if q.get("curve"):
        curve = q["curve"]
        line_figure([("latent space (EMA snapshots)", [c["train_seconds"] / 60 for c in curve],
                      [c["fd_train"] for c in curve], {"marker": "o"}),
                     ("pixel space, end of training", [p["train_seconds"] / 60], [p["train"]["fd"]],
                      {"marker": "s", "ls": ""}),
                     *([("latent space, trained for a third of the pixel time", [t["train_seconds"] / 60],
                         [t["train"]["fd"]], {"marker": "D", "ls": ""})] if t else [])],
                    Path(args.img) / "ldm_fd_vs_time.png", xlabel="training minutes (steps x s/step)",
                    ylabel="Frechet distance", title="Latent against pixel space, text prompts",
                    hline=(p["train"]["fd"], "pixel model's FD"))


def main() -> None:
    ap = stage_parser(__doc__, ["train", "eval", "third", "report"])
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--pixel-run", default="runs/guidance/text")
    ap.add_argument("--ae", default="runs/shipped/ae")
    ap.add_argument("--latent-run", default="runs/shipped/text")
    ap.add_argument("--third-run", default="runs/ldm/latent_third", help="third: the latent model trained for a "
                                                                        "third of the pixel model's time")
    ap.add_argument("--pixel-steps", type=int, default=1200)
    ap.add_argument("--latent-steps", type=int, default=1800)
    ap.add_argument("--ae-steps", type=int, default=800)
    ap.add_argument("--ae-channels", type=int, default=16)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--gen-steps", type=int, default=20, help="eval: steps of the timed 16-image generation")
    ap.add_argument("--time-repeats", type=int, default=10)
    ap.add_argument("--latent-set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    run_stages(ap, args, {"train": cmd_train, "eval": cmd_eval, "third": cmd_third, "report": cmd_report}, quick)


def quick(args: argparse.Namespace) -> None:
    """8x8 digits, 3 training steps, tiny networks, 20 samples, in ./quick."""
    args.data, args.raw, args.img = "digits", "quick/raw", "quick/img"
    args.pixel_run, args.ae, args.latent_run = "quick/runs/pixel", "quick/runs/ae", "quick/runs/latent"
    args.third_run = "quick/runs/latent_third"
    args.pixel_steps = args.latent_steps = args.ae_steps = 3
    args.ae_channels, args.n, args.sample_steps, args.time_repeats, args.gen_steps = 8, 20, 3, 2, 3
    args.set = ["model.net.channels=8", "model.text.width=16", "model.text.depth=1", "model.text.heads=2"]
    args.latent_set = ["model.net.channels=8"]


if __name__ == "__main__":
    main()
