"""The one conditioning object: what a network is told besides (x_t, c_noise).

A `Cond` carries any of: class labels, text (tokens and their mask), an image concatenated to the network's input
(any channels; the network resizes it to its input) with the noise level it was augmented to, a mask (1 = known
pixel, for inpainting), and a guidance scale given to the network as an input (a guided student). Networks read the
fields they support and ignore none silently: a field a network cannot use is an error at the network. Guidance
builds null versions field by field (`diffusa.guidance`). Older call sites that pass a label tensor or a
{"tokens", "mask"} dict are read through `as_cond`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from diffusa.errors import DiffusaError

FIELDS = ("labels", "tokens", "token_mask", "image", "image_level", "mask", "guidance")


@dataclass(frozen=True)
class Cond:
    """Per-example conditioning; every field present has the batch as its first dimension."""

    labels: torch.Tensor | None = None  # (B,) int64; a class-conditional network's null label is num_classes
    tokens: torch.Tensor | None = None  # (B, L) int64 token ids (diffusa.text.tokenize, or a HF tokenizer)
    token_mask: torch.Tensor | None = None  # (B, L) bool: real tokens
    image: torch.Tensor | None = None  # (B, C, H, W): concatenated to the network input (SR3, inpainting models)
    image_level: torch.Tensor | None = None  # (B,) float in [0, 1]: the noise level `image` was augmented to
    # (noise-conditioning augmentation, Ho et al. 2022; diffusa.superres); absent = a clean image (level 0)
    mask: torch.Tensor | None = None  # (B, 1, H, W) in {0, 1}: 1 where the pixel is known (inpainting)
    guidance: torch.Tensor | None = None  # (B,) float: the classifier-free guidance scale w as the network's input
    # (a guided consistency student, Luo et al. 2023; diffusa.tasks.consistency), or the teacher's per-example w

    def present(self) -> dict[str, torch.Tensor]:
        """The fields that are set."""
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}

    def __len__(self) -> int:
        fields = self.present()
        if not fields:
            return 0
        return next(iter(fields.values())).shape[0]

    def map(self, fn: Any) -> Cond:
        """A Cond with `fn` applied to every field that is set."""
        return Cond(**{k: fn(v) for k, v in self.present().items()})

    def __getitem__(self, index: slice | torch.Tensor) -> Cond:
        """Examples `index` (a slice or index tensor) of every field."""
        return self.map(lambda v: v[index])

    def to(self, device: torch.device | str) -> Cond:
        return self.map(lambda v: v.to(device))

    def replace(self, **fields: Any) -> Cond:
        return dataclasses.replace(self, **fields)

    def cat(self, other: Cond) -> Cond:
        """Both batches, one after the other (classifier-free guidance's one network call)."""
        mine, theirs = self.present(), other.present()
        if set(mine) != set(theirs):
            raise DiffusaError(f"cannot batch conditionings with fields {sorted(mine)} and {sorted(theirs)}")
        return Cond(**{k: torch.cat([mine[k], theirs[k]]) for k in mine})

    @property
    def text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens, mask) of a text conditioning, the mask all-true when not given; None without text."""
        if self.tokens is None:
            return None
        mask = self.token_mask if self.token_mask is not None else torch.ones_like(self.tokens, dtype=torch.bool)
        return self.tokens, mask.to(torch.bool)


def resized_condition(image: torch.Tensor, hw: tuple[int, ...]) -> torch.Tensor:
    """A condition image (B, C, h, w) at size hw: bilinear with align_corners=False, which treats pixels as areas, so
    the pixel centres of a low-resolution image land where they lie at any scale factor and the result is smooth,
    not nearest-neighbour blocks a network would have to undo (SR3 conditions on an interpolated low-resolution
    image likewise). The U-Net's concatenation and a residual model's anchor both read it so."""
    import torch.nn.functional as F

    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return F.interpolate(image, size=tuple(hw), mode="bilinear", align_corners=False)


def as_cond(cond: Any) -> Cond | None:
    """A Cond from what callers pass: None, a Cond, a label tensor, or a {"tokens", "mask"} dict."""
    if cond is None or isinstance(cond, Cond):
        return cond
    if torch.is_tensor(cond):
        return Cond(labels=cond)
    if isinstance(cond, dict) and "tokens" in cond:
        return Cond(tokens=cond["tokens"], token_mask=cond.get("mask"))
    raise DiffusaError(f"cannot read a conditioning of type {type(cond).__name__}: give a diffusa.Cond")


def slice_cond(cond: Any, lo: int, hi: int) -> Cond | None:
    """Examples lo..hi of any conditioning (None stays None)."""
    c = as_cond(cond)
    return None if c is None else c[lo:hi]


__all__ = ["FIELDS", "Cond", "as_cond", "resized_condition", "slice_cond"]
