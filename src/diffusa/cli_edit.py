"""`diffusa edit IMAGE --strength S` (SDEdit / img2img) and `diffusa inpaint IMAGE --mask MASK` (RePaint): edit
images with a shipped model or any run, no training. Both call `Pipeline.img2img` / `Pipeline.inpaint`.

IMAGE: a PNG or JPEG (converted to the model's channels; a size of the model's aspect is resized to its size,
another size refused), an .npz (its `images` array, as `diffusa sample --out x.npz` writes it, or its only array:
a batch of N images is one call), or held-out digits `mnist5k:17`, `mnist5k:0,5,9`, `mnist5k:0-7` (indices of the
test split), or rough sketches of digits `sketch:7`, `sketch:0-9` (`diffusa.data.sketches`, seed 0; SDEdit's
stroke-to-image use: --strength 0.3 unconditional, 0.7-0.8 with --label source or a prompt). MASK: white =
repaint, a file as IMAGE (one mask for all images, or one per image), or a built-in: left, right, top, bottom,
center, box:X,Y,W,H, strokes[:SEED]. A mask-conditioned model (trained with data.inpaint) is also given the
masked image and the mask; its default is --jump-n-sample 1 (replacement, no jumps), and --jump-n-sample 0 drops
the replacement (conditioning alone, on any sampler's own grid).
--out: a PNG grid or an .npz (`images`, `samples`); beside it a strip PNG, one row per image (at most 8): input |
[masked] | output.
"""

from __future__ import annotations

import argparse
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.cli_common import (
    autoguidance_flags,
    force_flag,
    non_negative_float,
    non_negative_int,
    positive_int,
    threads_flag,
)
from diffusa.errors import DiffusaError
from diffusa.threads import use_threads

DIGITS = re.compile(r"mnist5k:(.+)")
SKETCHES = re.compile(r"sketch:(.+)")  # rough sketches of these digits (diffusa.data.sketches), seed 0
STRIP_ROWS = 8


def _strength(text: str) -> float:
    """--strength: any number here; the pipeline says what is wrong with it (0, 1.5, nan) in its own words."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def add_parser(sub: Any) -> None:
    """Register `edit` and `inpaint` on the CLI's sub-parsers."""
    from diffusa.pipelines import DEFAULT_TEXT_SCALE
    from diffusa.pipelines.edit import (
        DEFAULT_INPAINT_SAMPLER,
        DEFAULT_JUMP_LENGTH,
        DEFAULT_JUMP_N_SAMPLE,
        DEFAULT_STRENGTH,
        MASKS,
    )
    from diffusa.pipelines.sampling import ETA_DEFAULT_TEXT, SAMPLER_DEFAULT_TEXT, STEPS_DEFAULT_TEXT
    from diffusa.samplers import CHAIN_SPACINGS, LEVEL_SPACINGS
    from diffusa.shipped import default_model

    def common(q: argparse.ArgumentParser, task: str, out: str, sampler: str) -> None:
        q.add_argument("image", help="IMAGE.png|.jpg|.npz, held-out digits mnist5k:17 (or 0,5,9 or 0-7), or "
                                    "rough sketches of digits sketch:7 (or 0-9)")
        q.add_argument("--model", help="a shipped model's name or a run folder (default: mnist-text with --prompt "
                                       f"or --label, {default_model(task)} without)")
        q.add_argument("--n", type=positive_int, help="outputs (default one per image; one image: n variations)")
        q.add_argument("--prompt", help="text to draw (a text-conditional model)")
        q.add_argument("--label", help="class to draw: K, 'all', or 'source' (each mnist5k digit's own label)")
        q.add_argument("--sampler", help=f"any sampler (default: {sampler})")
        q.add_argument("--steps", type=positive_int, help=f"the sampler's grid (default: {STEPS_DEFAULT_TEXT})")
        q.add_argument("--spacing", choices=[*LEVEL_SPACINGS, *CHAIN_SPACINGS], help="the sampling grid")
        q.add_argument("--eta", type=non_negative_float, help=ETA_DEFAULT_TEXT)
        q.add_argument("--guidance-scale", type=float,
                       help="classifier-free guidance w (default: the model's config.json \"sampling\" "
                            f"\"guidance_scale\", else {DEFAULT_TEXT_SCALE:g} for a text model); on a "
                            "mask-conditioned inpainting model, mask guidance against the whole image to draw "
                            "(mnist-inpaint: 3; 1 = none)")
        autoguidance_flags(q)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", default=out, help="FILE.png (grid) or FILE.npz (images, samples)")
        q.add_argument("--strip", help="the before/after strip PNG (default: beside --out, NAME-strip.png)")
        q.add_argument("--no-strip", action="store_true", help="write no strip")
        threads_flag(q)
        force_flag(q)

    e = sub.add_parser("edit", help="img2img (SDEdit): redraw an image from a chosen noise level",
                       description="SDEdit (Meng et al. 2022): noise IMAGE to the level --strength names (the same "
                                   "on every process: the noised image is cos(pi s/2) x + sin(pi s/2) noise, up to "
                                   "scale), then sample back with any sampler. Low strength keeps the image; 1 "
                                   "draws from pure noise.")
    common(e, "img2img", "edited.png", SAMPLER_DEFAULT_TEXT)
    e.add_argument("--strength", type=_strength, default=DEFAULT_STRENGTH,
                   help=f"in (0, 1] (default {DEFAULT_STRENGTH:g}); runs about strength x steps steps")
    e.set_defaults(func=cmd_edit)

    p = sub.add_parser("inpaint", help="inpainting (RePaint): redraw the masked part of an image",
                       description="RePaint (Lugmayr et al. 2022) with any model and sampler: the white part of "
                                   "MASK is drawn anew, the rest kept exactly; resampling jumps harmonise the seam. "
                                   "A mask-conditioned model (trained with data.inpaint) is also given the masked "
                                   "image and the mask, with no jumps unless asked for.")
    common(p, "inpaint", "inpainted.png",
           f"{DEFAULT_INPAINT_SAMPLER}, RePaint's ancestral steps, whatever the model recommends")
    p.add_argument("--mask", required=True, help="MASK.png|.npz (white = repaint) or " + " | ".join(MASKS))
    p.add_argument("--jump-length", type=positive_int,
                   help=f"steps each resampling jump goes back (default {DEFAULT_JUMP_LENGTH})")
    p.add_argument("--jump-n-sample", type=non_negative_int,
                   help=f"passes over each jump; 1 = replacement without jumps (default {DEFAULT_JUMP_N_SAMPLE}; 1 "
                        "on a mask-conditioned model, where 0 = no replacement: conditioning alone)")
    p.set_defaults(func=cmd_inpaint)


# -- reading IMAGE and MASK ---------------------------------------------------------------------------------------
def _indices(text: str, size: int, source: str = "mnist5k") -> list[int]:
    """'17', '0,5,9', '0-7' (inclusive) -> indices below `size` (of the held-out digits, or digits to sketch)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise DiffusaError(f"{source}:{text}: give numbers like {source}:7, {source}:0,5,9 or {source}:0-7")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo or hi >= size:
            what = "the held-out split has digits" if source == "mnist5k" else "digits are"
            raise DiffusaError(f"{source}:{text}: {what} 0..{size - 1}")
        out.extend(range(lo, hi + 1))
    return out


def _read_npz(path: Path, what: str) -> np.ndarray:
    """The `images` array of an .npz, or its only array (diffusa's mark aside)."""
    from diffusa.checkpoint import MARK

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != MARK}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DiffusaError(f"{what} {path}: not a readable .npz ({e})") from None
    if "images" in arrays:
        return arrays["images"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise DiffusaError(f"{what} {path} holds {', '.join(sorted(arrays)) or 'no arrays'}: save the images as "
                       "'images' (uint8 (N, H, W, C)), or one array alone")


def read_file(spec: str, what: str, channels: int) -> np.ndarray:
    """A PNG/JPEG (converted to `channels`: grayscale or RGB) as uint8 (H, W, C), or an .npz's array."""

    path = Path(spec)
    if not path.exists():
        raise DiffusaError(f"{what} {spec} does not exist")
    if not path.is_file():
        raise DiffusaError(f"{what} {spec} is not a file")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, what)
    from diffusa.data.folders import decode_image  # the one image reader: pixel limit, every PIL mode

    pixels = decode_image(path, "L" if channels == 1 else "RGB")
    return pixels.reshape(*pixels.shape[:2], -1)


def read_images(spec: str, channels: int) -> tuple[Any, torch.Tensor | None]:
    """IMAGE -> (pixels for the pipeline, the labels of mnist5k digits or None)."""
    m = DIGITS.fullmatch(spec)
    if m and not Path(spec).exists():
        from diffusa.data import load_dataset

        test = load_dataset("mnist5k", "test")
        idx = torch.tensor(_indices(m[1], len(test)))
        return test.x[idx], test.labels[idx]
    m = SKETCHES.fullmatch(spec)
    if m and not Path(spec).exists():
        from diffusa.data.sketches import sketch_digits

        labels = torch.tensor(_indices(m[1], 10, "sketch"))
        return sketch_digits(labels), labels
    return read_file(spec, "IMAGE", channels), None


def _label(text: str | None, labels: torch.Tensor | None) -> Any:
    if text == "source":
        if labels is None:
            raise DiffusaError("--label source takes each digit's own label: IMAGE must be mnist5k:... or sketch:...")
        return labels
    return int(text) if text is not None and text.isdecimal() else text


def outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """--out and the before/after strip (--strip, default NAME-strip.png beside --out; none with --no-strip),
    checked before any work: never an input (even with --force), never a run's file, never a file diffusa did
    not write without --force. Shared by edit, inpaint and upscale."""
    from diffusa.cli_common import png_out
    from diffusa.pipelines import check_out

    out = Path(args.out)
    strip = None if args.no_strip else Path(args.strip or out.with_name(f"{out.stem}-strip.png"))
    _check_paths(args, out, strip)  # before the guards: --force must not let an input be replaced
    out = check_out(out, args.force)
    if strip is not None:
        png_out(str(strip), "--strip", args.force)
    return out, strip


def _check_paths(args: argparse.Namespace, out: Path, strip: Path | None) -> None:
    """--out and the strip are new files, never IMAGE or MASK (the inputs stay untouched)."""
    inputs = [Path(p).resolve() for p in (args.image, getattr(args, "mask", None)) if p and Path(p).is_file()]
    for flag, path in (("--out", out), ("--strip", strip)):
        if path is not None and path.resolve() in inputs:
            raise DiffusaError(f"{flag} {path} is an input file; write the result elsewhere")
    if strip is not None and strip.resolve() == out.resolve():
        raise DiffusaError(f"--strip {strip} is --out; give them different names")


def _prepare(args: argparse.Namespace) -> tuple[Any, Path, Path | None, Any, dict[str, Any]]:
    """(pipeline, out, strip, pixels, the pipeline's keywords) from the shared flags."""
    from diffusa.pipelines import load
    from diffusa.pipelines.edit import image_shape
    from diffusa.shipped import default_model

    out, strip = outputs(args)
    if args.model is not None and not args.model.strip():
        raise DiffusaError("--model is empty: give a shipped model's name or a run folder")
    name = args.model or default_model(args.command, args.prompt is not None or args.label is not None)
    pipe = load(name)
    use_threads(args.threads, pipe.is_image)
    pixels, labels = read_images(args.image, image_shape(pipe)[0])
    kw = {"n": args.n, "label": _label(args.label, labels), "guidance_scale": args.guidance_scale,
          "spacing": args.spacing, "eta": args.eta, "seed": args.seed, "autoguidance": args.autoguidance,
          "guide": args.guide}
    kw.update({k: getattr(args, k) for k in ("sampler", "steps") if getattr(args, k) is not None})
    return pipe, out, strip, pixels, kw


def _write_strip(path: Path, columns: list[torch.Tensor], labels: list[str]) -> None:
    from diffusa.viz import save_strip

    n = min(STRIP_ROWS, columns[-1].shape[0])
    save_strip([c.expand(columns[-1].shape[0], *c.shape[1:])[:n] for c in columns], path, labels)


def cmd_edit(args: argparse.Namespace) -> int:
    from diffusa.pipelines.edit import as_images, image_shape

    t0 = time.perf_counter()
    pipe, out, strip, pixels, kw = _prepare(args)
    res = pipe.img2img(pixels, args.strength, args.prompt, **kw)
    res.save(out, args.force)
    s = res.settings
    if strip is not None:
        _write_strip(strip, [as_images(pixels, image_shape(pipe)), res.samples],
                     ["input", f"strength {s['strength']:g}"])
    print(f"wrote {len(res)} edited images to {out} ({pipe.name}, strength {s['strength']:g}: t_start "
          f"{s['t_start']:.3f}, noise {s['noise_level']:.3f}; {s['sampler']} {s['sampler_steps']} of "
          f"{s['steps']} steps, {s['nfe']} network evaluations per batch, {time.perf_counter() - t0:.2f} s)"
          + (f"; strip {strip}" if strip else ""))
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from diffusa.pipelines.edit import as_images, as_mask, image_shape, is_named_mask

    t0 = time.perf_counter()
    pipe, out, strip, pixels, kw = _prepare(args)
    shape = image_shape(pipe)
    mask = args.mask if is_named_mask(args.mask) and not Path(args.mask).exists() else read_file(args.mask, "MASK", 1)
    res = pipe.inpaint(pixels, mask, args.prompt, jump_length=args.jump_length, jump_n_sample=args.jump_n_sample,
                       **kw)
    res.save(out, args.force)
    s = res.settings
    if strip is not None:
        images = as_images(pixels, shape)
        repaint = as_mask(mask, shape[1:])
        masked = torch.where(repaint, torch.zeros(()), images.expand(max(len(images), len(repaint)), *shape))
        _write_strip(strip, [images, masked, res.samples], ["input", "masked", "output"])
    jumps = s["jump_n_sample"]
    how = {0: "no replacement", 1: "replacement, no jumps"}.get(jumps, f"jumps {s['jump_length']} x {jumps}")
    how = ("conditioned on the masked image, " if s.get("conditioning") == "mask" else "") + how
    if s.get("conditioning") == "mask" and s.get("guidance_scale") not in (None, 1):
        how += f", mask guidance {s['guidance_scale']:g}"
    print(f"wrote {len(res)} inpainted images to {out} ({pipe.name}, {s['masked_fraction']:.0%} masked; "
          f"{s['sampler']} {s['steps']} steps, {how}: {s['reverse_steps']} steps, {s['nfe']} network evaluations "
          f"per batch, {time.perf_counter() - t0:.2f} s)" + (f"; strip {strip}" if strip else ""))
    return 0


__all__ = ["add_parser", "cmd_edit", "cmd_inpaint", "read_file", "read_images"]
