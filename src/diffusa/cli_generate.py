"""`diffusa generate ["a prompt"]`: images from a shipped model (or any run) with no training first.

With a prompt it uses the shipped text-conditional latent model, classifier-free guided against the empty
caption (Ho & Salimans 2021); without one, the shipped unconditional pixel model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from diffusa.cli_common import check_out, generate, positive_int, write_samples
from diffusa.errors import DiffusaError

DEFAULT_SCALE = 3.0  # classifier-free guidance of a text model (docs/guidance.md: accuracy against diversity)


def add_parser(sub: Any) -> None:
    """Register `generate` on the CLI's sub-parsers."""
    from diffusa.shipped import SHIPPED

    g = sub.add_parser("generate", help="images from a shipped model (or a run): no training needed",
                       description="Generate images. Shipped models: "
                                   + "; ".join(f"{k}: {v}" for k, v in SHIPPED.items()))
    g.add_argument("prompt", nargs="?", help="what to draw, e.g. \"a handwritten seven\" (text model)")
    g.add_argument("--model", help="a shipped model's name or a run folder (default: mnist-text with a prompt, "
                                   "mnist-pixel without)")
    g.add_argument("--n", type=positive_int, default=16, help="number of images")
    g.add_argument("--out", default="generated.png", help="FILE.png (grid) or FILE.npz")
    g.add_argument("--steps", type=positive_int, default=20, help="sampling steps")
    g.add_argument("--sampler", default="dpmpp_2m")
    g.add_argument("--guidance-scale", type=float, help="classifier-free guidance w (text models; default 3)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)


def prepare(run: Any, prompt: str | None, n: int, scale: float | None, name: str) -> tuple[Any, Any]:
    """The denoiser to sample and its conditioning: a text model needs the prompt (guided at `scale`, default
    3), others refuse one and a guidance scale."""
    from diffusa.guidance import classifier_free, null_captions

    if run.is_text:
        if prompt is None:
            raise DiffusaError(f"{name} is text-conditional: give a prompt, e.g. diffusa generate \"a handwritten 7\"")
        scale = DEFAULT_SCALE if scale is None else scale
        den = run.denoiser
        if scale != 1.0:
            den = classifier_free(den, scale, null_captions(run.net))
        return den, run.net.tokenize([prompt] * n)
    if prompt is not None:
        raise DiffusaError(f"{name} is not text-conditional and takes no prompt (the shipped text model is "
                           "--model mnist-text)")
    if run.num_classes:
        raise DiffusaError(f"{name} is class-conditional: use diffusa sample {name} --label K")
    if scale is not None:
        raise DiffusaError(f"--guidance-scale guides a text model towards its prompt; {name} is unconditional")
    return run.denoiser, None


def cmd_generate(args: argparse.Namespace) -> int:
    from diffusa.runs import load_run
    from diffusa.schedules import check_steps
    from diffusa.shipped import DEFAULT_MODEL, DEFAULT_TEXT_MODEL, resolve_model

    out = Path(args.out)
    check_out(out)
    check_steps(args.steps)
    name = args.model or (DEFAULT_TEXT_MODEL if args.prompt is not None else DEFAULT_MODEL)
    t0 = time.perf_counter()
    run = load_run(resolve_model(name))
    den, cond = prepare(run, args.prompt, args.n, args.guidance_scale, name)
    with torch.inference_mode():
        x = generate(run, args.n, args.sampler, args.steps, args.seed, None, {}, denoiser=den, cond=cond)
    write_samples(x, out, run.is_image)
    scale = DEFAULT_SCALE if args.guidance_scale is None else args.guidance_scale
    what = f"{args.prompt!r}, guidance {scale:g}" if args.prompt is not None else "unconditional"
    print(f"wrote {args.n} samples to {out} ({name}, {what}, {args.sampler} {args.steps} steps, "
          f"{time.perf_counter() - t0:.2f} s)")
    return 0


__all__ = ["add_parser", "cmd_generate", "prepare"]
