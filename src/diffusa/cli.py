"""`diffusa ...`: a thin command-line layer over the Python API.

Every problem a user can cause ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from diffusa.checkpoint import write_text
from diffusa.cli_common import check_out, generate, non_negative_float, positive_int, write_samples
from diffusa.cli_guidance import cmd_train_classifier, conditional_metrics, guided, requested_labels
from diffusa.errors import DiffusaError
from diffusa.process import PROCESSES
from diffusa.samplers import CHAIN_SPACINGS, LEVEL_SPACINGS, SAMPLERS
from diffusa.shipped import run_path

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
    from diffusa.runs import read_run_meta
    from diffusa.train import Trainer, leave_distributed

    overrides = list(args.set or [])
    base = None
    if args.resume:
        base = read_run_meta(Path(args.out))["config"]
        if args.process is not None and args.process != base["process"]["name"]:
            raise DiffusaError(f"--process {args.process} differs from the run's {base['process']['name']!r}; "
                               "a resumed run keeps its process (drop --process or choose another --out)")
    elif args.data is not None:
        overrides.insert(0, f"data.name={json.dumps(args.data)}")
    if args.process is not None and not args.resume:
        overrides.insert(0, f"process.name={json.dumps(args.process)}")
    for flag, key in (("steps", "train.steps"), ("batch_size", "train.batch_size"), ("seed", "train.seed"),
                      ("minutes", "train.max_minutes")):
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
    cfg = load_config(args.config, overrides, base=base)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if trainer.dist.main:
        print(f"training {trainer.kind} ({sum(p.numel() for p in trainer.net.parameters()) / 1e6:.2f}M parameters) "
              f"on {trainer.data.name} {list(trainer.data.shape)} x {len(trainer.data)} -> {args.out}", flush=True)
    try:
        out = trainer.fit()
    finally:
        leave_distributed()
    if trainer.dist.main:
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


DEFAULT_SAMPLER, DEFAULT_STEPS = "ddim", 50
DEFAULT_TERMS, DEFAULT_RTOL = 100, 1e-5  # eval --bpd: bound terms per image (a chain), ODE tolerance


def sampling_defaults(args: argparse.Namespace) -> None:
    """--sampler and --steps default to None, so that `eval --bpd` can tell a given flag from a default one."""
    args.sampler = DEFAULT_SAMPLER if args.sampler is None else args.sampler
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps


def cmd_sample(args: argparse.Namespace) -> int:
    from diffusa.runs import load_run
    from diffusa.schedules import check_steps
    from diffusa.viz import save_strip

    out = Path(args.out)
    check_out(out)
    sampling_defaults(args)
    check_steps(args.steps)
    run = load_run(run_path(args.run))
    frames: list[torch.Tensor] = []
    labels: list[str] = []
    callback = None
    if args.trajectory:
        if not run.is_image:
            raise DiffusaError("--trajectory draws images; this run's data are points")
        keep = set(np.linspace(0, args.steps - 1, min(args.steps, 10)).round().astype(int).tolist())

        def callback(info: dict[str, Any]) -> None:
            if info["i"] in keep:
                frames.append(run.to_images(info["x"][:8].clone()))
                labels.append(f"t={float(info['s']):.2f}")

    den, cond = guided(run, args, args.n)
    x = generate(run, args.n, args.sampler, args.steps, args.seed, args.spacing, sampler_options(args),
                 callback=callback, denoiser=den, cond=cond)
    write_samples(x, out, run.is_image)
    if args.trajectory:
        g = torch.Generator().manual_seed(args.seed)
        x_T = run.denoiser.process.prior_sample((min(8, args.n), *run.data_shape), generator=g)
        save_strip([run.to_images(x_T), *frames], args.trajectory, ["x_T (t=1)", *labels])
        print(f"wrote {args.trajectory}")
    print(f"wrote {args.n} samples to {out}")
    return 0


# -- eval -------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from diffusa.data import load_dataset
    from diffusa.metrics import image_metrics, point_metrics
    from diffusa.runs import load_run
    from diffusa.schedules import check_steps

    if args.bpd:
        given = [f"--{k.replace('_', '-')}" for k in ("sampler", "steps", "label", "prompt", "guidance_scale",
                                                      "classifier", "classifier_scale", "spacing", "eta")
                 if getattr(args, k) is not None]
        if given:
            raise DiffusaError(f"--bpd measures the model's likelihood of held-out data and draws no samples: "
                               f"{', '.join(given)} would be ignored")
    else:
        given = [f"--{k}" for k in ("terms", "plot", "rtol") if getattr(args, k) is not None]
        if given:
            raise DiffusaError(f"{', '.join(given)} set how --bpd measures likelihood; add --bpd")
    sampling_defaults(args)
    check_steps(args.steps)
    if not args.bpd and args.n is not None and args.n < 2:
        raise DiffusaError("eval needs --n of at least 2 (the Frechet distance compares covariances)")
    run = load_run(run_path(args.run))
    dc = run.config.data
    test = load_dataset(dc.name, "test", dc.image_size, dc.grayscale)
    if args.bpd:
        return eval_bpd(run, test.x, args)
    train = load_dataset(dc.name, "train", dc.image_size, dc.grayscale)
    n = args.n or (1000 if run.is_image else 2000)
    den, cond = guided(run, args, n)
    x = generate(run, n, args.sampler, args.steps, args.seed, args.spacing, sampler_options(args), denoiser=den,
                 cond=cond)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    floor_set = train.x[perm[:n]]
    metrics = image_metrics(x, test.x, floor_set) if run.is_image else point_metrics(x, test.x, floor_set)
    if cond is not None and run.is_image and args.label is not None and args.prompt is None:
        metrics.update(conditional_metrics(x, requested_labels(args.label, n, run.num_classes or 10), args))
    metrics.update({"run": str(args.run), "sampler": args.sampler, "steps": args.steps,
                    "spacing": args.spacing or "default", **sampler_options(args), "seed": args.seed})
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        write_text(Path(args.out), text + "\n")
    return 0


def default_plot(run: str) -> Path:
    """Where --bpd draws the bound's terms: in the run folder, or beside the user for a shipped model (never
    inside the installed package, nor a new folder named like the shipped model that would then shadow it)."""
    from diffusa.shipped import SHIPPED

    if run in SHIPPED and not (Path(run) / "config.json").is_file():
        return Path(f"{run}-bpd_terms.png")
    return Path(run) / "bpd_terms.png"


def eval_bpd(run: Any, x: torch.Tensor, args: argparse.Namespace) -> int:
    """Bits/dim of held-out images: the variational bound for a discrete chain (with the per-step terms
    drawn as a plot), the probability-flow ODE likelihood for a continuous process."""
    from diffusa.likelihood import bits_per_dim, ode_bits_per_dim
    from diffusa.process import DiscreteDDPM
    from diffusa.viz import save_bound_terms

    if not run.is_image:
        raise DiffusaError("--bpd measures images (bits per dimension of 8-bit pixels); this run models points")
    if run.decoder is not None:
        raise DiffusaError("--bpd measures 8-bit pixels; this run is a latent model, whose likelihood would be of "
                           "its latents, not of the images")
    n = min(args.n or len(x), len(x))
    x = x[:n]
    g = torch.Generator().manual_seed(args.seed)
    proc = run.denoiser.process
    out: dict[str, Any] = {"run": str(args.run), "n": n, "seed": args.seed}
    discrete = isinstance(proc, DiscreteDDPM)
    wrong = [f"--{k}" for k in (("rtol",) if discrete else ("terms", "plot", "variance"))
             if getattr(args, k) is not None]
    if wrong:
        how = ("the variational bound of its discrete chain" if discrete
               else "the probability-flow ODE (continuous process)")
        raise DiffusaError(f"{', '.join(wrong)}: not for this run, whose likelihood comes from {how}")
    if discrete:
        terms = None if args.terms == "all" else int(args.terms or DEFAULT_TERMS)
        if terms is not None and terms < 1:
            raise DiffusaError(f"--terms must be 'all' or a positive integer, got {args.terms}")
        variance = args.variance or "beta_tilde"
        res = bits_per_dim(run.denoiser, x, terms=terms, variance=variance, generator=g)
        plot = Path(args.plot) if args.plot else default_plot(args.run)
        save_bound_terms(res.times.tolist(), res.terms.tolist(), plot,
                         f"{Path(args.run).name}: bound terms, total {res.total:.3f} bits/dim")
        se = res.se if math.isfinite(res.se) else None  # one image: no standard error (and JSON has no NaN)
        out.update({"method": "variational bound", "bpd": res.total, "se": se, "prior_bpd": res.prior,
                    "terms": "all" if terms is None else terms, "num_steps": proc.num_steps,
                    "variance": "learned" if run.denoiser.learned_variance else variance, "plot": str(plot)})
    else:
        parts, nfe, rtol = [], 0, DEFAULT_RTOL if args.rtol is None else args.rtol
        for i in range(0, n, 100):  # the ODE runs on a whole batch at once; keep its memory bounded
            bpd, k = ode_bits_per_dim(run.denoiser, x[i:i + 100], generator=g, divergence="hutchinson",
                                      rtol=rtol, atol=rtol)
            parts.append(bpd)
            nfe += k
        per_image = torch.cat(parts)
        se = float(per_image.std() / math.sqrt(n)) if n > 1 else None  # JSON has no NaN
        out.update({"method": "probability-flow ODE, Hutchinson trace, uniform dequantization",
                    "bpd": float(per_image.mean()), "se": se, "nfe": nfe, "rtol": rtol})
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        write_text(Path(args.out), text + "\n")
    return 0


def terms_arg(text: str) -> str:
    """--terms: 'all' or a positive integer."""
    if text == "all" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {text!r}")


# -- autoencoder ------------------------------------------------------------------------------
def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from diffusa.autoencoder import AutoencoderConfig, train_autoencoder
    from diffusa.checkpoint import load_json

    levels = {2: 1, 4: 2, 8: 3}[args.factor]
    cfg = AutoencoderConfig(kind=args.kind, channels=args.channels, channel_mult=(1, 2, 2)[:levels],
                            latent_channels=args.latent_channels, kl_weight=args.kl_weight,
                            codebook_size=args.codebook_size)
    out = train_autoencoder(args.data, args.out, cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, progress=not args.quiet)
    meta = load_json(out / "config.json")
    held = ", ".join(f"{k} {v:.4g}" for k, v in meta["held_out"].items())
    print(f"done: {out}/autoencoder.safetensors; latents {meta['latent_shape']}, scale factor "
          f"{meta['scale_factor']:.4g}; held-out {held}")
    return 0


# -- forward ----------------------------------------------------------------------------------
def cmd_forward(args: argparse.Namespace) -> int:
    from diffusa.config import ProcessConfig, RunConfig
    from diffusa.data import load_dataset
    from diffusa.runs import build_process
    from diffusa.viz import save_strip

    data = load_dataset(args.data, "train")
    if data.kind != "image":
        raise DiffusaError(f"the forward-process picture needs images; {args.data} holds points")
    process = build_process(RunConfig(process=ProcessConfig(schedule=args.schedule, num_steps=args.num_steps)))
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
    t.add_argument("--steps", type=positive_int, help="training steps (default from config: 3000)")
    t.add_argument("--batch-size", type=positive_int, help="global batch size")
    t.add_argument("--config", help="TOML file with config overrides")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key, e.g. train.lr=1e-3")
    t.add_argument("--seed", type=int)
    t.add_argument("--minutes", type=float, help="stop (and checkpoint) after this much training time")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    t.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward: less memory")
    t.add_argument("--latent", metavar="AUTOENCODER",
                   help="latent diffusion: train in the latent space of this `diffusa train-autoencoder` folder")
    t.add_argument("--class-conditional", action="store_true",
                   help="condition on the data's labels, with label dropout (for --label and --guidance-scale)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
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
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_train_classifier)

    def sampling_flags(q: argparse.ArgumentParser, n_default: int | None) -> None:
        q.add_argument("run", help="run folder, or a shipped model: mnist-pixel, mnist-text")
        q.add_argument("--n", type=positive_int, default=n_default, help="number of samples")
        q.add_argument("--sampler", help=" | ".join(SAMPLERS) + f" (default {DEFAULT_SAMPLER})")
        q.add_argument("--steps", type=positive_int, help=f"sampling steps (default {DEFAULT_STEPS})")
        q.add_argument("--spacing", choices=[*LEVEL_SPACINGS, *CHAIN_SPACINGS],
                       help="the sampling grid: uniform in t, uniform in log-SNR, Karras rho = 7 (any process); "
                            "or how a discrete chain's steps are picked (even and ddim as in IDDPM's respacing)")
        q.add_argument("--eta", type=non_negative_float,
                       help="stochasticity of ddim, euler_ancestral, dpmpp_2m_sde (0 = deterministic)")
        q.add_argument("--variance", choices=["beta_tilde", "beta"], help="ancestral step variance")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--label", help="class to draw: K, or 'all' for 0, 1, ..., K-1 in turn")
        q.add_argument("--prompt", help="text to draw (a text-conditional model)")
        q.add_argument("--guidance-scale", type=float,
                       help="classifier-free guidance w: eps_u + w (eps_c - eps_u); 1 = the conditional model")
        q.add_argument("--classifier", help="classifier guidance with this `diffusa train-classifier` folder")
        q.add_argument("--classifier-scale", type=float, help="classifier guidance scale s (default 1)")

    s = sub.add_parser("sample", help="draw samples from a trained run", description="Draw samples.")
    sampling_flags(s, 64)
    s.add_argument("--out", required=True, help="FILE.png (grid) or FILE.npz (samples, images)")
    s.add_argument("--trajectory", help="also draw the reverse process of 8 samples as a strip PNG")
    s.set_defaults(func=cmd_sample)

    from diffusa.cli_generate import add_parser as add_generate

    add_generate(sub)

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
    f.set_defaults(func=cmd_forward)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    _set_caches()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DiffusaError as e:
        sys.stderr.write(f"diffusa {args.command}: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"diffusa {args.command}: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
