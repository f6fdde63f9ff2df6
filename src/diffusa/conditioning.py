"""What a conditional model is conditioned on, in training and in sample grids, as a `diffusa.Cond`: class labels
(with the null label `num_classes`) or captions tokenized for the text encoder (with the empty caption as null),
and the data's own per-example condition images (concatenated to the network input), or for super-resolution each
example shrunk (with noise-conditioning augmentation: diffusa.superres), or for inpainting each example masked
(diffusa.inpainting). Captions come from the data's captions file, or are made from its labels by templates
(diffusa.text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusa.cond import Cond, as_cond
from diffusa.data import Dataset
from diffusa.errors import DiffusaError
from diffusa.nets import accepts
from diffusa.superres import PREVIEW_SEED, ImageCondition
from diffusa.text import digit_caption, digit_captions, tokenize


class Conditioner:
    """Turns a batch of example indices into the network's Cond, dropping a share of labels or captions to the
    null condition (the condition image, when the data have one, is never dropped).

    mode "class": labels; mode "text": tokenize(captions), the data's own or made from labels; mode "none": neither
    (only condition images). `source`: how condition images are made (the data's cond_images, or each example
    shrunk for super-resolution) and augmented (`diffusa.superres.ImageCondition`).
    """

    def __init__(self, mode: str, data: Dataset, dropout: float, num_classes: int = 0,
                 tokenizer: Callable[[list[str]], Any] | None = None, source: ImageCondition | None = None) -> None:
        self.mode, self.dropout, self.num_classes = mode, dropout, num_classes
        self.tokenizer = tokenizer or (lambda texts: tokenize(texts))
        self.labels, self.captions = data.labels, data.captions
        self.data, self.source = data, source or ImageCondition()
        self.images = getattr(data, "cond_images", None)

    def _tokens(self, captions: list[str], device: torch.device | str) -> Cond:
        return as_cond(self.tokenizer(captions)).to(device)

    def _with_images(self, cond: Cond, idx: torch.Tensor, device: torch.device | str, x: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> Cond:
        """`cond` with the condition images of examples `idx` (super-resolution, inpainting: made from `x`, the
        examples themselves), drawn and augmented with `generator` in training, or for previews (generator None)
        with a fixed seed at the sampling level."""
        preview = generator is None
        g = torch.Generator().manual_seed(PREVIEW_SEED) if preview else generator
        if self.source.from_examples:
            image = self.source.made_from((x if x is not None else self.data.get(idx)).to(device), g)
        elif self.images is None:
            return cond
        else:
            image = self.images[idx].to(device)
        return cond.replace(**(self.source.sampling(image, g) if preview else self.source.training(image, g)))

    def training(self, idx: torch.Tensor, generator: torch.Generator, device: torch.device | str = "cpu",
                 x: torch.Tensor | None = None) -> Cond:
        """The Cond of the examples `idx` (`x`: the examples, which a super-resolution condition is made from);
        each is unconditional with probability `dropout`."""
        idx = idx.cpu()
        if self.mode == "none":
            return self._with_images(Cond(), idx, device, x, generator)
        drop = torch.rand(idx.shape[0], generator=generator) < self.dropout
        if self.mode == "class":
            return self._with_images(Cond(labels=torch.where(drop, self.num_classes, self.labels[idx]).to(device)),
                                     idx, device, x, generator)
        if self.captions is not None:
            captions = [self.captions[i] for i in idx.tolist()]
        else:
            captions = digit_captions(self.labels[idx], generator)
        cond = self._tokens(["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)], device)
        return self._with_images(cond, idx, device, x, generator)

    def grid(self, n: int, device: torch.device | str = "cpu") -> Cond:
        """The Cond of a sample grid: classes 0, 1, ..., K-1 in turn ("a handwritten K"), or the first captions;
        the first n condition images (cycled), at the sampling level."""
        first = torch.arange(n) % (len(self.images) if self.images is not None else len(self.data))
        if self.mode == "none":
            return self._with_images(Cond(), first, device)
        if self.mode == "text" and self.captions is not None:
            return self._with_images(self._tokens([self.captions[i % len(self.captions)] for i in range(n)], device),
                                     first, device)
        k = self.num_classes or 10
        labels = torch.arange(n) % k
        if self.mode == "class":
            return self._with_images(Cond(labels=labels.to(device)), first, device)
        return self._with_images(self._tokens([digit_caption(int(y), "a handwritten {d}") for y in labels.tolist()],
                                              device), first, device)


def conditioner_for(kind: str, spec: dict[str, Any], data: Dataset, dropout: float,
                    net: Any = None, source: ImageCondition | None = None) -> Conditioner | None:
    """The Conditioner of a network (kind, spec) on `data`, or None for an unconditional network; a text network
    `net` tokenizes its own captions; `source` makes and augments condition images (super-resolution)."""
    if "text" in accepts(kind):
        if data.captions is None and (data.labels is None or data.num_classes > 10):
            raise DiffusaError(f"text conditioning needs captions: {data.name} has no captions file (captions.jsonl "
                               "or captions.csv in the image folder) and no digit labels to caption")
        return Conditioner("text", data, dropout, data.num_classes, net.tokenize, source)
    if int(spec.get("num_classes", 0)) > 0:
        if data.labels is None:
            raise DiffusaError(f"{data.name} has no labels for a class-conditional model")
        return Conditioner("class", data, dropout, int(spec["num_classes"]), source=source)
    if getattr(data, "cond_images", None) is not None or (source is not None and source.from_examples):
        return Conditioner("none", data, dropout, source=source)
    return None


__all__ = ["Conditioner", "conditioner_for"]
