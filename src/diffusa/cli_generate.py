"""`diffusa generate ["a prompt"]`: images from a shipped model (or any run) with no training first.

With a prompt it uses the shipped text-conditional latent model, classifier-free guided against the empty
caption (Ho & Salimans 2021, w = 3 by default); without one, the shipped unconditional pixel model. The drawing
is `diffusa.load(model)(prompt, ...)`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from diffusa.cli_common import autoguidance_flags, force_flag, positive_int, threads_flag
from diffusa.errors import DiffusaError
from diffusa.pipelines import DEFAULT_TEXT_SCALE
from diffusa.pipelines.sampling import SAMPLER_DEFAULT_TEXT, STEPS_DEFAULT_TEXT
from diffusa.threads import use_threads


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
    g.add_argument("--steps", type=positive_int, help=f"sampling steps (default: {STEPS_DEFAULT_TEXT})")
    g.add_argument("--sampler", help=f"default: {SAMPLER_DEFAULT_TEXT}")
    g.add_argument("--guidance-scale", type=float,
                   help=f"classifier-free guidance w (text models; default the model's config.json \"sampling\" "
                        f"\"guidance_scale\", else {DEFAULT_TEXT_SCALE:g}); a guided student "
                        "(diffusa distill --guidance-range) takes w as an input, inside its range")
    g.add_argument("--seed", type=int, default=0)
    autoguidance_flags(g)
    threads_flag(g)
    force_flag(g)
    g.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from diffusa.pipelines import check_out, load
    from diffusa.shipped import default_model

    out = check_out(args.out, args.force)
    if args.model is not None and not args.model.strip():
        raise DiffusaError("--model is empty: give a shipped model's name or a run folder")
    name = args.model or default_model("generate", args.prompt is not None)
    t0 = time.perf_counter()
    pipe = load(name)
    use_threads(args.threads, pipe.is_image)
    if pipe.num_classes and not pipe.is_text and args.prompt is None:  # generate has no --label
        raise DiffusaError(f"{name} is class-conditional: use diffusa sample {name} --label K")
    kw = {k: getattr(args, k) for k in ("sampler", "steps") if getattr(args, k) is not None}
    res = pipe(args.prompt, n=args.n, guidance_scale=args.guidance_scale, seed=args.seed,
               autoguidance=args.autoguidance, guide=args.guide, **kw)
    res.save(out, args.force)
    s = res.settings
    what = f"{args.prompt!r}, guidance {s['guidance_scale']:g}" if args.prompt is not None else "unconditional"
    eta = "" if s.get("eta") is None else f" eta {s['eta']:g}"
    if s.get("autoguidance") is not None:
        what += f", autoguidance {s['autoguidance']:g}"
    print(f"wrote {args.n} samples to {out} ({name}, {what}, {s['sampler']}{eta} {s['steps']} steps, "
          f"{time.perf_counter() - t0:.2f} s)")
    return 0


__all__ = ["add_parser", "cmd_generate"]
