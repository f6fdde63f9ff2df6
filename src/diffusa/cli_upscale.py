"""`diffusa upscale IMAGE --model RUN`: super-resolution (SR3) with a run trained with `data.super_resolution`;
inputs larger than the model's input are upscaled in overlapping tiles. Calls `Pipeline.upscale` and nothing else.

IMAGE is read as `diffusa edit` reads it (`diffusa.cli_edit.read_images`): a PNG or JPEG, an .npz (its `images`
array, or its only one), or held-out digits `mnist5k:17` / `0,5,9` / `0-7`, which are shrunk to the model's input
size first (block averages, as the model's training conditions were made). --out: a PNG grid or an .npz
(`images`, `samples`); beside it a strip PNG, one row per image (at most 8): input | bicubic | upscaled.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch.nn.functional as F

from diffusa.cli_common import force_flag, non_negative_float, non_negative_int, positive_int, threads_flag
from diffusa.errors import DiffusaError
from diffusa.threads import use_threads


def add_parser(sub: Any) -> None:
    """Register `upscale` on the CLI's sub-parsers."""
    from diffusa.pipelines.sampling import ETA_DEFAULT_TEXT, SAMPLER_DEFAULT_TEXT, STEPS_DEFAULT_TEXT
    from diffusa.samplers import CHAIN_SPACINGS, LEVEL_SPACINGS
    from diffusa.shipped import default_model

    u = sub.add_parser("upscale", help="super-resolution (SR3): upscale images with a super-resolution run",
                       description="SR3 (Saharia et al. 2021): draw each image at the model's factor times its "
                                   "size, conditioned on it (noised to the run's augmentation level, Ho et al. "
                                   "2022). Inputs larger than the model's input go in overlapping tiles, blended "
                                   "linearly, so memory stays bounded.")
    u.add_argument("image", help="IMAGE.png|.jpg|.npz (low resolution), or held-out digits mnist5k:17 (or 0,5,9 "
                                 "or 0-7), shrunk to the model's input")
    u.add_argument("--model", default=default_model("upscale"),
                   help=f"the shipped {default_model('upscale')} (4x, 7x7 -> 28x28; the default) or a run folder "
                        "trained with --set data.super_resolution=F")
    u.add_argument("--sampler", help=f"any sampler (default: {SAMPLER_DEFAULT_TEXT})")
    u.add_argument("--steps", type=positive_int, help=f"the sampler's grid (default: {STEPS_DEFAULT_TEXT})")
    u.add_argument("--spacing", choices=[*LEVEL_SPACINGS, *CHAIN_SPACINGS], help="the sampling grid")
    u.add_argument("--eta", type=non_negative_float, help=ETA_DEFAULT_TEXT)
    u.add_argument("--noise-level", type=non_negative_float,
                   help="the condition's augmentation level (default: the run's data.cond_noise)")
    u.add_argument("--tile", type=positive_int, help="tile side in input pixels (default: the model's input size)")
    u.add_argument("--overlap", type=non_negative_int, help="tile overlap in input pixels (default: a quarter tile)")
    u.add_argument("--label", help="class to draw (a class-conditional upscaler): K, 'all', or 'source'")
    u.add_argument("--prompt", help="text (a text-conditional upscaler)")
    u.add_argument("--guidance-scale", type=float, help="classifier-free guidance w")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", default="upscaled.png", help="FILE.png (grid) or FILE.npz (images, samples)")
    u.add_argument("--strip", help="the input/bicubic/output strip PNG (default: beside --out, NAME-strip.png)")
    u.add_argument("--no-strip", action="store_true", help="write no strip")
    threads_flag(u)
    force_flag(u)
    u.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    from diffusa.cli_edit import _label, _write_strip, outputs, read_images
    from diffusa.data import resize_images
    from diffusa.pipelines import load
    from diffusa.pipelines.upscale import low_res_images, super_resolution

    t0 = time.perf_counter()
    out, strip = outputs(args)
    if not args.model.strip():
        raise DiffusaError("--model is empty: give a run folder trained with data.super_resolution")
    pipe = load(args.model)
    use_threads(args.threads, pipe.is_image)
    factor = super_resolution(pipe).factor
    c, h, w = pipe.data_shape
    pixels, labels = read_images(args.image, c)
    if labels is not None:  # held-out digits come at full size: shrunk as the training conditions were
        pixels = resize_images(pixels, (h // factor, w // factor))
    kw = {"label": _label(args.label, labels), "guidance_scale": args.guidance_scale, "spacing": args.spacing,
          "eta": args.eta, "seed": args.seed, "noise_level": args.noise_level, "tile": args.tile,
          "overlap": args.overlap}
    kw.update({k: getattr(args, k) for k in ("sampler", "steps") if getattr(args, k) is not None})
    res = pipe.upscale(pixels, args.prompt, **kw)
    res.save(out, args.force)
    s = res.settings
    if strip is not None:
        low = low_res_images(pipe, pixels)
        size = tuple(s["output_size"])
        _write_strip(strip, [F.interpolate(low, size=size, mode="nearest"),
                             F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1),
                             res.samples], ["input", "bicubic", f"upscaled x{factor}"])
    (ih, iw), (oh, ow) = s["input_size"], s["output_size"]
    print(f"wrote {len(res)} upscaled images to {out} ({pipe.name}: {ih}x{iw} -> {oh}x{ow}, x{factor}, "
          f"{s['tiles']} tile{'s' if s['tiles'] > 1 else ''} of {s['tile'][0]}x{s['tile'][1]} input pixels; noise "
          f"level {s['noise_level']:g}; {s['sampler']} {s['steps']} steps, {s['nfe']} network evaluations per batch, "
          f"{time.perf_counter() - t0:.2f} s)" + (f"; strip {strip}" if strip else ""))
    return 0


__all__ = ["add_parser", "cmd_upscale"]
