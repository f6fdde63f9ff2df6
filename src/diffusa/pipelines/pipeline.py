"""`diffusa.load(name_or_path) -> Pipeline`; calling the pipeline draws samples.

    pipe = diffusa.load("mnist-text")
    images = pipe("a handwritten seven", n=16, seed=1)
    images.save("seven.png")

One torch.Generator seeded with `seed` draws x_T for all n samples first (from the process's prior), then the
samplers' noise, batch after batch: the same seed gives the same samples, and for a deterministic sampler (DDIM at
eta = 0, DPM-Solver++, Heun, the ODE solvers) the batch size does not change them (beyond float rounding, ~1e-6:
a convolution may sum in another order for another batch size). A stochastic sampler draws its noise batch by batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.errors import DiffusaError
from diffusa.pipelines.likelihood import image_likelihood
from diffusa.pipelines.request import Label, Request, check_seed, count, resolve
from diffusa.pipelines.result import Samples
from diffusa.pipelines.sampling import (
    DEFAULT_BATCH,
    DEFAULT_N,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    StepCallback,
    _StopSampling,
    check_device,
    check_sampling,
    model_defaults,
    network_calls,
    resolve_recommended,
    resolve_sampling,
    sampler_kwargs,
    sampling_grid,
)
from diffusa.runs import Run, few_steps_sampling
from diffusa.samplers import start_scale
from diffusa.superres import ImageCondition


class Pipeline:
    """A loaded model that draws samples: `pipe(prompt, n=..., ...)` -> `Samples`; `pipe.likelihood(x)`."""

    def __init__(self, run: Run, name: str | None = None, device: str | torch.device = "cpu") -> None:
        self.run = run
        self.name = str(run.path) if name is None else name
        self.device = check_device(device)
        self._guides: dict[str | None, Run] = {}  # autoguidance's weaker models, loaded once (`autoguided`)

    def __repr__(self) -> str:
        what = "text-conditional" if self.is_text else (
            f"class-conditional ({self.num_classes} classes)" if self.num_classes else "unconditional")
        latent = ", latent" if self.is_latent else ""
        image = f", image-conditioned ({self.image_channels} channels)" if self.image_channels else ""
        if self.image_condition.inpaint:
            image = f", mask-conditioned inpainting (the masked image and the mask: {self.image_channels} channels)"
        return f"Pipeline({self.name!r}: {what}{latent}{image}, data {list(self.data_shape)})"

    # -- what the model is ---------------------------------------------------------------------------------
    @property
    def is_text(self) -> bool:
        """Conditioned on a prompt."""
        return self.run.is_text

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional model; 0 otherwise."""
        return self.run.num_classes

    @property
    def is_image(self) -> bool:
        return self.run.is_image

    @property
    def is_latent(self) -> bool:
        """Samples in an autoencoder's latent space, decoded to images."""
        return "latent" in self.run.meta

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one sample where the model samples it (latents for a latent model)."""
        return self.run.data_shape

    @property
    def image_channels(self) -> int:
        """Channels of the image an image-conditioned model concatenates to its input; 0 for none."""
        return self.run.cond_channels

    @property
    def image_condition(self) -> ImageCondition:
        """How the model's condition image was made and augmented in training: the super-resolution factor and
        the noise-conditioning augmentation levels (`diffusa.superres`; all 0 for other models)."""
        return ImageCondition.of(self.run.config.data)

    @property
    def discrete(self) -> bool:
        """A discrete chain (likelihood: the variational bound), else a continuous process (the ODE)."""
        from diffusa.process import DiscreteDDPM

        return isinstance(self.run.denoiser.process, DiscreteDDPM)

    @property
    def recommended(self) -> tuple[str, int] | None:
        """(sampler, steps) measured best for this model: config.json's "sampling" entry; None without one."""
        return self.run.recommended

    @property
    def default_sampler(self) -> str:
        """The sampler a call at the default steps uses unless told: the recommended one, else "consistency" for a
        consistency model (`diffusa distill`), else DEFAULT_SAMPLER (`pipelines.sampling.model_defaults`); at few
        steps a recommendation's "few_steps" sampler may take over (`resolve_sampling`)."""
        return model_defaults(self)[0]

    @property
    def default_steps(self) -> int:
        """The steps a call takes unless told (whichever sampler): the recommended steps, else DEFAULT_STEPS (1 for a
        consistency model)."""
        return model_defaults(self)[1]

    # -- sampling ------------------------------------------------------------------------------------------
    def noise(self, n: int, seed: int) -> torch.Tensor:
        """x_T of the first n samples that a call with this seed starts from (on the CPU), drawn at t = 1: a call
        whose grid starts lower on a VE or EDM process scales it to that level (samplers.start_scale)."""
        g = torch.Generator().manual_seed(check_seed(seed))
        return self.run.denoiser.process.prior_sample((n, *self.data_shape), generator=g)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples (e.g. a callback's x_t or x0) in data space: decoded for a latent model."""
        return self.run.to_data(x)

    def __call__(self, prompt: str | Sequence[str] | None = None, *, n: int | None = None, label: Label = None,
                 sampler: str | None = None, steps: int | None = None, guidance_scale: float | None = None,
                 classifier: str | Path | None = None, classifier_scale: float | None = None,
                 eta: float | None = None, variance: str | None = None, spacing: str | None = None,
                 image: Any = None, seed: int = 0, batch_size: int | None = None,
                 callback: StepCallback | None = None, autoguidance: float | None = None,
                 guide: str | Path | None = None) -> Samples:
        """Draw n samples (default 16, or one per prompt / label of a list).

        prompt: a text model's prompt (one for all, or one per sample). label: a class (int), one per sample
        (a list), or "all" for 0, 1, ..., K-1 in turn; on a text model it asks for "a handwritten K".
        guidance_scale: classifier-free guidance w, eps_u + w (eps_c - eps_u): default 3 for a text model, none
        otherwise. classifier / classifier_scale: classifier guidance with a `diffusa train-classifier` folder
        (scale default 1). eta: stochasticity of ddim, euler_ancestral, dpmpp_2m_sde; variance: the ancestral
        step's ("beta_tilde" or "beta"); spacing: the time grid (uniform, logsnr, logsnr-unit, karras; or leading,
        trailing, even, ddim on a chain). image: the conditioning image of an image-conditioned model.
        callback(step, t, x_t, x0): after every step of every batch (model space: latents for a latent model);
        returning True stops there, and the samples are then the x0 predicted at that step, for this batch
        and every later one (`Samples.stopped_at`). sampler, steps, batch_size: unless given, the model's
        recommendation (config.json "sampling", `recommended`), else dpmpp_2m, 20 steps, batches of 250
        (`pipelines.sampling.resolve_sampling`; `settings` reports what was used). autoguidance: w of
        autoguidance (Karras et al. 2024), D_guide + w (D - D_guide), against `guide`: by default the model's own
        guide (config.json "sampling" "guide") or the snapshot the run kept at `train.guide_at` of its training,
        else "step_N", a weights file or another run (`diffusa.runs.load_guide`); two network calls per step
        (`settings["nfe"]` counts both). Unless given, the model's recommended w with its recommended sampler
        (config.json "sampling" "autoguidance": the shipped mnist-pixel's; measured on draws from noise, so edits
        take it only when asked); autoguidance=1 draws without it.
        """
        self.refuse_mask_model("plain sampling")
        sampler, steps, batch_size = resolve_sampling(self, sampler, steps, batch_size)
        spacing, eta = resolve_recommended(self, sampler, spacing, eta, steps)
        seed = check_sampling(sampler, steps, batch_size, seed, eta, callback)
        n = count(n, prompt, label, DEFAULT_N)
        self.check_memory(n)
        grid = sampling_grid(self.run.denoiser, steps, spacing, sampler)  # guidance keeps the process: the same grid
        req = self.request(n, prompt=prompt, label=label, guidance_scale=guidance_scale, classifier=classifier,
                           classifier_scale=classifier_scale, image=image, autoguidance=autoguidance, guide=guide,
                           sampler=None if few_steps_sampling(self.run.meta, steps) else sampler)  # few: its own
        g = torch.Generator().manual_seed(seed)
        x_T = req.denoiser.process.prior_sample((n, *self.data_shape), generator=g)
        x_T = x_T * start_scale(req.denoiser.process, grid)  # the prior at the grid's first level
        req = self.augmented(req, g)
        samples, nfe, stopped = self.run_batches(req, x_T, grid, sampler, g, batch_size,
                                                 sampler_kwargs(eta, variance), callback)
        settings = self.settings_of(req, n=n, sampler=sampler, steps=steps, spacing=spacing, classifier=classifier,
                                    eta=eta, variance=variance, seed=seed, batch_size=batch_size, nfe=nfe,
                                    prompt=prompt, label=label)
        return Samples(samples, settings, self.run.meta["data_kind"], req.labels, req.prompts, stopped)

    def autoguided(self, scale: Any, guide: str | Path | None, sampler: str | None = None) -> tuple[Any, Any]:
        """(the guide Run, the autoguided Denoiser) for autoguidance at `scale` against `guide` (see `__call__`);
        (None, None) for none (scale None or 1). Scale and guide None with the model's recommended `sampler` (a draw
        from noise gives it; edits do not): its recommended autoguidance (`Run.recommended_autoguidance`), as a
        recommended eta goes with its sampler.
        Guides are loaded once per pipeline."""
        from diffusa.guidance import AutoGuided, check_scale
        from diffusa.runs import load_guide

        rec = self.run.recommended_autoguidance
        if scale is None and guide is None and rec is not None and sampler == model_defaults(self)[0]:
            scale = rec[0]
        if scale is None:
            if guide is not None:
                raise DiffusaError("guide names autoguidance's weaker model: give autoguidance=W (e.g. 2) too")
            return None, None
        w = check_scale(scale, "autoguidance")
        if w == 1 and guide is None:
            return None, None
        key = None if guide is None else str(guide)
        if key not in self._guides:
            self._guides[key] = load_guide(self.run, guide)
        return self._guides[key], AutoGuided(self.run.denoiser, self._guides[key].denoiser, w)

    def request(self, n: int, *, prompt: Any, label: Label, guidance_scale: float | None, classifier: Any,
                classifier_scale: float | None, image: Any, autoguidance: float | None = None,
                guide: str | Path | None = None, sampler: str | None = None) -> Request:
        """The resolved Request (`pipelines.request.resolve`) of n samples, autoguided at `autoguidance` against
        `guide` (`autoguided`; `sampler` a draw from noise's, for the model's recommended autoguidance) under any
        classifier-free or classifier guidance: every task's one way in."""
        weaker, base = self.autoguided(autoguidance, guide, sampler)
        req = resolve(self.run, self.name, n, prompt=prompt, label=label, guidance_scale=guidance_scale,
                      classifier=classifier, classifier_scale=classifier_scale, image=image,
                      image_channels=self.image_channels, base=base)
        return req if weaker is None else dataclasses.replace(req, guide=weaker, autoguidance=base.scale)

    def refuse_mask_model(self, what: str) -> None:
        """One line for a mask-conditioned inpainting model (`data.inpaint`) asked for `what` it cannot do: it draws
        only the masked part of a given image."""
        if self.image_condition.inpaint:
            raise DiffusaError(f"{self.name} is a mask-conditioned inpainting model (data.inpaint): give it an image "
                               "and a mask to fill (pipe.inpaint(image, mask); diffusa inpaint IMAGE --mask MASK), "
                               f"not {what}")

    def augmented(self, req: Request, generator: torch.Generator) -> Request:
        """`req` with its condition image noised to the run's sampling level (drawn from `generator`) and the
        level passed on, for a model trained with noise-conditioning augmentation (Ho et al. 2022; `superres`)."""
        source = self.image_condition
        if not source.augmented or req.cond is None or req.cond.image is None:
            return req
        return dataclasses.replace(req, cond=req.cond.replace(**source.sampling(req.cond.image, generator)))

    def run_batches(self, req: Request, x_start: torch.Tensor, grid: torch.Tensor, sampler: str,
                    generator: torch.Generator, batch_size: int, options: dict[str, Any],
                    callback: StepCallback | None) -> tuple[torch.Tensor, int, int | None]:
        """`sampler` over `grid` from x_start (model space), batch after batch, with the request's Denoiser and
        conditioning: (the samples in data space on the CPU, the network evaluations of the first batch, the
        step a callback stopped at or None). The loop of `__call__` and of img2img (`pipelines.edit`)."""
        from diffusa.samplers import sample

        n = x_start.shape[0]
        stop: dict[str, int] = {}
        nfe: list[int] = []
        chunks = []
        with network_calls(self.run.net, *([] if req.guide is None else [req.guide.net])) as calls:
            for lo in range(0, n, batch_size):
                hi = min(n, lo + batch_size)
                cond = None if req.cond is None else req.cond[lo:hi].to(self.device)
                calls[0] = 0
                try:
                    x = sample(req.denoiser, (hi - lo, *self.data_shape), sampler, generator=generator, grid=grid,
                               x_T=x_start[lo:hi].to(self.device), cond=cond, device=self.device,
                               callback=self._step_hook(callback, stop), **options)
                except _StopSampling as s:
                    stop.setdefault("step", s.step)
                    x = s.x0
                nfe.append(calls[0])
                chunks.append(x.detach().cpu())
        return self.decode(torch.cat(chunks)).float(), nfe[0], stop.get("step")

    def settings_of(self, req: Request, *, n: int, sampler: str, steps: int, spacing: str | None, classifier: Any,
                    eta: Any, variance: Any, seed: int, batch_size: int, nfe: int, prompt: Any, label: Label,
                    **extra: Any) -> dict[str, Any]:
        """`Samples.settings`: how samples were drawn (what was asked, and the guidance actually applied), and
        `extra` (an edit's task, strength, ...)."""
        return {"model": self.name, "n": n, "sampler": sampler, "steps": steps, "spacing": spacing or "default",
                "guidance_scale": req.guidance_scale, "classifier": None if classifier is None else str(classifier),
                "classifier_scale": req.classifier_scale, "eta": eta, "variance": variance, "seed": seed,
                "batch_size": batch_size, "nfe": nfe, "prompt": prompt,
                "label": label.tolist() if torch.is_tensor(label) else label, "autoguidance": req.autoguidance,
                "guide": self._guide_name(req), **extra}

    def _guide_name(self, req: Request) -> str | None:
        """The guide's weights file as settings report it: relative to the model's folder when inside it (a snapshot
        the run kept, the model's own guide/: no path of the machine, e.g. over the API), else its full path."""
        if req.guide is None:
            return None
        weights = (Path(req.guide.path) / req.guide.weights).resolve()
        home = Path(self.run.path).resolve()
        return str(weights.relative_to(home)) if weights.is_relative_to(home) else str(weights)

    def check_memory(self, n: int) -> None:
        """Refuse n samples whose tensors (x_T, the samples, their decoded images: about four copies of n
        examples) would not fit this machine, before anything is drawn."""
        from diffusa.limits import check_bytes, tensor_bytes

        check_bytes(f"n={n} samples of shape {list(self.data_shape)}", tensor_bytes((n, *self.data_shape), 4),
                    "draw fewer per call")

    @staticmethod
    def _step_hook(callback: StepCallback | None, stop: dict[str, int]) -> Callable[[dict[str, Any]], None] | None:
        """The samplers' callback (an info dict after each step) calling the user's; raises _StopSampling to end a
        batch at the step the callback asked for, or at the step an earlier batch stopped."""
        if callback is None:
            return None

        def hook(info: dict[str, Any]) -> None:
            i = int(info["i"])
            if callback(i, float(info["s"]), info["x"], info["x0"]) or stop.get("step") == i:
                raise _StopSampling(i, info["x0"])

        return hook

    # -- editing (diffusa.pipelines.edit) -------------------------------------------------------------------
    def img2img(self, image: Any, strength: float | None = None, prompt: str | Sequence[str] | None = None,
                **kwargs: Any) -> Samples:
        """SDEdit (Meng et al. 2022): `image` noised to the level `strength` in (0, 1] names (default 0.6; the same
        on every process), then sampled back; keywords as `__call__` (n, label, sampler, steps, guidance_scale,
        seed, ...). See `diffusa.pipelines.edit.img2img`."""
        from diffusa.pipelines.edit import img2img

        return img2img(self, image, strength, prompt, **kwargs)

    def inpaint(self, image: Any, mask: Any, prompt: str | Sequence[str] | None = None, **kwargs: Any) -> Samples:
        """RePaint (Lugmayr et al. 2022): the part of `image` where `mask` is white (True, >= 0.5, >= 128, or a
        name: left, right, top, bottom, center, box:X,Y,W,H, strokes[:SEED]) drawn anew, the rest kept exactly;
        jump_length, jump_n_sample (1: replacement without jumps; 0 on a mask-conditioned model, `data.inpaint`:
        conditioning alone) and the keywords of `__call__`. See `diffusa.pipelines.edit.inpaint`."""
        from diffusa.pipelines.edit import inpaint

        return inpaint(self, image, mask, prompt, **kwargs)

    def upscale(self, image: Any, prompt: str | Sequence[str] | None = None, **kwargs: Any) -> Samples:
        """SR3 (Saharia et al. 2021) with a model trained with data.super_resolution: `image` (low resolution;
        larger inputs in overlapping tiles) drawn at the model's factor times its size; keywords tile, overlap,
        noise_level and those of `__call__`. See `diffusa.pipelines.upscale.upscale`."""
        from diffusa.pipelines.upscale import upscale

        return upscale(self, image, prompt, **kwargs)

    # -- likelihood ----------------------------------------------------------------------------------------
    def likelihood(self, x: torch.Tensor | np.ndarray, *, terms: int | str | None = None,
                   variance: str | None = None, rtol: float | None = None, seed: int = 0,
                   batch_size: int | None = None, plot: str | Path | None = None) -> dict[str, Any]:
        """Bits/dim of 8-bit images x of the model's data shape, float (N, C, H, W) in [-1, 1] or uint8 pixels
        (N, H, W, C) such as `Samples.images` (see `diffusa.pipelines.likelihood.image_likelihood`): the
        variational bound of a discrete chain (terms, default 100, or "all"; variance; a plot of its terms), or
        the probability-flow ODE of a continuous process (rtol, default 1e-5; batch_size images per solve,
        default 100)."""
        return image_likelihood(self.run, self.name, x, terms=terms, variance=variance, rtol=rtol, seed=seed,
                                batch_size=batch_size, plot=plot)


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> Pipeline:
    """A pipeline for a shipped model ("mnist-pixel", "mnist-text") or a run folder (pixel or latent;
    unconditional, class- or text-conditional), its network on `device`."""
    from diffusa.runs import load_run
    from diffusa.shipped import run_path

    dev = check_device(device)  # before the weights load
    return Pipeline(load_run(run_path(name_or_path), dev), str(name_or_path), dev)


__all__ = ["DEFAULT_BATCH", "DEFAULT_N", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "Pipeline", "StepCallback", "check_device",
           "load"]
