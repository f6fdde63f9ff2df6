"""Super-resolution conditions: SR3 (Saharia et al. 2021) and cascaded diffusion's noise-conditioning augmentation
(Ho et al. 2022, Sec. 4.2).

A super-resolution model is an image-conditioned model (`Cond.image`, concatenated to the network's input after
the U-Net's bilinear resize, as SR3 conditions on the interpolated low-resolution image) whose condition is the
example itself shrunk by `data.super_resolution` = f (block averages, `diffusa.data.resize_images`), made from each
training batch as it is drawn: built-in, folder (streamed or not) and .npz data alike, and no second copy of the
data exists.

Noise-conditioning augmentation. In training the condition c is replaced by

    c_s = cos(pi s / 2) c + sin(pi s / 2) eps,   eps ~ N(0, I),   s ~ U(0, s_max) per example,

and the network is told s (`Cond.image_level`, embedded beside the noise level). At sampling s is fixed
(`data.cond_noise`, recorded in config.json), the condition is noised to it with the sampling seed and s is passed
again. The level s is on the scale of img2img's strength (docs/editing.md): a variance-preserving mix, so s names
the same noise share sin(pi s / 2) whatever process the model diffuses with. Ho et al. diffuse the condition with
the model's own forward process; a fixed cosine mix keeps one meaning of `cond_noise` across processes.

`ImageCondition` also describes the other condition made from each example: a mask-conditioned inpainting model's
(`data.inpaint`: the example with a random region blanked, plus the mask; `diffusa.inpainting`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.cond import resized_condition
from diffusa.data import examples, resize_images
from diffusa.errors import DiffusaError
from diffusa.inpainting import drop_masks, masked_condition, parse_kinds, random_masks

PREVIEW_SEED = 0  # the augmentation noise of training previews: fixed, so grids over training compare
RESIDUAL_STD_EXAMPLES = 1024  # residual_std reads the first this many training examples


def residual_std(data: Any, factor: int) -> float | None:
    """The std of x - up(down(x)) over the first RESIDUAL_STD_EXAMPLES examples: what a residual upscaler diffuses
    (SRDiff, Li et al. 2022; diffusa.prediction), so its EDM sigma_data (Karras et al. 2022: the std of the data
    the process sees). down: block averages by `factor`; up: the bilinear resize the anchor uses. None when the data
    cannot be shrunk so (ImageCondition.check says why in one line), or holds no detail to diffuse (a std of 0:
    EDM keeps its default)."""
    shape = tuple(getattr(data, "shape", ()))
    if getattr(data, "kind", None) != "image" or factor < 2 or len(shape) != 3 or any(s % factor for s in shape[1:]):
        return None
    x = examples(data, RESIDUAL_STD_EXAMPLES)
    low = resize_images(x, (shape[1] // factor, shape[2] // factor))
    std = round(float((x - resized_condition(low, shape[1:])).std()), 4)
    return std if std > 0 else None


def augment(image: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """c_s = cos(pi s / 2) c + sin(pi s / 2) eps, per example (Ho et al. 2022, Sec. 4.2, Gaussian conditioning
    augmentation; the variance-preserving mix of img2img's strength)."""
    s = level.to(image.dtype).reshape(-1, *([1] * (image.ndim - 1)))
    return torch.cos(math.pi * s / 2) * image + torch.sin(math.pi * s / 2) * noise


@dataclass(frozen=True)
class ImageCondition:
    """How a run's condition image is made and augmented: `factor` > 1 makes it the example shrunk by that factor
    (super-resolution); `inpaint` (mask kinds) makes it the example with a random region blanked plus the mask
    (a mask-conditioned inpainting model, `diffusa.inpainting`); `noise_max` > 0 augments it in training at levels
    ~ U(0, noise_max), and `noise` is the level it is given at sampling."""

    factor: int = 0
    noise_max: float = 0.0
    noise: float = 0.0
    inpaint: tuple[str, ...] = ()
    inpaint_dropout: float = 0.0

    @classmethod
    def of(cls, data: Any) -> ImageCondition:
        """From a `DataConfig` or the "data" table of a run's config.json (settings absent or None: off)."""
        def value(key: str) -> Any:
            return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

        kinds = parse_kinds(value("inpaint"))
        return cls(int(value("super_resolution") or 0), float(value("cond_noise_max") or 0.0),
                   float(value("cond_noise") or 0.0), kinds, float(value("inpaint_dropout") or 0.0) if kinds else 0.0)

    @property
    def from_examples(self) -> bool:
        """The condition is made from each example as it is drawn (super-resolution, inpainting)."""
        return bool(self.factor or self.inpaint)

    @property
    def augmented(self) -> bool:
        """Trained with noise-conditioning augmentation: the network reads `Cond.image_level`."""
        return self.noise_max > 0

    def check(self, data: Any, latent: Any = None) -> None:
        """One-line DiffusaErrors for settings this data cannot train with."""
        f = self.factor
        if f == 1:
            raise DiffusaError("data.super_resolution=1 shrinks nothing: give a factor >= 2 (0 turns it off)")
        has_images = getattr(data, "cond_images", None) is not None
        if f:
            if latent:
                raise DiffusaError("data.super_resolution conditions on shrunk pixels; a latent model (data.latent) "
                                   "would need them in its latent space: train the upscaler on pixels")
            if data.kind != "image":
                raise DiffusaError(f"data.super_resolution upscales images; {data.name} holds points")
            if has_images:
                raise DiffusaError(f"{data.name} holds its own cond_images; data.super_resolution would replace "
                                   "them: drop one of the two")
            h, w = data.shape[-2:]
            if h % f or w % f:
                raise DiffusaError(f"data.super_resolution={f} does not divide the {h}x{w} images: give a factor "
                                   f"that does, or resize them with data.image_size")
        if self.inpaint:
            what = "data.inpaint conditions on the masked example"
            if latent:
                raise DiffusaError(f"{what}'s pixels; a latent model (data.latent) would need them in its latent "
                                   "space: train the inpainting model on pixels")
            if data.kind != "image":
                raise DiffusaError(f"{what}; {data.name} holds points, not images")
            if f:
                raise DiffusaError("data.inpaint and data.super_resolution both make the condition image: "
                                   "train one model of each")
            if has_images:
                raise DiffusaError(f"{data.name} holds its own cond_images; data.inpaint would replace them: "
                                   "drop one of the two")
            if self.augmented:
                raise DiffusaError(f"data.cond_noise_max={self.noise_max:g} noises the condition; an inpainting "
                                   "model's known pixels are kept exact (set data.cond_noise_max=0)")
        if self.augmented and not (f or has_images):
            raise DiffusaError(f"data.cond_noise_max={self.noise_max:g} augments a condition image; {data.name} "
                               "has none (set data.super_resolution, or give .npz cond_images)")
        if self.noise > self.noise_max:
            raise DiffusaError(f"data.cond_noise={self.noise:g} is above data.cond_noise_max={self.noise_max:g}: "
                               "the model would sample at a level it never trained on")

    def channels(self, data: Any) -> int:
        """Channels of the condition image: the data's own for super-resolution, one more (the mask) for
        inpainting, else its cond_images'."""
        if self.factor:
            return int(data.shape[0])
        if self.inpaint:
            return int(data.shape[0]) + 1
        images = getattr(data, "cond_images", None)
        return int(images.shape[1]) if images is not None else 0

    def low_res_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The condition's (H, W) for images of size hw."""
        return hw[0] // self.factor, hw[1] // self.factor

    def low_res(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) shrunk by the factor: block averages (SR3's and Ho et al.'s low-resolution input)."""
        return resize_images(x, self.low_res_size(tuple(x.shape[-2:])))

    def made_from(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The condition image of examples x (B, C, H, W): shrunk (super-resolution), or blanked by masks drawn
        from `generator` plus the mask channel (inpainting, `diffusa.inpainting.random_masks`)."""
        if self.inpaint:
            masks = random_masks(x.shape[0], x.shape[-2], x.shape[-1], generator, self.inpaint)
            return masked_condition(x, masks)
        return self.low_res(x)

    def training(self, image: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The Cond fields of a training batch's condition images: augmented at levels ~ U(0, noise_max), drawn
        from `generator` (nothing is drawn without augmentation); an inpainting model's masks dropped to the whole
        image at `inpaint_dropout` (`diffusa.inpainting.drop_masks`)."""
        if self.inpaint:
            return {"image": drop_masks(image, self.inpaint_dropout, generator)}
        if not self.augmented:
            return {"image": image}
        level = torch.rand(image.shape[0], generator=generator) * self.noise_max
        noise = torch.randn(image.shape, generator=generator).to(image.device)
        level = level.to(image.device)
        return {"image": augment(image, level, noise), "image_level": level}

    def sampling(self, image: torch.Tensor, generator: torch.Generator,
                 level: float | None = None) -> dict[str, torch.Tensor]:
        """The Cond fields of condition images at sampling: noised to the fixed level (`noise`, or `level`) with
        `generator` (nothing drawn at level 0), and the level for a model trained with augmentation."""
        s = self.check_level(level)
        if not self.augmented:
            return {"image": image}
        levels = torch.full((image.shape[0],), s, device=image.device)
        if s > 0:
            image = augment(image, levels, torch.randn(image.shape, generator=generator).to(image.device))
        return {"image": image, "image_level": levels}

    def check_level(self, level: Any) -> float:
        """A sampling level: None (the run's `noise`), or a number in [0, noise_max]."""
        if level is None:
            return self.noise
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
            raise DiffusaError(f"noise_level must be a number in [0, {self.noise_max:g}], got {level!r}")
        if not self.augmented and level != 0:
            raise DiffusaError(f"noise_level={level:g}: this model was trained without noise-conditioning "
                               "augmentation (data.cond_noise_max=0); its only level is 0")
        if not 0 <= level <= self.noise_max:
            raise DiffusaError(f"noise_level must be in [0, {self.noise_max:g}] (the levels this model trained on), "
                               f"got {level:g}")
        return float(level)


__all__ = ["PREVIEW_SEED", "ImageCondition", "augment"]
