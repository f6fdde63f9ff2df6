"""Pipelines: typed requests in, samples out (DESIGN.md "Layers").

    import diffusa
    pipe = diffusa.load("mnist-text")                       # a shipped model's name, or any run folder
    images = pipe("a handwritten seven", n=16, seed=1)      # Samples: .samples, .images (uint8), .settings
    images.save("seven.png")                                # a PNG grid, or FILE.npz with the arrays
    pipe.img2img(x, 0.5, "a handwritten 3")                 # SDEdit: x (uint8 pixels or [-1, 1]) redrawn
    pipe.inpaint(x, "center", label=3)                      # RePaint: the white part of the mask redrawn
    diffusa.load("runs/sr4").upscale(low_res)               # SR3: a super-resolution run; large inputs in tiles
    cascade(base, upscaler, n=16, label="all")              # cascaded diffusion: base samples, upscaled

`pipeline` (load, Pipeline: sampling with guidance, callbacks, batches), `request` (labels, prompts, guidance and
conditioning images -> Denoiser + Cond), `result` (Samples and how they are saved), `likelihood` (bits/dim),
`edit` (img2img and inpainting requests; the algorithms are `diffusa.editing`), `upscale` (super-resolution and
cascades; `diffusa.superres`, `diffusa.tiling`).
The command line (`diffusa sample | generate | eval | edit | inpaint | upscale`) calls these and nothing else.
"""

from __future__ import annotations

from diffusa.pipelines.edit import (
    DEFAULT_INPAINT_SAMPLER,
    DEFAULT_JUMP_LENGTH,
    DEFAULT_JUMP_N_SAMPLE,
    DEFAULT_STRENGTH,
    MASKS,
)
from diffusa.pipelines.likelihood import DEFAULT_RTOL, DEFAULT_TERMS
from diffusa.pipelines.pipeline import (
    DEFAULT_BATCH,
    DEFAULT_N,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    Pipeline,
    StepCallback,
    load,
)
from diffusa.pipelines.request import DEFAULT_TEXT_SCALE
from diffusa.pipelines.result import Samples, check_out, write_samples
from diffusa.pipelines.upscale import cascade

__all__ = ["DEFAULT_BATCH", "DEFAULT_INPAINT_SAMPLER", "DEFAULT_JUMP_LENGTH", "DEFAULT_JUMP_N_SAMPLE", "DEFAULT_N",
           "DEFAULT_RTOL", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "DEFAULT_STRENGTH", "DEFAULT_TERMS",
           "DEFAULT_TEXT_SCALE", "MASKS", "Pipeline", "Samples", "StepCallback", "cascade", "check_out", "load",
           "write_samples"]
