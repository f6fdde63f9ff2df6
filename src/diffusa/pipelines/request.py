"""From a pipeline call's typed arguments to what the sampler runs: the (guided) Denoiser and its `Cond`.

The one place that turns "16 sevens, guidance 3" into Denoiser + guidance: class labels (`label=`), prompts of a
text model (or `label=` captioned "a handwritten K"), classifier-free guidance (Ho & Salimans 2021) against the
null label or the empty caption, classifier guidance (Dhariwal & Nichol 2021) with a `diffusa train-classifier`
folder, and an image concatenated to the input of an image-conditioned model. A guided student (`diffusa distill
--guidance-range`) is given the guidance scale as its network's input instead (one call per step, no unconditional
branch), inside the range it was distilled on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffusa.cond import Cond, as_cond
from diffusa.errors import DiffusaError
from diffusa.guidance import GuidanceInput, classifier_free
from diffusa.prediction import Denoiser
from diffusa.runs import DEFAULT_TEXT_SCALE, GuidanceRange
from diffusa.superres import ImageCondition

LABEL_CAPTION = "a handwritten {d}"  # how label= asks a text model for a digit
TEXT_CLASSES = 10  # label= on a text model names a digit

Label = int | str | Sequence[int] | torch.Tensor | None


@dataclass
class Request:
    """A resolved request: the Denoiser to sample, its conditioning for all n samples, and what was asked."""

    denoiser: Denoiser
    cond: Cond | None
    labels: torch.Tensor | None  # the class asked of each sample (label=), on the CPU
    prompts: list[str] | None  # the prompt of each sample (a text model)
    guidance_scale: float | None  # classifier-free guidance actually applied (None: none)
    classifier_scale: float | None  # classifier guidance actually applied (None: none)
    guide: Any = None  # autoguidance's weaker model (a Run), whose network calls count too; None: none
    autoguidance: float | None = None  # autoguidance's w against `guide` (None: none)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def finite_scale(value: Any, name: str) -> float | None:
    """A guidance scale: None, or a finite number (`diffusa.guidance.check_scale`, the one rule)."""
    from diffusa.guidance import check_scale

    return None if value is None else check_scale(value, name)


SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts


def check_seed(seed: Any) -> int:
    """A seed for torch.Generator.manual_seed: an integer in [-2**63, 2**64 - 1]."""
    lo, hi = SEED_RANGE
    if not _is_int(seed) or not lo <= seed <= hi:
        raise DiffusaError(f"seed must be an integer in [-2**63, 2**64 - 1], got {seed!r}")
    return int(seed)


def check_request(run: Any, name: str, *, prompt: Any, label: Label, guidance_scale: Any, classifier: Any,
                  classifier_scale: Any) -> tuple[float | None, float | None]:
    """The refusals of `resolve` that need neither the network nor a classifier (the scales, and which of
    prompt, label and classifier go together); the checked (guidance_scale, classifier_scale)."""
    guidance_scale = finite_scale(guidance_scale, "guidance_scale")
    classifier_scale = finite_scale(classifier_scale, "classifier_scale")
    if classifier_scale is not None and classifier is None:
        raise DiffusaError("classifier_scale scales classifier guidance: give classifier= (a `diffusa "
                           "train-classifier` folder)")
    if prompt is not None and label is not None:
        raise DiffusaError("give a prompt or a label, not both")
    if run.is_text and prompt is None and label is None:
        raise DiffusaError(f"{name} is text-conditional: give a prompt, e.g. \"a handwritten 7\" (or a label)")
    return guidance_scale, classifier_scale


def count(n: int | None, prompt: Any, label: Label, default: int) -> int:
    """The number of samples: n, else the length of a list of prompts or labels, else `default`."""
    lengths = {name: len(v) for name, v in (("prompt", prompt), ("label", label))
               if isinstance(v, (list, tuple)) or (torch.is_tensor(v) and v.ndim == 1)}
    if n is None:
        n = next(iter(lengths.values()), default)
    if not _is_int(n) or n < 1:
        raise DiffusaError(f"n must be a positive integer, got {n!r}")
    for name, length in lengths.items():
        if length != n:
            raise DiffusaError(f"{name} holds {length} entries for n={n} samples: give one per sample, or one for all")
    return int(n)


def requested_labels(label: Label, n: int, num_classes: int) -> torch.Tensor:
    """label=: one class for every sample (an int), one per sample (a list or tensor), or "all" for 0, 1, ...,
    K-1 over and over."""
    if isinstance(label, str) and label == "all":
        return torch.arange(n) % num_classes
    bad = DiffusaError(f"label must be 'all' or a class in 0..{num_classes - 1} (or a list of them), got {label!r}")
    if _is_int(label) or (torch.is_tensor(label) and label.ndim == 0 and not label.is_floating_point()):
        if not 0 <= int(label) < num_classes:  # before a tensor holds it: 10**30 overflows int64
            raise bad
        values = torch.full((n,), int(label), dtype=torch.long)
    elif isinstance(label, (list, tuple)) and all(_is_int(v) for v in label):
        if not all(0 <= int(v) < num_classes for v in label):
            raise bad
        values = torch.tensor([int(v) for v in label], dtype=torch.long).reshape(-1)
    elif torch.is_tensor(label) and label.ndim == 1 and not label.is_floating_point() and label.dtype != torch.bool:
        values = label.detach().cpu().long()
    else:
        raise bad
    if values.numel() and (values.min() < 0 or values.max() >= num_classes):
        raise bad
    return values


def prompts_of(prompt: str | Sequence[str], n: int) -> list[str]:
    """prompt=: one text for every sample, or one per sample."""
    prompts = [prompt] * n if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise DiffusaError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not text, as a shell passes $'\xff\xfe' through
            raise DiffusaError(f"prompt {p!r} is not valid text (UTF-8)") from None
    return list(prompts)


def pixels_4d(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (H, W), (H, W, C), (B, H, W) or (B, H, W, C) -> (B, H, W, C); a 3-D array is (H, W, C) when its
    last axis could be channels (1 to 4), else (B, H, W)."""
    if x.ndim == 2:
        return x[None, ..., None]
    if x.ndim == 3:
        return x[None] if x.shape[-1] <= 4 else x[..., None]
    return x


def image_batch(image: Any, what: str = "image") -> torch.Tensor:
    """An image argument -> float (B, C, H, W): float (C, H, W) / (B, C, H, W) (finite), or uint8 pixels (H, W[, C])
    / (B, H, W[, C]) scaled to [-1, 1]; a numpy array is copied. The one parser of cond images, img2img, inpainting
    and upscaling inputs; each checks range, channels and size for its model."""
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "uif":  # strings, objects, complex, bool: no pixels
            raise DiffusaError(f"{what} must hold numbers (uint8 pixels or floats in [-1, 1]), got {image.dtype}")
        image = torch.from_numpy(np.array(image))  # a copy: the caller's array (maybe read-only) stays as it is
    if not torch.is_tensor(image):
        raise DiffusaError(f"{what} must be a tensor or a numpy array of pixels, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        image = pixels_4d(image)
        if image.ndim != 4:
            raise DiffusaError(f"{what}: uint8 pixels must be (H, W[, C]) or (B, H, W, C), got {tuple(image.shape)}")
        return image.movedim(-1, 1).float() / 127.5 - 1
    if not image.is_floating_point():
        raise DiffusaError(f"{what} must be float in [-1, 1] or uint8 pixels, got {image.dtype}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise DiffusaError(f"{what} must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise DiffusaError(f"{what} holds NaN or inf values")
    return image


def cond_image(image: Any, n: int, channels: int, data_shape: tuple[int, ...]) -> torch.Tensor:
    """image=: float (C, H, W) / (B, C, H, W) in [-1, 1], or uint8 (H, W, C) / (B, H, W, C) pixels -> float
    (n, C, H, W); one image serves every sample. Checked against the model's condition channels and the aspect
    of its inputs (the network resizes it to its input)."""
    image = image_batch(image)
    b, c, h, w = image.shape
    if c != channels:
        raise DiffusaError(f"image has {c} channels; this model is conditioned on images of {channels}")
    dh, dw = data_shape[-2:]
    if h < 1 or w < 1 or h * dw != w * dh:
        raise DiffusaError(f"image is {h}x{w}; this model's inputs are {dh}x{dw}: give an image of that shape "
                           "(or of the same aspect, which is resized)")
    if b not in (1, n):
        raise DiffusaError(f"image holds {b} images for n={n} samples: give one, or one per sample")
    return image.float().expand(n, c, h, w).contiguous()


def _on_cpu(log_prob: Any) -> Any:
    """log p(y | x_t, t) of a CPU classifier for inputs on another device (autograd follows the copies)."""

    def wrapped(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return log_prob(x.cpu(), t.cpu(), y.cpu()).to(x.device)

    return wrapped


def guidance_range(run: Any) -> GuidanceRange | None:
    """The guidance scales a guided student takes as its input (config.json's "guidance"); None for other models."""
    table = run.meta.get("guidance")
    return None if table is None else GuidanceRange.from_table(table, run.path / "config.json")


def guide(den: Denoiser, run: Any, guided: GuidanceRange | None, scale: float | None,
          default: float | None = None) -> tuple[Denoiser, float | None]:
    """(`den` guided at `scale`, the scale applied). A guided student (`guided`, its range) takes w as its
    network's input, one call per step: `scale` checked against the range (None: its default). Any other model:
    classifier-free guidance against the run's null conditioning (`Run.null_cond`) at `scale` (None: `default`);
    none at None or 1 (w = 1 is the conditional model itself)."""
    if guided is not None:
        scale = guided.check(scale)
        return GuidanceInput(den, scale), scale
    scale = default if scale is None else scale
    if scale is not None and scale != 1:
        den = classifier_free(den, scale, run.null_cond())
    return den, scale


def resolve(run: Any, name: str, n: int, *, prompt: str | Sequence[str] | None, label: Label,
            guidance_scale: float | None, classifier: Any, classifier_scale: float | None, image: Any,
            image_channels: int, base: Denoiser | None = None) -> Request:
    """The guided Denoiser and Cond for a request (see the module docstring); one DiffusaError naming the argument
    for anything the model cannot do. `base`: the Denoiser the guidance wraps instead of the run's (autoguided)."""
    from diffusa.guidance import ClassifierGuided

    guidance_scale, classifier_scale = check_request(run, name, prompt=prompt, label=label,
                                                     guidance_scale=guidance_scale, classifier=classifier,
                                                     classifier_scale=classifier_scale)
    extra = Cond()
    if image is not None:
        if not image_channels:
            raise DiffusaError(f"image: {name} takes no conditioning image")
        extra = Cond(image=cond_image(image, n, image_channels, run.data_shape))
    elif image_channels:
        factor = ImageCondition.of(run.config.data).factor
        if factor:
            raise DiffusaError(f"{name} is a {factor}x super-resolution model: it upscales a given image "
                               f"(pipe.upscale(image); diffusa upscale IMAGE --model {name})")
        raise DiffusaError(f"{name} is conditioned on an image: give image= ({image_channels} channels)")
    den = run.denoiser if base is None else base
    guided = guidance_range(run)
    if run.is_text:
        if classifier is not None:
            raise DiffusaError("classifier guides class labels; a text model is guided by guidance_scale")
        if prompt is not None:
            prompts, labels = prompts_of(prompt, n), None
        else:  # a label (check_request refused neither)
            labels = requested_labels(label, n, TEXT_CLASSES)
            prompts = [LABEL_CAPTION.format(d=int(y)) for y in labels.tolist()]
        den, scale = guide(den, run, guided, guidance_scale,
                           DEFAULT_TEXT_SCALE if run.recommended_guidance is None else run.recommended_guidance)
        cond = as_cond(run.net.tokenize(prompts)).replace(image=extra.image)
        return Request(den, cond, labels, prompts, scale, None)
    if prompt is not None:
        raise DiffusaError(f"{name} is not text-conditional and takes no prompt (the shipped text model is "
                           "mnist-text)")
    if label is None:
        if classifier is not None:
            raise DiffusaError("classifier guidance needs a class to guide towards: give label=K (or 'all')")
        if run.mask_guided and extra.image is not None:  # mask guidance (the model's recommended scale if any)
            den, scale = guide(den, run, guided, guidance_scale, run.recommended_guidance)
            return Request(den, extra, None, None, scale, None)
        if guidance_scale is not None:
            if ImageCondition.of(run.config.data).inpaint and not run.num_classes:
                raise DiffusaError(f"guidance_scale: {name} was trained without mask dropout (data.inpaint_dropout "
                                   "0, or from before the setting), so it has no unconditional branch to guide "
                                   "against; retrain it with data.inpaint_dropout > 0 (default 0.1)")
            if not run.num_classes:
                raise DiffusaError(f"guidance_scale guides towards a label or a prompt; {name} is unconditional")
            raise DiffusaError("guidance_scale needs a class to guide towards: give label=K (or 'all')")
        # a guided student: the null label, where every w is the unconditional model; the network still takes one
        den, _ = guide(den, run, guided, None)
        return Request(den, extra if extra.present() else None, None, None, None, None)
    if classifier is not None:
        from diffusa.classifier import guidance_log_prob

        if guidance_scale is not None and not run.num_classes:
            raise DiffusaError(f"guidance_scale: {name} is unconditional (no classifier-free guidance); the "
                               "classifier's strength is classifier_scale")
        log_prob, k = guidance_log_prob(classifier, den.process)
        if any(p.device.type != "cpu" for p in run.net.parameters()):
            log_prob = _on_cpu(log_prob)  # the classifier loads on the CPU; its gradient flows back to the device
        labels = requested_labels(label, n, k)
        den, guidance_scale = guide(den, run, guided, guidance_scale,  # None on an unconditional model
                                    run.recommended_guidance if run.num_classes else None)
        cscale = 1.0 if classifier_scale is None else classifier_scale
        den = ClassifierGuided(den, log_prob, cscale, model_cond=run.num_classes > 0)
        return Request(den, extra.replace(labels=labels), labels, None,
                       guidance_scale if run.num_classes else None, cscale)
    if not run.num_classes:
        raise DiffusaError(f"label: {name} is unconditional; labels need a model trained with --class-conditional, "
                           "or a noise-aware classifier (classifier=, from `diffusa train-classifier`)")
    labels = requested_labels(label, n, run.num_classes)
    den, guidance_scale = guide(den, run, guided, guidance_scale, run.recommended_guidance)
    return Request(den, extra.replace(labels=labels), labels, None, guidance_scale, None)


__all__ = [
    "DEFAULT_TEXT_SCALE",
    "LABEL_CAPTION",
    "SEED_RANGE",
    "Request",
    "check_request",
    "check_seed",
    "cond_image",
    "count",
    "finite_scale",
    "guidance_range",
    "image_batch",
    "requested_labels",
    "resolve",
]
