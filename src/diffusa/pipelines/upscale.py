"""Super-resolution requests: `pipe.upscale(low_res, ...)` on a model trained with `data.super_resolution`
(SR3, Saharia et al. 2021), large inputs in overlapping tiles, and `cascade(base, upscaler, ...)`: a base model's
samples upscaled in one call (cascaded diffusion, Ho et al. 2022).

Images: as `pipe.img2img` reads them (`diffusa.pipelines.edit.as_images`: uint8 pixels or floats in [-1, 1]), with
the model's channels, at least its low-resolution input size (its output size / factor) and not its output size
(that is the image it was to be made from, most likely). An input of the model's input size is one pass; a larger
one (any shape) is upscaled in tiles of `tile` input pixels (default: the model's input size) overlapping by
`overlap` (default a quarter of a tile), blended linearly (`diffusa.tiling`), so memory is bounded by
`diffusa.tiling.TILE_BATCH` tiles per network call whatever the input's size.

The condition: the input, noised to the run's sampling level (`data.cond_noise`, or `noise_level`) with the seed's
generator after x_T is drawn (noise-conditioning augmentation, `diffusa.superres`), then resized bilinearly to the
output's size as the U-Net resizes it (a one-pass input is bit for bit `pipe(image=low_res)`'s condition).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusa.cond import Cond
from diffusa.errors import DiffusaError
from diffusa.pipelines.edit import as_images
from diffusa.pipelines.request import Label, check_seed, pixels_4d, resolve
from diffusa.pipelines.result import Samples
from diffusa.pipelines.sampling import check_sampling, sampler_kwargs
from diffusa.superres import ImageCondition
from diffusa.tiling import TILE_BATCH, TiledDenoiser, Tiles

if TYPE_CHECKING:
    from diffusa.pipelines.pipeline import Pipeline
    from diffusa.pipelines.sampling import StepCallback

OVERLAP_FRACTION = 0.25  # default overlap: a quarter of a tile (rounded down), in input pixels


def check_super_resolution(name: str, source: ImageCondition) -> ImageCondition:
    """`source` (a model's image condition, `ImageCondition.of`) if it is a super-resolution model's; a
    DiffusaError naming the model `name` otherwise."""
    if not source.factor:
        raise DiffusaError(f"{name} is not a super-resolution model (it was trained without "
                           "data.super_resolution): train one with diffusa train --set data.super_resolution=4")
    return source


def super_resolution(pipe: Pipeline) -> ImageCondition:
    """The super-resolution settings of a pipeline's model; a DiffusaError for any other model."""
    return check_super_resolution(pipe.name, pipe.image_condition)


def _input_hw(image: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of image= as `as_images` lays it out; `fallback` where it cannot tell (as_images then says why)."""
    if not (isinstance(image, np.ndarray) or torch.is_tensor(image)) or image.ndim < 2:
        return fallback
    if image.dtype == (np.uint8 if isinstance(image, np.ndarray) else torch.uint8):
        image = pixels_4d(image)
        return (int(image.shape[1]), int(image.shape[2])) if image.ndim == 4 else fallback
    return int(image.shape[-2]), int(image.shape[-1])


def low_res_images(pipe: Pipeline, image: Any) -> torch.Tensor:
    """image= -> float (B, C, h, w) in [-1, 1]: the model's channels, at least its input size, not its output."""
    c, out_h, out_w = pipe.data_shape
    factor = super_resolution(pipe).factor
    in_h, in_w = out_h // factor, out_w // factor
    h, w = _input_hw(image, (in_h, in_w))
    images = as_images(image, (c, h, w))  # the one parser of image=: layout, dtype, range, channels
    if (h, w) == (out_h, out_w):
        raise DiffusaError(f"image is {h}x{w}, the size this model outputs ({in_h}x{in_w} -> {out_h}x{out_w}): give "
                           f"the low-resolution image ({in_h}x{in_w}, or larger to upscale in tiles)")
    if h < in_h or w < in_w:
        raise DiffusaError(f"image is {h}x{w}, smaller than this model's {in_h}x{in_w} input: give at least "
                           f"{in_h}x{in_w}")
    return images


def plan_tiles(pipe: Pipeline, hw: tuple[int, int], tile: int | None, overlap: int | None) -> Tiles:
    """The tiles (in output pixels) of an input of hw pixels; tile and overlap in input pixels."""
    _, out_h, out_w = pipe.data_shape
    factor = super_resolution(pipe).factor
    native = min(out_h, out_w) // factor
    for name, value in (("tile", tile), ("overlap", overlap)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DiffusaError(f"{name} must be a non-negative integer (input pixels), got {value!r}")
    tile = native if tile is None else tile
    if tile < 1:
        raise DiffusaError("tile must be at least 1 input pixel")
    th, tw = min(tile, hw[0]), min(tile, hw[1])
    overlap = int(min(th, tw) * OVERLAP_FRACTION) if overlap is None else overlap
    if overlap >= min(th, tw):
        raise DiffusaError(f"overlap {overlap} must be smaller than the tile ({min(th, tw)} input pixels)")
    patch = int(pipe.run.meta["network"]["config"].get("patch_size", 1) or 1)
    if (th * factor) % patch or (tw * factor) % patch:
        raise DiffusaError(f"a tile of {th}x{tw} input pixels is {th * factor}x{tw * factor} output pixels, not "
                           f"divisible by the network's patch size {patch}: choose another tile")
    oh, ow = (0 if t == n else overlap * factor for t, n in ((th, hw[0]), (tw, hw[1])))  # one tile: no overlap
    return Tiles((hw[0] * factor, hw[1] * factor), (th * factor, tw * factor), (oh, ow))


def upscale(pipe: Pipeline, image: Any, prompt: str | Sequence[str] | None = None, *, label: Label = None,
            sampler: str | None = None, steps: int | None = None, noise_level: float | None = None,
            tile: int | None = None, overlap: int | None = None, guidance_scale: float | None = None,
            eta: float | None = None, variance: str | None = None, spacing: str | None = None, seed: int = 0,
            batch_size: int | None = None, callback: StepCallback | None = None) -> Samples:
    """SR3 (Saharia et al. 2021): draw x at `factor` times the size of each low-resolution image, conditioned on
    it (see the module docstring). noise_level: the condition's augmentation level (default the run's
    `data.cond_noise`; within [0, data.cond_noise_max]). tile, overlap: in input pixels (default the model's input
    size, a quarter of it). Prompt, label, guidance, sampler, steps (unless given: the upscaler's recommendation,
    `resolve_sampling`), eta, variance, spacing, seed, batch_size (images per batch) and callback as in
    `Pipeline.__call__`. settings: factor, input and output sizes, tiles,
    noise_level, nfe (network calls of the first batch: one per tile per step)."""
    from diffusa.limits import check_bytes, tensor_bytes
    from diffusa.pipelines.sampling import resolve_recommended, resolve_sampling, sampling_grid

    sampler, steps, batch_size = resolve_sampling(pipe, sampler, steps, batch_size)
    spacing, eta = resolve_recommended(pipe, sampler, spacing, eta, steps)
    seed = check_sampling(sampler, steps, batch_size, seed, eta, callback)
    source = super_resolution(pipe)
    low = low_res_images(pipe, image)
    level = source.check_level(noise_level)
    n, c, h, w = low.shape
    tiles = plan_tiles(pipe, (h, w), tile, overlap)
    out_shape = (c, *tiles.size)
    # x_T, the samples, the condition at full size, the sampler's state and the blend's sums: about 8 copies
    check_bytes(f"upscaling {n} images to {tiles.size[0]}x{tiles.size[1]}", tensor_bytes((n, *out_shape), 8),
                "upscale fewer images per call")
    grid = sampling_grid(pipe.run.denoiser, steps, spacing, sampler)
    # resolve checks prompts, labels and guidance with a stand-in image of the model's input size: the condition
    # itself is made below, at the output's size (tiles crop it)
    stand_in = torch.zeros(1, c, *source.low_res_size(tuple(pipe.data_shape[-2:])))
    req = resolve(pipe.run, pipe.name, n, prompt=prompt, label=label, guidance_scale=guidance_scale,
                  classifier=None, classifier_scale=None, image=stand_in, image_channels=pipe.image_channels)
    g = torch.Generator().manual_seed(seed)
    x_T = req.denoiser.process.prior_sample((n, *out_shape), generator=g)
    fields = source.sampling(low, g, level)
    fields["image"] = F.interpolate(fields["image"], size=tiles.size, mode="bilinear", align_corners=False)
    cond = req.cond.replace(**fields) if req.cond is not None else Cond(**fields)
    den = req.denoiser if len(tiles) == 1 else TiledDenoiser(req.denoiser, tiles, TILE_BATCH)
    req = dataclasses.replace(req, denoiser=den, cond=cond)
    samples, nfe, stopped = pipe.run_batches(req, x_T, grid, sampler, g, batch_size, sampler_kwargs(eta, variance),
                                             callback)
    settings = pipe.settings_of(req, n=n, sampler=sampler, steps=steps, spacing=spacing, classifier=None, eta=eta,
                                variance=variance, seed=seed, batch_size=batch_size, nfe=nfe, prompt=prompt,
                                label=label, task="upscale", factor=source.factor, input_size=[h, w],
                                output_size=list(tiles.size), tiles=len(tiles),
                                tile=[s // source.factor for s in tiles.tile],
                                overlap=[s // source.factor for s in tiles.overlap], noise_level=level)
    return Samples(samples, settings, "image", req.labels, req.prompts, stopped)


def stage_seed(seed: int) -> int:
    """The upscaler's seed in a cascade: one step of a 64-bit LCG (Knuth's MMIX constants) from the base's, so the
    two stages draw different noise."""
    return (check_seed(seed) * 6364136223846793005 + 1442695040888963407) % 2**64


def cascade(base: Pipeline, upscaler: Pipeline, prompt: str | Sequence[str] | None = None, *, n: int | None = None,
            label: Label = None, seed: int = 0, sampler: str | None = None, steps: int | None = None,
            guidance_scale: float | None = None, upscale_sampler: str | None = None,
            upscale_steps: int | None = None, noise_level: float | None = None,
            batch_size: int | None = None) -> Samples:
    """Cascaded diffusion (Ho et al. 2022): n samples of `base` (prompt, label, guidance, sampler, steps as in
    `Pipeline.__call__`), upscaled by `upscaler` (`upscale`; its own upscale_sampler and upscale_steps, else the
    base's sampler and steps where given, else the upscaler's defaults: each stage resolves what is left None with
    `resolve_sampling`, its own recommendation first; the base's labels or prompt go to an upscaler that is
    conditioned on them; noise_level: the augmentation level of the low-resolution samples). The upscaler's seed is
    `stage_seed(seed)`. settings["base"]: the first stage's."""
    low = base(prompt, n=n, label=label, seed=seed, guidance_scale=guidance_scale, batch_size=batch_size,
               sampler=sampler, steps=steps)
    second: dict[str, Any] = {"sampler": sampler if upscale_sampler is None else upscale_sampler,
                              "steps": steps if upscale_steps is None else upscale_steps}
    if upscaler.is_text:
        second["prompt"] = low.prompts if low.prompts is not None else prompt
        if second["prompt"] is None and low.labels is not None:
            second["label"] = low.labels
    elif upscaler.num_classes and low.labels is not None:
        second["label"] = low.labels
    up = upscale(upscaler, low.samples, seed=stage_seed(seed), noise_level=noise_level, batch_size=batch_size,
                 **second)
    return Samples(up.samples, {**up.settings, "task": "cascade", "base": low.settings}, "image", low.labels,
                   low.prompts, up.stopped_at)


__all__ = ["OVERLAP_FRACTION", "cascade", "check_super_resolution", "low_res_images", "plan_tiles", "stage_seed",
           "super_resolution", "upscale"]
