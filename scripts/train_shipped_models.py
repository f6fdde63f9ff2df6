"""Train the models that ship inside the package and export them to src/diffusa/assets/models.

    python scripts/train_shipped_models.py            # every stage below, skipping what is already trained
    python scripts/train_shipped_models.py export reference

Stages (work folders under --work, default runs/shipped):
- ae:        a KL autoencoder, f = 4 (28x28 -> 4x7x7), 16/32 channels, on mnist5k's training split;
- text:      a text-conditional latent diffusion model on its latents (byte-level text encoder trained jointly,
             label-template captions with filler words, caption dropout 0.1 for classifier-free guidance);
- textft:    the text model trained further: the text stage's run fine-tuned (`diffusa train --init`, a fresh
             optimizer, lr 5e-4, cosine) for --textft-steps (7,628: what `--budget 20` fitted): held-out phrasings
             89.4% -> 97.8% at w = 3 (docs/guidance.md);
- pixel:     the unconditional pixel-space model with the default image configuration (the `make demo` model);
- guide:     its autoguidance guide (Karras et al. 2024): the same recipe for --guide-steps (2,605: what
             `diffusa train --data mnist5k --budget 10` fitted), shipped in mnist-pixel/guide; this stage also puts
             it into the package's mnist-pixel as it is (export does for a retrained one);
- sr:        a 4x super-resolution model, 7x7 -> 28x28 (SR3 with noise-conditioning augmentation,
             docs/super_resolution.md), the default image configuration otherwise;
- inpaint:   a mask-conditioned inpainting model (Palette: the masked digit and its mask concatenated to the input,
             random boxes, strokes and halves, a tenth of examples with nothing known for mask guidance;
             docs/editing.md), the default image configuration otherwise;
- text1:     a one-step student of the shipped mnist-text: guided consistency distillation, the guidance scale an
             input of the student (`diffusa distill --method cd --guidance-range 1,5`, docs/distillation.md);
- export:    copies both diffusion runs (EMA weights, config, the autoencoder) into the package, recording the
             command and the training time in config.json["shipped"];
- reference: stores a few fixed-seed outputs of each shipped model in tests/data, which a test reproduces.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))

from diffusa.autoencoder.nets import AutoencoderConfig  # noqa: E402
from diffusa.checkpoint import load_json, save_tensors  # noqa: E402
from diffusa.config import load_config  # noqa: E402
from diffusa.runs import GuidanceRange, recommended_sampling  # noqa: E402
from diffusa.shipped import SHIPPED, export_run, shipped_root  # noqa: E402
from diffusa.tasks.autoencoder import train_autoencoder  # noqa: E402
from diffusa.train import diffusion_engine, last_log, snapshots  # noqa: E402

# The latent network: 7x7x4 latents, no patching, two levels (7, 4) with 32/64 channels, attention (and
# cross-attention to the caption) at 4x4; 0.4x the pixel network's time per step (docs/reproductions/ldm.md).
TEXT_OVERRIDES = ["model.conditioning='text'", "model.net.channels=32", "train.label_dropout=0.1"]
# the condition is given clean at sampling (data.cond_noise=0; training still augments it, levels U(0, 0.3)): on
# 500 held-out digits, level 0 against the default 0.1 lifts the judge's accuracy 0.892 -> 0.946 and lowers FD
# 17.8 -> 15.0 (docs/super_resolution.md). cond_noise is read only when sampling: the weights do not depend on it.
SR_OVERRIDES = ["data.super_resolution=4", "data.cond_noise=0"]
# mask dropout (data.inpaint_dropout, default 0.1) gives the inpainting model the unconditional branch mask guidance
# mixes against (docs/editing.md "Mask guidance")
INPAINT_OVERRIDES = ["data.inpaint='all'"]
# a guided student's default guidance scale (config.json "guidance" "default"), as measured: the one-step text
# student at w = 5 reads 100% / 90.0% of training / held-out phrasings (w = 3: 100% / 87.8%; docs/distillation.md)
GUIDANCE_DEFAULT = {"mnist-text-1step": 5.0}
# each model's recommended sampler (config.json "sampling"), as measured
SAMPLING = {
    "mnist-pixel": {"sampler": "dpmpp_2m_sde", "steps": 20, "eta": 3.0, "autoguidance": 1.5, "guide": "guide",
                    "why": "1,000 samples at 20 steps, seeds 0-2 (docs/demo.md): at eta 3 autoguided w 1.5 by "
                           "guide/ (a ten-minute run) FD 1.24x the real-vs-real floor 14.3 (1.46x at worst), 96.2% "
                           "recognised (95.9% at worst), 40 network calls; unguided 1.25x, 95.1% (94.9%); w 2 1.68x "
                           "(seed 0); eta 1 (k-diffusion's, unguided) 1.17x, 92.7%; dpmpp_2m 30.9, unipc 31.5, ddim "
                           "33.2, ancestral 22.7 (FD, seed 0)"},
    "mnist-sr": {"sampler": "dpmpp_2m_sde", "steps": 20,
                 "why": "500 held-out digits upscaled 4x at 20 steps, condition level 0 "
                        "(docs/super_resolution.md): judge accuracy 0.946 (0.954 of the real digits'), FD 15.0; "
                        "dpmpp_2m 0.944, 16.4"},
    "mnist-inpaint": {"sampler": "ddpm", "steps": 20, "guidance_scale": 3.0,
                      "why": "the six masks of benchmarks/editing.py on all 1,000 held-out digits, ancestral steps "
                             "with the known region replaced (docs/editing.md \"Mask guidance\"): mask guidance "
                             "w = 3 against none recognised top 0.865 (0.841), bottom 0.907 (0.894), left 0.891 "
                             "(0.870), right 0.930 (0.912), centre box 0.784 (0.745), strokes 0.971 (0.971); w chosen "
                             "on 400 draws of 200 digits (w = 4 no better); RePaint 5x5 on the box 0.793 against "
                             "0.823 there, at 4x the evaluations"},
}
# how exported weights were actually trained, where not by the stage itself (config.json "shipped" "note")
TRAINED_AS = {
    "mnist-text": "these weights: the mnist-text shipped 2026-11-22 (ae text: 3,600 steps, 774 s) fine-tuned by "
                  "diffusa train --data mnist5k --init mnist-text --budget 20 --set train.lr=5e-4 --set "
                  "train.sample_every=0 --out runs/text-ft (fitted to 7,628 steps, the run --steps 7628 trains; "
                  "1,343 s; AMD EPYC, 2 cores); steps and train_seconds count both",
    "mnist-inpaint": "these weights: diffusa train --data mnist5k --set \"data.inpaint='all'\" --steps 10500 --out "
                     "runs/inpaint-mg (the inpaint stage's configuration, with previews every 400 steps, which "
                     "train_seconds includes; AMD EPYC, 2 cores)",
}
GUIDE_TRAINED_AS = ("these weights: diffusa train --data mnist5k --budget 10 --set train.sample_every=0 --out "
                    "runs/pixel-guide (fitted to 2,605 steps, the run --steps 2605 trains; AMD EPYC, 2 cores)")
REFERENCE = {"n": 4, "steps": 5, "seed": 0, "prompt": "a handwritten 3", "scale": 3.0}


def train(cfg_overrides: list[str], out: Path, steps: int, snaps: tuple[int, ...] = ()) -> None:
    """Train (or finish) a run; at each step in `snapshots`, also keep the EMA weights and the training seconds so
    far in out/snapshots (benchmarks/ldm.py measures quality against training time with them)."""
    if (out / "model.safetensors").exists() and last_log(out).get("step", 0) >= steps:
        print(f"{out}: already trained", flush=True)
        return
    cfg = load_config(overrides=["data.name='mnist5k'", f"train.steps={steps}", "train.sample_every=0",
                                 "train.checkpoint_every=200", *cfg_overrides])
    trainer = diffusion_engine(cfg, out, progress=True, resume=(out / "train_state.json").exists())
    trainer.fit(on_step=snapshots(snaps))


def stage_ae(args: argparse.Namespace) -> None:
    out = args.work / "ae"
    if (out / "config.json").exists() and "scale_factor" in json.loads((out / "config.json").read_text()):
        print(f"{out}: already trained", flush=True)
        return
    t0 = time.time()
    cfg = AutoencoderConfig(kind="kl", channels=16, channel_mult=(1, 2), latent_channels=4)
    train_autoencoder("mnist5k", out, cfg, steps=args.ae_steps, progress=True,
                      resume=(out / "train_state.json").exists())
    print(json.dumps({"stage": "ae", "seconds": round(time.time() - t0, 1)}), flush=True)


def stage_text(args: argparse.Namespace) -> None:
    snaps = tuple(round(args.text_steps * f) for f in (1 / 6, 1 / 3, 1 / 2, 2 / 3))
    train([f"data.latent='{(args.work / 'ae').resolve()}'", *TEXT_OVERRIDES], args.work / "text", args.text_steps,
          snaps)


def stage_textft(args: argparse.Namespace) -> None:
    out, text = args.work / "text-ft", args.work / "text"
    if (out / "model.safetensors").exists() and last_log(out).get("step", 0) >= args.textft_steps:
        print(f"{out}: already trained", flush=True)
        return
    if (out / "train_state.json").exists():  # an interrupted fine-tune: continue it, not start another
        argv = ["--out", str(out), "--resume"]
    elif not (text / "model.safetensors").is_file():
        raise SystemExit(f"error: textft fine-tunes the text stage's run: train it first (no {text})")
    else:
        argv = ["--init", str(text), "--steps", str(args.textft_steps), "--set", "train.lr=0.0005", "--set",
                "train.sample_every=0", "--out", str(out)]
    subprocess.run([sys.executable, "-m", "diffusa", "train", "--data", "mnist5k", *argv], check=True)


def stage_pixel(args: argparse.Namespace) -> None:
    train([], args.work / "pixel", args.pixel_steps)


def stage_guide(args: argparse.Namespace) -> None:
    recommended_sampling({"sampling": SAMPLING["mnist-pixel"]}, "SAMPLING['mnist-pixel']")  # checked first
    train([], args.work / "pixel-guide", args.guide_steps)
    dest = shipped_root() / "mnist-pixel"
    record = load_json(dest / "config.json")["shipped"]
    export_run(dest, dest, record, {"sampling": SAMPLING["mnist-pixel"]}, guide_of(args))
    print(f"added the guide to {dest}", flush=True)


def guide_of(args: argparse.Namespace) -> tuple[Path, dict[str, object]]:
    """mnist-pixel's guide (`stage_guide`): its run folder and how it was trained (its config.json "shipped")."""
    run = args.work / "pixel-guide"
    if not (run / "model.safetensors").is_file():
        raise SystemExit(f"error: mnist-pixel ships with its guide: train it first (stage guide; no {run})")
    log = last_log(run)
    return run, {"command": f"python scripts/train_shipped_models.py guide --guide-steps {args.guide_steps}",
                 "steps": log.get("step"), "train_seconds": round(log.get("elapsed_s", 0), 1),
                 "machine": "2-core CPU", "date": time.strftime("%Y-%m-%d"), "note": GUIDE_TRAINED_AS}


def stage_sr(args: argparse.Namespace) -> None:
    train(SR_OVERRIDES, args.work / "sr", args.sr_steps)


def stage_inpaint(args: argparse.Namespace) -> None:
    train(INPAINT_OVERRIDES, args.work / "inpaint", args.inpaint_steps)


def stage_text1(args: argparse.Namespace) -> None:
    from diffusa.tasks.consistency import DistillConfig, distill_engine, distill_settings

    out = args.work / "text1"
    if (out / "model.safetensors").exists():
        print(f"{out}: already trained", flush=True)
        return
    settings = distill_settings(steps=args.text1_steps, max_minutes=args.text1_minutes)
    distill_engine("mnist-text", out, settings, DistillConfig(guidance_range=(1.0, 5.0))).fit()


def stage_export(args: argparse.Namespace) -> None:
    for name, run, command in (
            ("mnist-text", args.work / "text-ft",
             f"python scripts/train_shipped_models.py ae text textft --ae-steps {args.ae_steps} "
             f"--text-steps {args.text_steps} --textft-steps {args.textft_steps}"),
            ("mnist-pixel", args.work / "pixel",
             f"python scripts/train_shipped_models.py pixel --pixel-steps {args.pixel_steps}"),
            ("mnist-sr", args.work / "sr", f"python scripts/train_shipped_models.py sr --sr-steps {args.sr_steps}"),
            ("mnist-text-1step", args.work / "text1",
             f"python scripts/train_shipped_models.py text1 --text1-steps {args.text1_steps} "
             f"--text1-minutes {args.text1_minutes:g}"),
            ("mnist-inpaint", args.work / "inpaint",
             f"python scripts/train_shipped_models.py inpaint --inpaint-steps {args.inpaint_steps}")):
        if name not in args.models:
            continue
        if not (run / "model.safetensors").is_file():
            raise SystemExit(f"error: export {name}: no trained run {run} (run its stage first)")
        log = last_log(run)
        record = {"command": command, "steps": log.get("step"), "train_seconds": round(log.get("elapsed_s", 0), 1),
                  "machine": "2-core CPU", "date": time.strftime("%Y-%m-%d")}
        if name in TRAINED_AS:
            record["note"] = TRAINED_AS[name]
        if name == "mnist-text":
            record["autoencoder_train_seconds"] = round(load_json(args.work / "ae" / "config.json")["train_seconds"], 1)
            first = last_log(args.work / "text")  # the run textft continues: both trainings counted
            record["steps"] += first.get("step", 0)
            record["train_seconds"] = round(record["train_seconds"] + first.get("elapsed_s", 0), 1)
        extra = {"sampling": SAMPLING[name]} if name in SAMPLING else {}
        if name in GUIDANCE_DEFAULT:  # a guided student's default scale, as measured
            extra["guidance"] = {**load_json(run / "config.json")["guidance"], "default": GUIDANCE_DEFAULT[name]}
        recommended_sampling(extra, f"SAMPLING[{name!r}]")  # the measured entries, checked before the export
        if "guidance" in extra:
            GuidanceRange.from_table(extra["guidance"], f"GUIDANCE_DEFAULT[{name!r}]")
        dest = export_run(run, shipped_root() / name, record, extra,
                          guide_of(args) if name == "mnist-pixel" else None)
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        print(f"exported {name}: {dest} ({size / 1e6:.1f} MB)", flush=True)


def reference_outputs() -> dict[str, torch.Tensor]:
    """Fixed-seed outputs of the shipped models (what tests/test_shipped.py reproduces); the upscaler's input is
    the first n held-out digits shrunk to 7x7 (`sr_reference_input`)."""
    from diffusa.pipelines import Pipeline
    from diffusa.runs import load_run

    r, out = REFERENCE, {}
    for name, prompt in (("mnist-text", r["prompt"]), ("mnist-pixel", None)):
        pipe = Pipeline(load_run(shipped_root() / name), name)  # the package's copy, whatever folders are here
        out[name] = pipe(prompt, n=r["n"], sampler="dpmpp_2m", steps=r["steps"], seed=r["seed"],
                         guidance_scale=r["scale"] if prompt else None).samples
    if (shipped_root() / "mnist-text-1step" / "config.json").is_file():  # one step, its default guidance scale
        pipe = Pipeline(load_run(shipped_root() / "mnist-text-1step"), "mnist-text-1step")
        out["mnist-text-1step"] = pipe(r["prompt"], n=r["n"], steps=1, seed=r["seed"]).samples
    if (shipped_root() / "mnist-sr" / "config.json").is_file():
        pipe = Pipeline(load_run(shipped_root() / "mnist-sr"), "mnist-sr")
        out["mnist-sr"] = pipe.upscale(sr_reference_input(pipe, r["n"]), sampler="dpmpp_2m", steps=r["steps"],
                                       seed=r["seed"]).samples
    if (shipped_root() / "mnist-inpaint" / "config.json").is_file():  # its defaults: mask guidance, ancestral
        pipe = Pipeline(load_run(shipped_root() / "mnist-inpaint"), "mnist-inpaint")
        out["mnist-inpaint"] = pipe.inpaint(inpaint_reference_input(r["n"]), "center", steps=r["steps"],
                                            seed=r["seed"]).samples
    return out


def inpaint_reference_input(n: int) -> torch.Tensor:
    """The inpainting model's reference input: the first n held-out mnist5k digits (the centre box redrawn)."""
    from diffusa.data import load_dataset

    return load_dataset("mnist5k", "test").x[:n]


def sr_reference_input(pipe: object, n: int) -> torch.Tensor:
    """The upscaler's reference input: the first n held-out mnist5k digits, shrunk as its training shrank them."""
    from diffusa.data import load_dataset

    return pipe.image_condition.low_res(load_dataset("mnist5k", "test").x[:n])


def stage_reference(args: argparse.Namespace) -> None:
    path = ROOT / "tests" / "data" / "shipped_reference.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, reference_outputs(), {k: str(v) for k, v in REFERENCE.items()})
    meta = {name: load_json(shipped_root() / name / "config.json")["shipped"]
            for name in SHIPPED if (shipped_root() / name / "config.json").is_file()}
    print(f"wrote {path}; shipped: {json.dumps(meta)}", flush=True)


STAGES = {"ae": stage_ae, "text": stage_text, "textft": stage_textft, "pixel": stage_pixel, "guide": stage_guide,
          "sr": stage_sr, "text1": stage_text1,
          "inpaint": stage_inpaint,
          "export": stage_export,
          "reference": stage_reference}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", choices=list(STAGES), help="default: all, in order")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "shipped")
    ap.add_argument("--ae-steps", type=int, default=800)
    ap.add_argument("--text-steps", type=int, default=3600)
    ap.add_argument("--textft-steps", type=int, default=7628, help="textft: the text model's further steps")
    ap.add_argument("--pixel-steps", type=int, default=1200)
    ap.add_argument("--guide-steps", type=int, default=2605, help="guide: mnist-pixel's autoguidance guide's steps")
    ap.add_argument("--sr-steps", type=int, default=6000)
    ap.add_argument("--text1-steps", type=int, default=4000, help="text1: at most this many distillation steps")
    ap.add_argument("--text1-minutes", type=float, default=17.0, help="text1: at most this much training time")
    ap.add_argument("--inpaint-steps", type=int, default=10500)
    ap.add_argument("--models", nargs="+", choices=list(SHIPPED), default=list(SHIPPED),
                    help="export: which shipped models to replace")
    args = ap.parse_args()
    for name in args.stages or list(STAGES):
        STAGES[name](args)


if __name__ == "__main__":
    sys.exit(main())
