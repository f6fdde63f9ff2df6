"""Editing requests: `pipe.img2img(image, strength, ...)` (SDEdit) and `pipe.inpaint(image, mask, ...)` (RePaint)
on any model — pixel or latent, unconditional, class- or text-conditional, guided — and any sampler; on a
mask-conditioned inpainting model (`data.inpaint`, Palette) `inpaint` samples conditioned on the masked image and
the mask. The maths is `diffusa.editing`; this module turns typed arguments (images, masks, prompts, labels) into
its calls, batch by batch, and returns `Samples`.

Images: float (C, H, W) / (B, C, H, W) in [-1, 1], or uint8 pixels (H, W[, C]) / (B, H, W, C) as `Samples.images`
holds them, with the model's channels; a size of the model's aspect is resized (bilinear, antialiased) to the
model's size, and the output is compared and composited against that resized image. A latent model edits the
autoencoder's latents of the image (the encoder's mean) and decodes the result.

Masks: white = repaint, as in diffusers and the SD web UI: True, a float >= 0.5, or a uint8 >= 128 (a 0/1 uint8
array: 1) marks a pixel to draw anew; the rest is kept. One mask for every image or one per image, of the model's
image size exactly; or a built-in name (`MASKS`): left, right, top, bottom (that half is repainted), center (a
centred box of half the side), box:X,Y,W,H (columns X..X+W-1, rows Y..Y+H-1 from the top left), strokes or
strokes:SEED (1-3 thick random strokes, the same for the same seed; default 0: `diffusa.inpainting`). A latent model
repaints every latent cell that covers a masked pixel. Outside the mask the output equals the input exactly: the
result is composited with the input at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusa.editing import (
    check_jumps,
    check_strength,
    noise_to,
    repaint,
    repaint_schedule,
    reverse_steps,
    start_grid,
    strength_time,
)
from diffusa.errors import DiffusaError
from diffusa.inpainting import HALVES, half_mask, masked_condition, stroke_masks
from diffusa.pipelines.request import Label, count, image_batch, pixels_4d
from diffusa.pipelines.result import Samples
from diffusa.pipelines.sampling import check_sampling, network_calls, sampler_kwargs

if TYPE_CHECKING:
    from diffusa.pipelines.pipeline import Pipeline
    from diffusa.pipelines.sampling import StepCallback

DEFAULT_STRENGTH = 0.6
DEFAULT_JUMP_LENGTH, DEFAULT_JUMP_N_SAMPLE = 5, 5  # docs/editing.md: 4x the evaluations, a better seam and digit
# RePaint's steps are ancestral (Lugmayr et al. 2022): fresh noise each step harmonises the seam better than
# deterministic first-order steps on every mask and model measured (docs/editing.md)
DEFAULT_INPAINT_SAMPLER = "ddpm"
MASKS = (*HALVES, "center", "box:X,Y,W,H", "strokes[:SEED]")
MASK_EXAMPLES = (*HALVES, "center", "box:7,7,14,14", "strokes")  # one of each (the box: a 28x28 digit's centre)


# -- inputs ----------------------------------------------------------------------------------------------------
def image_shape(pipe: Pipeline) -> tuple[int, int, int]:
    """(C, H, W) of the images a model draws: its data shape, or its autoencoder's images for a latent model."""
    if not pipe.is_image:
        raise DiffusaError(f"{pipe.name} draws points, not images: editing needs an image model")
    if pipe.is_latent:
        return tuple(pipe.run.meta["latent"]["image_shape"])  # type: ignore[return-value]
    return tuple(pipe.data_shape)  # type: ignore[return-value]


def as_images(image: Any, shape: Sequence[int]) -> torch.Tensor:
    """image= (see the module docstring) -> float (B, C, H, W) in [-1, 1] of `shape` (C, H, W), on the CPU."""
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise DiffusaError(f"image must be a tensor or a numpy array of pixels, got {type(image).__name__} "
                           "(the command line reads files: diffusa edit IMAGE)")
    pixels = image.dtype == np.uint8 if isinstance(image, np.ndarray) else image.dtype == torch.uint8
    image = image_batch(image)
    if not pixels:
        if image.abs().max() > 1 + 1e-4:
            raise DiffusaError(f"float images are in [-1, 1]; this one spans [{float(image.min()):.3g}, "
                               f"{float(image.max()):.3g}] (uint8 pixels are read as 0..255)")
        image = image.detach().float().clamp(-1, 1).cpu()
    b, c, h, w = image.shape
    mc, mh, mw = shape
    if b < 1:
        raise DiffusaError("image holds no images")
    if c != mc:
        raise DiffusaError(f"image has {c} channels; this model draws images of {mc}")
    if (h, w) != (mh, mw):
        if h * mw != w * mh:
            raise DiffusaError(f"image is {h}x{w}; this model draws {mh}x{mw}: give an image of that size (or of "
                               "the same aspect, which is resized)")
        image = F.interpolate(image, size=(mh, mw), mode="bilinear", antialias=True, align_corners=False)
        image = image.clamp(-1, 1)
    return image.contiguous()


def is_named_mask(text: str) -> bool:
    """Whether `text` is in the grammar of the built-in masks (`MASKS`); `named_mask` checks its numbers."""
    return text in (*HALVES, "center", "strokes") or text.startswith(("box:", "strokes:"))


def named_mask(spec: str, h: int, w: int) -> torch.Tensor:
    """A built-in mask (True = repaint) of shape (1, 1, h, w): a half, the centre box, box:X,Y,W,H, or strokes[:SEED]
    (`diffusa.inpainting.stroke_masks` drawn with that seed, default 0)."""
    if not is_named_mask(spec):
        raise DiffusaError(f"unknown mask {spec!r}: give an array or one of {', '.join(MASKS)}")
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    if spec in HALVES:
        return half_mask(spec, h, w)
    if spec == "strokes" or spec.startswith("strokes:"):
        seed = spec[len("strokes:"):] if ":" in spec else "0"
        if not (seed.isascii() and seed.isdecimal()) or int(seed) >= 2**63:
            raise DiffusaError(f"mask {spec!r}: random strokes are strokes or strokes:SEED (a non-negative integer)")
        return stroke_masks(1, h, w, torch.Generator().manual_seed(int(seed)))
    if spec == "center":
        bh, bw = h // 2, w // 2
        m[..., (h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = True
    else:  # box:X,Y,W,H
        try:
            x, y, bw, bh = (int(v) for v in spec[4:].split(","))
        except ValueError:
            raise DiffusaError(f"mask {spec!r}: a box is box:X,Y,W,H in pixels, e.g. box:7,7,14,14") from None
        if x < 0 or y < 0 or bw < 1 or bh < 1 or x + bw > w or y + bh > h:
            raise DiffusaError(f"mask {spec!r}: the box must lie inside the {h}x{w} image with W, H >= 1")
        m[..., y:y + bh, x:x + bw] = True
    return m


def as_mask(mask: Any, hw: tuple[int, int]) -> torch.Tensor:
    """mask= (see the module docstring) -> bool (B, 1, H, W), True = repaint."""
    h, w = hw
    if isinstance(mask, str):
        return named_mask(mask, h, w)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask))
    if not torch.is_tensor(mask):
        raise DiffusaError(f"mask must be a tensor, a numpy array or a built-in name ({', '.join(MASKS)}), "
                           f"got {type(mask).__name__}")
    if mask.dtype == torch.uint8:  # pixels, laid out as images are: (H, W[, C]) or (B, H, W[, C])
        mask = pixels_4d(mask)
        if mask.ndim != 4:
            raise DiffusaError(f"mask: uint8 pixels must be (H, W[, C]) or (B, H, W[, C]), got {tuple(mask.shape)}")
        binary = bool(((mask == 0) | (mask == 1)).all())
        mask = (mask.amax(-1, keepdim=True) >= (1 if binary else 128)).movedim(-1, 1)
    elif mask.dtype == torch.bool or mask.is_floating_point():  # tensors: (H, W), (1, H, W) or (B, 1, H, W)
        if mask.is_floating_point() and not torch.isfinite(mask).all():
            raise DiffusaError("mask holds NaN or inf values")
        while mask.ndim < 4:
            mask = mask[None]
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise DiffusaError(f"mask must be (H, W), (1, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
        mask = mask >= 0.5 if mask.is_floating_point() else mask
    else:
        raise DiffusaError(f"mask must be bool, float (>= 0.5: repaint) or uint8 pixels, got {mask.dtype}")
    if tuple(mask.shape[-2:]) != (h, w):
        raise DiffusaError(f"mask is {mask.shape[-2]}x{mask.shape[-1]}; the image is {h}x{w}: give a mask of "
                           "the image's size")
    return mask.cpu().contiguous()


def encode(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    """Images in the model's space: the scaled latents (the encoder's mean) of a latent model; else themselves."""
    if not pipe.is_latent:
        return images
    from diffusa.autoencoder import encode_all

    dec = pipe.run.decoder
    return encode_all(dec.model, images.float().cpu()) * dec.scale


def _per_sample(x: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """One for all n samples, or one each."""
    if x.shape[0] not in (1, n):
        raise DiffusaError(f"{what}: {x.shape[0]} given for n={n} samples: give one, or one per sample")
    return x.expand(n, *x.shape[1:])


# -- img2img -----------------------------------------------------------------------------------------------------
def img2img(pipe: Pipeline, image: Any, strength: float | None = None, prompt: str | Sequence[str] | None = None,
            *, n: int | None = None, label: Label = None, sampler: str | None = None, steps: int | None = None,
            guidance_scale: float | None = None, classifier: str | Path | None = None,
            classifier_scale: float | None = None, eta: float | None = None, variance: str | None = None,
            spacing: str | None = None, cond_image: Any = None, seed: int = 0, batch_size: int | None = None,
            callback: StepCallback | None = None, autoguidance: float | None = None,
            guide: str | Path | None = None) -> Samples:
    """SDEdit (Meng et al. 2022, Alg. 1): noise `image` to the level `strength` names (`diffusa.editing`; default
    DEFAULT_STRENGTH), then run `sampler` over its grid for `steps` from there; n outputs (default: one per image;
    one image gives n variations). Sampler and steps (unless given: the model's recommendation, `resolve_sampling`),
    prompt, label, guidance, autoguidance and guide, eta, variance, spacing, seed, batch_size and callback as in
    `Pipeline.__call__`;
    cond_image is an image-conditioned model's condition. settings["nfe"]: the network evaluations of the first
    batch; settings["t_start"], ["sampler_steps"]: where it started, and the steps run.
    With strength 1 and the same seed it is plain sampling, but for the faint alpha(1) x0 the start keeps (0 for
    flow; ~5e-5 for the shipped cosine chains).
    """
    from diffusa.pipelines.sampling import resolve_recommended, resolve_sampling, sampling_grid

    pipe.refuse_mask_model("img2img")
    sampler, steps, batch_size = resolve_sampling(pipe, sampler, steps, batch_size)
    spacing, eta = resolve_recommended(pipe, sampler, spacing, eta, steps)
    seed = check_sampling(sampler, steps, batch_size, seed, eta, callback)
    strength = check_strength(DEFAULT_STRENGTH if strength is None else strength)
    images = as_images(image, image_shape(pipe))
    n = count(n, prompt, label, images.shape[0])
    pipe.check_memory(n)
    images = _per_sample(images, n, "image")
    grid = sampling_grid(pipe.run.denoiser, steps, spacing, sampler)
    req = pipe.request(n, prompt=prompt, label=label, guidance_scale=guidance_scale, classifier=classifier,
                       classifier_scale=classifier_scale, image=cond_image, autoguidance=autoguidance, guide=guide)
    process = req.denoiser.process
    t_start = strength_time(process, strength, grid)
    sub = start_grid(grid, t_start)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *pipe.data_shape), generator=g)  # as plain sampling draws x_T: strength 1 matches it
    x_start = noise_to(process, encode(pipe, images), t_start, noise)
    samples, nfe, stopped = pipe.run_batches(req, x_start, sub, sampler, g, batch_size, sampler_kwargs(eta, variance),
                                             callback)
    a, s = process.alpha_sigma(torch.tensor(t_start, dtype=torch.float64))
    settings = pipe.settings_of(req, n=n, sampler=sampler, steps=steps, spacing=spacing, classifier=classifier,
                                eta=eta, variance=variance, seed=seed, batch_size=batch_size, nfe=nfe, prompt=prompt,
                                label=label, task="img2img", strength=strength, t_start=t_start,
                                noise_level=float(s / (a**2 + s**2).sqrt()), sampler_steps=len(sub) - 1)
    return Samples(samples, settings, "image", req.labels, req.prompts, stopped)


# -- inpainting ---------------------------------------------------------------------------------------------------
def default_jump_n_sample(mask_model: bool, jump_length: int | None = None) -> int:
    """RePaint's passes per jump where none are asked for: 1 (the known region replaced before every step, no jumps)
    on a mask-conditioned model unless a jump length is asked for, else DEFAULT_JUMP_N_SAMPLE."""
    return 1 if mask_model and jump_length is None else DEFAULT_JUMP_N_SAMPLE


def inpaint(pipe: Pipeline, image: Any, mask: Any, prompt: str | Sequence[str] | None = None, *,
            n: int | None = None, label: Label = None, sampler: str | None = None, steps: int | None = None,
            jump_length: int | None = None, jump_n_sample: int | None = None, guidance_scale: float | None = None,
            classifier: str | Path | None = None, classifier_scale: float | None = None, eta: float | None = None,
            variance: str | None = None, spacing: str | None = None, cond_image: Any = None, seed: int = 0,
            batch_size: int | None = None, callback: StepCallback | None = None, autoguidance: float | None = None,
            guide: str | Path | None = None) -> Samples:
    """RePaint (Lugmayr et al. 2022): draw the masked part of `image` anew (mask white = repaint; see the module
    docstring), with `jump_n_sample - 1` resampling jumps of `jump_length` steps (`diffusa.editing.repaint`; default
    DEFAULT_JUMP_LENGTH x DEFAULT_JUMP_N_SAMPLE); jump_n_sample=1 is plain replacement, without jumps. sampler:
    default DEFAULT_INPAINT_SAMPLER (ancestral, ahead of a model's recommended sampler, which is measured on plain
    sampling), any works (each step is the sampler's own over [t, s]); steps: the model's recommended steps, else
    20. Other arguments as `img2img`. The output equals the input exactly outside the mask. settings["nfe"]: the
    network evaluations of the first batch; ["reverse_steps"]: the sampler steps RePaint took (steps plus the
    repeats). callback(step, t, x_t, x0) after every reverse step.

    A mask-conditioned inpainting model (`data.inpaint`; Palette, Saharia et al. 2022) is given the image blanked
    by the mask, plus the mask (`diffusa.inpainting.masked_condition`), at every step of the same loop, whose
    default there is jump_n_sample=1: the known region replaced by the noised input before every step, no jumps
    (`steps` evaluations; jump_length alone asks for DEFAULT_JUMP_N_SAMPLE passes). Replacement makes x_t's known
    part exactly what training showed the network, alpha_t x0 + sigma_t eps with fresh eps, independent of the
    unknown part given the known pixels, as in training; without it the known part follows the network's own
    trajectory and drifts with its errors (docs/editing.md measures both). jump_n_sample=0 (such models only) is
    conditioning alone: the sampler's own grid from x_T (multistep solvers keep their history), its default the
    model's (`resolve_sampling`, as `pipe(...)`), then the final composite. settings["conditioning"]: "mask".
    """
    from diffusa.pipelines.sampling import resolve_recommended, resolve_sampling, sampling_grid
    from diffusa.samplers import get_sampler, sampler_options

    mask_model = bool(pipe.image_condition.inpaint)
    if jump_n_sample is None:
        jump_n_sample = default_jump_n_sample(mask_model, jump_length)
    conditional = type(jump_n_sample) is int and jump_n_sample == 0  # conditioning alone: no RePaint loop
    if conditional and not mask_model:
        raise DiffusaError(f"jump_n_sample must be a positive integer on {pipe.name}: 0 (no replacement, "
                           "conditioning alone) is for a mask-conditioned model (data.inpaint)")
    if conditional and jump_length is not None:
        raise DiffusaError(f"jump_length {jump_length!r}: jump_n_sample=0 (conditioning alone) makes no jumps; leave "
                           "jump_length out")
    sampler, steps, batch_size = resolve_sampling(pipe, sampler, steps, batch_size,
                                                  task_sampler=None if conditional else DEFAULT_INPAINT_SAMPLER)
    spacing, eta = resolve_recommended(pipe, sampler, spacing, eta, steps)
    seed = check_sampling(sampler, steps, batch_size, seed, eta, callback)
    if mask_model and cond_image is not None:
        raise DiffusaError(f"cond_image: {pipe.name} is a mask-conditioned inpainting model; its condition is made "
                           "from image and mask")
    shape = image_shape(pipe)
    images = as_images(image, shape)
    repaint_px = as_mask(mask, shape[1:])
    covered = repaint_px.flatten(1).float().mean(1)
    for i, c in enumerate(covered.tolist()):
        which = "the mask" if len(covered) == 1 else f"mask {i}"
        if c == 0:
            raise DiffusaError(f"{which} marks no pixel to repaint (white = repaint): nothing to inpaint")
        if c == 1:
            raise DiffusaError(f"{which} covers the whole image: that is plain sampling (pipe(...), diffusa "
                               "generate / sample), not inpainting")
    n = count(n, prompt, label, max(images.shape[0], repaint_px.shape[0]))
    pipe.check_memory(n)
    images, repaint_px = _per_sample(images, n, "image"), _per_sample(repaint_px, n, "mask")
    grid = sampling_grid(pipe.run.denoiser, steps, spacing, sampler)
    if mask_model:
        cond_image = masked_condition(images, repaint_px)
    req = pipe.request(n, prompt=prompt, label=label, guidance_scale=guidance_scale, classifier=classifier,
                       classifier_scale=classifier_scale, image=cond_image, autoguidance=autoguidance, guide=guide)
    common = {"n": n, "sampler": sampler, "steps": steps, "spacing": spacing, "classifier": classifier, "eta": eta,
              "variance": variance, "seed": seed, "batch_size": batch_size, "prompt": prompt, "label": label}
    done = {"masked_fraction": float(covered.mean()), **({"conditioning": "mask"} if mask_model else {})}
    if conditional:  # conditioning alone (Palette's sampling), then the composite
        g = torch.Generator().manual_seed(seed)
        x_T = req.denoiser.process.prior_sample((n, *pipe.data_shape), generator=g)
        drawn, nfe_first, stopped = pipe.run_batches(req, x_T, grid, sampler, g, batch_size,
                                                     sampler_kwargs(eta, variance), callback)
        settings = pipe.settings_of(req, nfe=nfe_first, **common, task="inpaint", jump_length=None,
                                    jump_n_sample=0, reverse_steps=len(grid) - 1, **done)
        return Samples(torch.where(repaint_px, drawn, images), settings, "image", req.labels, req.prompts, stopped)
    jump_length, jump_n_sample = check_jumps(DEFAULT_JUMP_LENGTH if jump_length is None else jump_length,
                                             jump_n_sample, len(grid) - 1)
    schedule = repaint_schedule(len(grid) - 1, jump_length, jump_n_sample)
    den = req.denoiser
    known = encode(pipe, images)
    keep = ~(F.adaptive_max_pool2d(repaint_px.float(), known.shape[-2:]) > 0) if pipe.is_latent else ~repaint_px
    options = sampler_kwargs(eta, variance)
    fn = get_sampler(sampler)
    for key in options:  # as `samplers.sample` refuses them (RePaint calls the sampler step by step)
        if key not in sampler_options(sampler):
            raise DiffusaError(f"sampler {sampler!r} has no option {key!r}; its options: "
                               f"{', '.join(sampler_options(sampler)) or 'none'}")
    g = torch.Generator().manual_seed(seed)
    x_T = den.process.prior_sample((n, *pipe.data_shape), generator=g)
    stop: dict[str, int] = {}

    def hook(k: int, t: float, x: torch.Tensor, x0: torch.Tensor) -> bool:
        """The user's callback; True also at the step an earlier batch stopped at (as `Pipeline.__call__`)."""
        return bool(callback is not None and callback(k, t, x, x0)) or stop.get("step") == k

    nfe: list[int] = []
    chunks = []
    with network_calls(pipe.run.net, *([] if req.guide is None else [req.guide.net])) as calls:
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            cond = None if req.cond is None else req.cond[lo:hi].to(pipe.device)
            calls[0] = 0
            x, stopped = repaint(den, known[lo:hi].to(pipe.device), keep[lo:hi].to(pipe.device),
                                 x_T[lo:hi].to(pipe.device), grid, schedule, fn, cond=cond, generator=g,
                                 options=options, callback=hook if (callback is not None or stop) else None)
            if stopped is not None:
                stop.setdefault("step", stopped)
            nfe.append(calls[0])
            chunks.append(x.detach().cpu())
    samples = torch.where(repaint_px, pipe.decode(torch.cat(chunks)).float(), images)
    settings = pipe.settings_of(req, nfe=nfe[0], **common, task="inpaint", jump_length=jump_length,
                                jump_n_sample=jump_n_sample, reverse_steps=reverse_steps(schedule), **done)
    return Samples(samples, settings, "image", req.labels, req.prompts, stop.get("step"))


__all__ = ["DEFAULT_INPAINT_SAMPLER", "DEFAULT_JUMP_LENGTH", "DEFAULT_JUMP_N_SAMPLE", "DEFAULT_STRENGTH",
           "MASKS", "MASK_EXAMPLES", "as_images", "as_mask", "default_jump_n_sample", "encode", "image_shape",
           "img2img", "inpaint", "is_named_mask", "named_mask"]
