"""`diffusa ...`: a thin command-line layer over the Python API.

Every problem a user can cause ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from diffusa.checkpoint import guard_output
from diffusa.cli_common import (
    autoguidance_flags,
    force_flag,
    non_negative_float,
    png_out,
    positive_float,
    positive_int,
    print_json,
    threads_flag,
)
from diffusa.cli_guidance import cmd_train_classifier
from diffusa.errors import DiffusaError
from diffusa.losses import OBJECTIVES
from diffusa.pipelines import DEFAULT_RTOL, DEFAULT_TERMS, DEFAULT_TEXT_SCALE
from diffusa.pipelines.sampling import ETA_DEFAULT_TEXT, SAMPLER_DEFAULT_TEXT, STEPS_DEFAULT_TEXT
from diffusa.process import PROCESSES
from diffusa.samplers import CHAIN_SPACINGS, LEVEL_SPACINGS, SAMPLERS
from diffusa.tasks.ict import ICT
from diffusa.threads import set_wait_policy, use_threads

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def _set_caches() -> None:
    """Keep every cache inside the project or a temporary folder, never in the home directory."""
    base = Path(tempfile.gettempdir()) / "diffusa-cache"
    for var, sub in (("MPLCONFIGDIR", "matplotlib"), ("TORCH_HOME", "torch"), ("HF_HOME", "huggingface"),
                     ("XDG_CACHE_HOME", "xdg")):
        os.environ.setdefault(var, str(base / sub))


# -- train ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from diffusa.config import load_config
    from diffusa.engine import leave_distributed
    from diffusa.runs import read_run_meta
    from diffusa.train import diffusion_engine, init_base

    overrides = list(args.set or [])
    base = None
    if args.budget is not None and (args.steps is not None or args.resume):
        other = "--steps" if args.steps is not None else "--resume"
        raise DiffusaError(f"--budget fits the steps to the time: drop {other} (a resumed run keeps the steps its "
                           "budget chose)")
    if args.init and args.latent:
        raise DiffusaError("--init takes the latent space of the run it starts from; drop --latent")
    if args.init and not args.resume:
        base = init_base(args.init)
    if args.resume:
        base = read_run_meta(Path(args.out))["config"]
        train = base.get("train") if isinstance(base, dict) else None
        if args.steps is not None and isinstance(train, dict) and train.get("budget_minutes"):
            raise DiffusaError(f"{args.out}'s steps were fitted to its --budget; a resume trains those: drop --steps "
                               "(or start a longer run from its weights with --init)")
        if args.process is not None and args.process != base["process"]["name"]:
            raise DiffusaError(f"--process {args.process} differs from the run's {base['process']['name']!r}; "
                               "a resumed run keeps its process (drop --process or choose another --out)")
    elif args.data is not None:
        overrides.insert(0, f"data.name={json.dumps(args.data)}")
    if args.process is not None and not args.resume:
        overrides.insert(0, f"process.name={json.dumps(args.process)}")
    if args.objective is not None:
        loss = base.get("loss") if args.resume else None
        kind = loss.get("kind", "simple") if isinstance(loss, dict) else "simple"
        if args.resume and args.objective != kind:
            raise DiffusaError(f"--objective {args.objective} differs from the run's {kind!r}; a resumed run keeps "
                               "its objective (drop --objective or choose another --out)")
        if args.objective == "ict" and args.process is None and not args.resume and not args.init:
            overrides.insert(0, 'process.name="edm"')  # consistency training lives on EDM's noise levels
        overrides.append(f"loss.kind={json.dumps(args.objective)}")
    for flag, key in (("steps", "train.steps"), ("batch_size", "train.batch_size"), ("seed", "train.seed"),
                      ("minutes", "train.max_minutes"), ("budget", "train.budget_minutes")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.precision is not None:
        overrides.append(f"train.precision={json.dumps(args.precision)}")
    if args.grad_checkpoint:
        overrides.append("train.grad_checkpoint=true")
    if args.class_conditional:
        overrides.append('model.conditioning="class"')
    if args.latent:
        overrides.append(f"data.latent={json.dumps(args.latent)}")
    if args.stream is not None:
        overrides.append(f"data.stream={json.dumps(args.stream)}")
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")  # 0 = auto
    cfg = load_config(args.config, overrides, base=base)
    engine = diffusion_engine(cfg, args.out, resume=args.resume, progress=not args.quiet, init=args.init)
    task = engine.task
    if engine.cfg.threads == 0:  # auto (the engine sets any other count itself)
        use_threads(None, task.data.kind == "image")
    if engine.dist.main:
        start = f" from {args.init}" if args.init else ""
        start += " by consistency training (iCT)" if cfg.loss.kind == "ict" else ""
        k = engine.shard_count()
        shards = f", each batch in {k} threads" if k > 1 else ""
        print(f"training {task.kind}{start} ({sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M parameters) "
              f"on {task.data.name} {list(task.data.shape)} x {len(task.data)}{shards} -> {args.out}", flush=True)
    try:
        out = engine.fit()
    finally:
        leave_distributed()
    if engine.dist.main:
        print(f"done: {out}/model.safetensors, samples in {out}/samples/, loss curve {out}/loss.png")
    return 0


# -- sample -----------------------------------------------------------------------------------
def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """Sampler-specific flags that were given."""
    opts: dict[str, Any] = {}
    if getattr(args, "eta", None) is not None:
        opts["eta"] = args.eta
    if getattr(args, "variance", None) is not None:
        opts["variance"] = args.variance
    return opts


def pipeline_args(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """The pipeline's arguments from the sampling flags; a flag not given keeps the pipeline's default."""
    label = args.label
    if label is not None and label.isdecimal():  # not isdigit: "²" is a digit that int() refuses
        label = int(label)  # "all" stays; anything else is the pipeline's to refuse, naming the label
    kw = {"n": n, "seed": args.seed, "label": label, "guidance_scale": args.guidance_scale,
          "classifier": args.classifier, "classifier_scale": args.classifier_scale, "spacing": args.spacing,
          "eta": args.eta, "variance": args.variance, "autoguidance": args.autoguidance, "guide": args.guide}
    for key in ("sampler", "steps"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return kw


def check_prompt(pipe: Any, args: argparse.Namespace) -> None:
    """The pipeline's own refusals that need no sampling (a text model without a prompt or label, a classifier
    scale without a classifier, a non-finite scale), before eval loads its data sets."""
    from diffusa.pipelines.request import check_request

    check_request(pipe.run, pipe.name, prompt=args.prompt, label=args.label, guidance_scale=args.guidance_scale,
                  classifier=args.classifier, classifier_scale=args.classifier_scale)


def cmd_sample(args: argparse.Namespace) -> int:
    from diffusa.pipelines import check_out, load
    from diffusa.pipelines.sampling import resolve_sampling
    from diffusa.viz import save_strip

    out = check_out(args.out, args.force)
    if args.trajectory is not None:
        png_out(args.trajectory, "--trajectory", args.force)
    pipe = load(args.run)
    use_threads(args.threads, pipe.is_image)
    frames: dict[int, torch.Tensor] = {}
    labels: dict[int, str] = {}
    callback = None
    if args.trajectory:
        if not pipe.is_image:
            raise DiffusaError("--trajectory draws images; this run's data are points")
        steps = resolve_sampling(pipe, args.sampler, args.steps)[1]  # the steps the call below takes
        keep = set(np.linspace(0, steps - 1, min(steps, 10)).round().astype(int).tolist())

        def callback(step: int, t: float, x_t: torch.Tensor, x0: torch.Tensor) -> None:
            if step in keep and step not in frames:  # the first batch's first 8 samples
                frames[step] = pipe.decode(x_t[:8].clone())
                labels[step] = f"t={t:.2f}"

    res = pipe(args.prompt, **pipeline_args(args, args.n), callback=callback)
    res.save(out, args.force)
    if args.trajectory:
        x_T = pipe.decode(pipe.noise(min(8, args.n), args.seed))
        save_strip([x_T, *(frames[k] for k in sorted(frames))], args.trajectory,
                   ["x_T (t=1)", *(labels[k] for k in sorted(labels))])
        print(f"wrote {args.trajectory}")
    s = res.settings
    guided = "" if s.get("autoguidance") is None else f", autoguidance {s['autoguidance']:g} ({s['nfe']} network calls)"
    print(f"wrote {args.n} samples to {out} ({s['sampler']}, {s['steps']} steps{guided})")  # the settings used
    return 0


# -- eval -------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from diffusa.metrics import classify, eval_floor, eval_reference, image_metrics, point_metrics
    from diffusa.pipelines import load

    if args.out is not None:
        guard_output(args.out, force=args.force)  # before any sampling: eval RUN --out RUN/config.json kills RUN
    if args.plot is not None:
        png_out(args.plot, "--plot", args.force)
    if args.bpd:
        given = [f"--{k.replace('_', '-')}" for k in ("sampler", "steps", "label", "prompt", "guidance_scale",
                                                      "classifier", "classifier_scale", "spacing", "eta",
                                                      "autoguidance", "guide")
                 if getattr(args, k) is not None]
        if given:
            raise DiffusaError(f"--bpd measures the model's likelihood of held-out data and draws no samples: "
                               f"{', '.join(given)} would be ignored")
    else:
        given = [f"--{k}" for k in ("terms", "plot", "rtol") if getattr(args, k) is not None]
        if given:
            raise DiffusaError(f"{', '.join(given)} set how --bpd measures likelihood; add --bpd")
    if not args.bpd and args.n is not None and args.n < 2:
        raise DiffusaError("eval needs --n of at least 2 (the Frechet distance compares covariances)")
    pipe = load(args.run)
    use_threads(args.threads, pipe.is_image)
    dc = pipe.run.config.data
    test = eval_reference(dc)
    if args.bpd:
        return eval_bpd(pipe, test, args)
    check_prompt(pipe, args)
    n = args.n or (1000 if pipe.is_image else 2000)
    res = pipe(args.prompt, **pipeline_args(args, n))
    x = res.samples
    floor_set = eval_floor(dc, n)
    metrics = image_metrics(x, test, floor_set) if pipe.is_image else point_metrics(x, test, floor_set)
    s = res.settings
    if res.labels is not None and pipe.is_image:  # the digit classifier's argmax against the requested labels
        metrics.update({"label": args.label, "guidance_scale": s["guidance_scale"], "classifier": args.classifier,
                        "classifier_scale": s["classifier_scale"],
                        "conditional_accuracy": float((classify(x)[1].argmax(1) == res.labels).float().mean())})
    metrics.update({"run": str(args.run), "sampler": s["sampler"], "steps": s["steps"], "spacing": s["spacing"],
                    **sampler_options(args), "seed": args.seed, "nfe": s["nfe"]})
    if s.get("autoguidance") is not None:
        metrics.update({"autoguidance": s["autoguidance"], "guide": s["guide"]})
    print_json(metrics, args.out)
    return 0


def default_plot(run: str) -> Path:
    """Where --bpd draws the bound's terms: in the run folder, or beside the user for a shipped model (never
    inside the installed package, nor a new folder named like the shipped model that would then shadow it)."""
    from diffusa.shipped import SHIPPED

    if run in SHIPPED and not (Path(run) / "config.json").is_file():
        return Path(f"{run}-bpd_terms.png")
    return Path(run) / "bpd_terms.png"


def eval_bpd(pipe: Any, x: torch.Tensor, args: argparse.Namespace) -> int:
    """eval --bpd: bits/dim of the first --n held-out images (Pipeline.likelihood), printed as JSON."""
    n = min(args.n or len(x), len(x))
    terms = None if args.terms is None else (args.terms if args.terms == "all" else int(args.terms))
    plot = args.plot
    if plot is None and pipe.discrete and pipe.is_image and not pipe.is_latent:
        plot = png_out(str(default_plot(args.run)), "the bound's plot", args.force)
    res = pipe.likelihood(x[:n], terms=terms, variance=args.variance, rtol=args.rtol, seed=args.seed, plot=plot)
    print_json({"run": str(args.run), **res}, args.out)
    return 0


def terms_arg(text: str) -> str:
    """--terms: 'all' or a positive integer."""
    if text == "all" or (text.isdecimal() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {text!r}")


# -- autoencoder ------------------------------------------------------------------------------
def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from diffusa.autoencoder import AutoencoderConfig
    from diffusa.checkpoint import load_json
    from diffusa.tasks.autoencoder import train_autoencoder

    levels = {2: 1, 4: 2, 8: 3}[args.factor]
    cfg = AutoencoderConfig(kind=args.kind, channels=args.channels, channel_mult=(1, 2, 2)[:levels],
                            latent_channels=args.latent_channels, kl_weight=args.kl_weight,
                            codebook_size=args.codebook_size)
    out = train_autoencoder(args.data, args.out, cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, progress=not args.quiet, resume=args.resume)
    meta = load_json(out / "config.json")
    held = ", ".join(f"{k} {v:.4g}" for k, v in meta["held_out"].items())
    print(f"done: {out}/model.safetensors; latents {meta['latent_shape']}, scale factor "
          f"{meta['scale_factor']:.4g}; held-out {held}")
    return 0


# -- forward ----------------------------------------------------------------------------------
FORWARD_MAX = 64  # rows and columns of the forward-process picture


def cmd_scenes(args: argparse.Namespace) -> int:
    """`diffusa scenes FOLDER`: write synthetic RGB scenes (diffusa.data.scenes) as a training folder."""
    from diffusa.data.scenes import write_scene_folder

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise DiffusaError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise DiffusaError(f"{folder} is not empty: a training folder reads every image in it (choose an empty "
                           "folder, or --force to write into it)")
    paths = write_scene_folder(folder, args.n, args.size, args.seed)
    print(f"wrote {len(paths)} scenes ({args.size}x{args.size} RGB, seed {args.seed}) to {folder}/")
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    from diffusa.config import ProcessConfig, RunConfig
    from diffusa.data import load_dataset
    from diffusa.limits import check_count
    from diffusa.pipelines.request import check_seed
    from diffusa.runs import build_process
    from diffusa.viz import save_strip

    png_out(args.out, "--out", args.force)
    check_count("--n (rows of the picture)", args.n, FORWARD_MAX)
    check_count("--columns", args.columns, FORWARD_MAX)
    check_seed(args.seed)
    process = build_process(RunConfig(process=ProcessConfig(schedule=args.schedule, num_steps=args.num_steps)))
    data = load_dataset(args.data, "train", stream="off")
    if data.kind != "image":
        raise DiffusaError(f"the forward-process picture needs images; {args.data} holds points")
    g = torch.Generator().manual_seed(args.seed)
    x0 = data.x[torch.randperm(len(data), generator=g)[:args.n]]
    noise = torch.randn(x0.shape, generator=g)
    times = torch.linspace(0, 1, args.columns, dtype=torch.float64)
    frames = [process.q_sample(x0, t, noise) for t in times]
    labels = []
    for t in times:
        a, _ = process.alpha_sigma(t)
        labels.append(f"t={float(t):.2f}\nα={float(a):.2f}")
    save_strip(frames, args.out, labels)
    print(f"wrote {args.out}")
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> Parser:
    p = Parser(prog="diffusa", description="Diffusion models: train, sample and measure.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a diffusion model. Ctrl-C saves a checkpoint that --resume continues.")
    t.add_argument("--data", help="mnist5k | digits | moons | swissroll | 8gaussians | checkerboard | DIR | FILE.npz")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--process", choices=list(PROCESSES),
                   help="forward process (default ddpm); each trains with its own objective unless "
                        "--set model.prediction / loss.weighting / loss.time_sampler say otherwise")
    t.add_argument("--objective", choices=[*OBJECTIVES, ICT],
                   help="the loss (loss.kind): simple (default), vlb, hybrid (Improved DDPM), or ict: consistency "
                        "training without a teacher (Song & Dhariwal 2023), a model that samples in 1 to 4 steps "
                        "(process edm; docs/distillation.md)")
    t.add_argument("--steps", type=positive_int,
                   help="training steps (default from config: 3500 for images, 3000 for points)")
    t.add_argument("--batch-size", type=positive_int, help="global batch size")
    t.add_argument("--config", help="TOML file with config overrides")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key, e.g. train.lr=1e-3")
    t.add_argument("--seed", type=int)
    t.add_argument("--minutes", type=non_negative_float,
                     help="stop (and checkpoint) after this much training time in this invocation "
                          "(a --resume gets as many more)")
    t.add_argument("--budget", type=positive_float, metavar="MINUTES",
                   help="train for about this long instead of a step count: the steps are fitted to this machine's "
                        "speed during the warm-up and recorded in config.json (train.steps), so `--steps N` repeats "
                        "the run exactly")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--init", metavar="RUN",
                   help="fine-tune: start from this run's (or shipped model's) weights, process and network, with "
                        "new data, a new --out and a fresh optimizer (a plain image model may start an inpainting or "
                        "super-resolution one: the condition's input channels start at zero)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    t.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward: less memory")
    t.add_argument("--latent", metavar="AUTOENCODER",
                   help="latent diffusion: train in the latent space of this `diffusa train-autoencoder` folder")
    t.add_argument("--class-conditional", action="store_true",
                   help="condition on the data's labels, with label dropout (for --label and --guidance-scale)")
    t.add_argument("--stream", choices=["auto", "on", "off"],
                   help="image folders: decode batches from disk in worker processes instead of holding every "
                        "image in memory (default auto: stream above 1/8 of memory decoded)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    threads_flag(t)  # train.threads
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("train-autoencoder", help="train a KL or VQ autoencoder for latent diffusion",
                       description="Train an autoencoder (Rombach et al. 2022) and report its held-out "
                                   "reconstructions; then `diffusa train --latent DIR` trains diffusion on its "
                                   "latents.")
    a.add_argument("--data", default="mnist5k")
    a.add_argument("--out", required=True, help="folder to write")
    a.add_argument("--kind", choices=["kl", "vq"], default="kl")
    a.add_argument("--factor", type=int, choices=[2, 4, 8], default=4,
                   help="downsampling factor f (28x28 -> 7x7 at 4)")
    a.add_argument("--latent-channels", type=positive_int, default=4)
    a.add_argument("--channels", type=positive_int, default=32)
    a.add_argument("--kl-weight", type=float, default=1e-4)
    a.add_argument("--codebook-size", type=positive_int, default=256)
    a.add_argument("--steps", type=positive_int, default=2000)
    a.add_argument("--batch-size", type=positive_int, default=64)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--resume", action="store_true", help="continue the autoencoder in --out from its checkpoint")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_train_autoencoder)

    c = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                       description="Train p(y | x_t, t) on a run's labelled data under the run's process "
                                   "(Dhariwal & Nichol 2021); sample with --classifier DIR --label K.")
    c.add_argument("run", help="the diffusion run whose data and process the classifier follows")
    c.add_argument("--out", required=True, help="folder to write")
    c.add_argument("--steps", type=positive_int, default=1500)
    c.add_argument("--batch-size", type=positive_int, default=128)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--resume", action="store_true", help="continue the classifier in --out from its checkpoint")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_train_classifier)

    def sampling_flags(q: argparse.ArgumentParser, n_default: int | None) -> None:
        from diffusa.shipped import SHIPPED

        q.add_argument("run", help="run folder, or a shipped model: " + ", ".join(SHIPPED))
        q.add_argument("--n", type=positive_int, default=n_default, help="number of samples")
        q.add_argument("--sampler", help=" | ".join(SAMPLERS) + f" (default: {SAMPLER_DEFAULT_TEXT})")
        q.add_argument("--steps", type=positive_int, help=f"sampling steps (default: {STEPS_DEFAULT_TEXT})")
        q.add_argument("--spacing", choices=[*LEVEL_SPACINGS, *CHAIN_SPACINGS],
                       help="the sampling grid: uniform in t, uniform in log-SNR (over the process's levels, or "
                            "logsnr-unit: over sigma/alpha in [0.05, 20], for few steps on points), Karras rho = 7 "
                            "(any process); "
                            "or how a discrete chain's steps are picked (even and ddim as in IDDPM's respacing)")
        q.add_argument("--eta", type=non_negative_float, help=ETA_DEFAULT_TEXT)
        q.add_argument("--variance", choices=["beta_tilde", "beta"], help="ancestral step variance")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--label", help="class to draw: K, or 'all' for 0, 1, ..., K-1 in turn")
        q.add_argument("--prompt", help="text to draw (a text-conditional model)")
        q.add_argument("--guidance-scale", type=float,
                       help="classifier-free guidance w: eps_u + w (eps_c - eps_u); 1 = the conditional model "
                            "(default: the model's config.json \"sampling\" \"guidance_scale\", else "
                            f"{DEFAULT_TEXT_SCALE:g} for a text model, none otherwise); a guided student "
                            "(diffusa distill --guidance-range) takes w as an input, inside its range")
        q.add_argument("--classifier", help="classifier guidance with this `diffusa train-classifier` folder")
        q.add_argument("--classifier-scale", type=float, help="classifier guidance scale s (default 1)")
        autoguidance_flags(q)
        threads_flag(q)

    s = sub.add_parser("sample", help="draw samples from a trained run", description="Draw samples.")
    sampling_flags(s, 64)
    s.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npz (samples, images)")
    s.add_argument("--trajectory", help="also draw the reverse process of 8 samples as a strip PNG")
    force_flag(s)
    s.set_defaults(func=cmd_sample)

    from diffusa.cli_distill import add_parser as add_distill
    from diffusa.cli_edit import add_parser as add_edit
    from diffusa.cli_generate import add_parser as add_generate
    from diffusa.cli_upscale import add_parser as add_upscale

    add_generate(sub)
    add_edit(sub)  # diffusa edit, diffusa inpaint
    add_upscale(sub)  # diffusa upscale
    add_distill(sub)  # diffusa distill: consistency distillation (docs/distillation.md)

    e = sub.add_parser("eval", help="measure a run's samples; prints JSON",
                       description="Frechet distance, KID and classifier confidence (images) or energy distance "
                                   "(points), each beside its real-vs-real floor.")
    sampling_flags(e, None)
    e.add_argument("--out", help="also write the JSON here")
    e.add_argument("--bpd", action="store_true",
                   help="bits/dim of the held-out split instead: the variational bound (discrete chains) or the "
                        "probability-flow ODE likelihood (continuous processes)")
    e.add_argument("--terms", type=terms_arg,
                   help="--bpd on a chain: 'all' for the full bound, or K for an unbiased K-term estimate "
                        f"(default {DEFAULT_TERMS})")
    e.add_argument("--plot", help="--bpd on a chain: PNG of the bound's terms against t (default RUN/bpd_terms.png, "
                                   "or NAME-bpd_terms.png here for a shipped model)")
    e.add_argument("--rtol", type=float,
                   help=f"--bpd with the ODE: solver tolerance (rtol = atol; default {DEFAULT_RTOL:g})")
    force_flag(e)
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("forward", help="picture of the forward process on real images",
                       description="Noise real images step by step and draw them as a strip.")
    f.add_argument("--data", default="mnist5k")
    f.add_argument("--out", required=True, help="PNG to write")
    f.add_argument("--n", type=positive_int, default=6)
    f.add_argument("--columns", type=positive_int, default=9)
    f.add_argument("--schedule", default="cosine")
    f.add_argument("--num-steps", type=positive_int, default=1000)
    f.add_argument("--seed", type=int, default=0)
    force_flag(f)
    f.set_defaults(func=cmd_forward)
    sc = sub.add_parser("scenes", help="write synthetic RGB scenes as an image folder",
                        description="Write 64x64 RGB landscapes (diffusa.data.scenes) as PNGs: an image folder for "
                                    "`diffusa train --data FOLDER`, e.g. a 4x upscaler (docs/super_resolution.md).")
    sc.add_argument("folder", help="folder to write (made if missing)")
    sc.add_argument("--n", type=positive_int, default=2000, help="number of scenes (default 2000)")
    sc.add_argument("--size", type=positive_int, default=64, help="side in pixels (default 64)")
    sc.add_argument("--seed", type=int, default=0, help="scene i is drawn from the seed pair (seed, i) (default 0)")
    sc.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    sc.set_defaults(func=cmd_scenes)
    from diffusa.cli_serve import add_parser as add_serve  # diffusa serve: the web page and REST API

    add_serve(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    set_wait_policy()  # already made by `import diffusa`, before torch loaded; again here for the child processes
    _set_caches()
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return args.func(args)
    except DiffusaError as e:
        sys.stderr.write(f"diffusa {args.command}: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"diffusa {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)  # --threads is the command's: a caller running main() in-process keeps its own


if __name__ == "__main__":
    sys.exit(main())
