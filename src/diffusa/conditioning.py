"""What a conditional model is conditioned on, in training and in sample grids, as a `diffusa.Cond`: class labels
(with the null label `num_classes`) or captions tokenized for the text encoder (with the empty caption as null),
and the data's own per-example condition images (concatenated to the network input). Captions come from the data's
captions file, or are made from its labels by templates (diffusa.text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusa.cond import Cond, as_cond
from diffusa.data import Dataset
from diffusa.errors import DiffusaError
from diffusa.nets import accepts
from diffusa.text import digit_caption, digit_captions, tokenize


class Conditioner:
    """Turns a batch of example indices into the network's Cond, dropping a share of labels or captions to the
    null condition (the condition image, when the data have one, is never dropped).

    mode "class": labels; mode "text": tokenize(captions), the data's own or made from labels; mode "none": neither
    (only the data's condition images).
    """

    def __init__(self, mode: str, data: Dataset, dropout: float, num_classes: int = 0,
                 tokenizer: Callable[[list[str]], Any] | None = None) -> None:
        self.mode, self.dropout, self.num_classes = mode, dropout, num_classes
        self.tokenizer = tokenizer or (lambda texts: tokenize(texts))
        self.labels, self.captions = data.labels, data.captions
        self.images = getattr(data, "cond_images", None)

    def _tokens(self, captions: list[str], device: torch.device | str) -> Cond:
        return as_cond(self.tokenizer(captions)).to(device)

    def _with_images(self, cond: Cond, idx: torch.Tensor, device: torch.device | str) -> Cond:
        return cond if self.images is None else cond.replace(image=self.images[idx].to(device))

    def training(self, idx: torch.Tensor, generator: torch.Generator, device: torch.device | str = "cpu") -> Cond:
        """The Cond of the examples `idx`; each is unconditional with probability `dropout`."""
        idx = idx.cpu()
        if self.mode == "none":
            return self._with_images(Cond(), idx, device)
        drop = torch.rand(idx.shape[0], generator=generator) < self.dropout
        if self.mode == "class":
            return self._with_images(Cond(labels=torch.where(drop, self.num_classes, self.labels[idx]).to(device)),
                                     idx, device)
        if self.captions is not None:
            captions = [self.captions[i] for i in idx.tolist()]
        else:
            captions = digit_captions(self.labels[idx], generator)
        cond = self._tokens(["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)], device)
        return self._with_images(cond, idx, device)

    def grid(self, n: int, device: torch.device | str = "cpu") -> Cond:
        """The Cond of a sample grid: classes 0, 1, ..., K-1 in turn ("a handwritten K"), or the first captions;
        the first n condition images (cycled)."""
        first = torch.arange(n) % (len(self.images) if self.images is not None else 1)
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
                    net: Any = None) -> Conditioner | None:
    """The Conditioner of a network (kind, spec) on `data`, or None for an unconditional network; a text network
    `net` tokenizes its own captions."""
    if "text" in accepts(kind):
        if data.captions is None and (data.labels is None or data.num_classes > 10):
            raise DiffusaError(f"text conditioning needs captions: {data.name} has no captions file (captions.jsonl "
                               "or captions.csv in the image folder) and no digit labels to caption")
        return Conditioner("text", data, dropout, data.num_classes, net.tokenize)
    if int(spec.get("num_classes", 0)) > 0:
        if data.labels is None:
            raise DiffusaError(f"{data.name} has no labels for a class-conditional model")
        return Conditioner("class", data, dropout, int(spec["num_classes"]))
    if getattr(data, "cond_images", None) is not None:
        return Conditioner("none", data, dropout)
    return None


__all__ = ["Conditioner", "conditioner_for"]
