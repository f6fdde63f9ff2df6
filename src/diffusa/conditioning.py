"""What a conditional model is conditioned on, in training and in sample grids: class labels (with the null
label `num_classes`) or captions tokenized for the text encoder (with the empty caption as null). Captions come
from the data's captions file, or are made from its labels by templates (diffusa.text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusa.data import Dataset
from diffusa.errors import DiffusaError
from diffusa.text import digit_caption, digit_captions, tokenize


class Conditioner:
    """Turns a batch of example indices into the network's cond, dropping a share to the null condition.

    mode "class": cond = labels; mode "text": cond = tokenize(captions), the data's own or made from labels.
    """

    def __init__(self, mode: str, data: Dataset, dropout: float, num_classes: int = 0,
                 tokenizer: Callable[[list[str]], dict[str, torch.Tensor]] | None = None) -> None:
        self.mode, self.dropout, self.num_classes = mode, dropout, num_classes
        self.tokenizer = tokenizer or (lambda texts: tokenize(texts))
        self.labels, self.captions = data.labels, data.captions

    def _tokens(self, captions: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.tokenizer(captions).items()}

    def training(self, idx: torch.Tensor, generator: torch.Generator, device: torch.device | str = "cpu") -> Any:
        """cond for the examples `idx`; each is unconditional with probability `dropout`."""
        idx = idx.cpu()
        drop = torch.rand(idx.shape[0], generator=generator) < self.dropout
        if self.mode == "class":
            return torch.where(drop, self.num_classes, self.labels[idx]).to(device)
        if self.captions is not None:
            captions = [self.captions[i] for i in idx.tolist()]
        else:
            captions = digit_captions(self.labels[idx], generator)
        return self._tokens(["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)], device)

    def grid(self, n: int, device: torch.device | str = "cpu") -> Any:
        """cond for a sample grid: classes 0, 1, ..., K-1 in turn ("a handwritten K"), or the first captions."""
        if self.mode == "text" and self.captions is not None:
            return self._tokens([self.captions[i % len(self.captions)] for i in range(n)], device)
        k = self.num_classes or 10
        labels = torch.arange(n) % k
        if self.mode == "class":
            return labels.to(device)
        return self._tokens([digit_caption(int(y), "a handwritten {d}") for y in labels.tolist()], device)


def conditioner_for(kind: str, spec: dict[str, Any], data: Dataset, dropout: float,
                    net: Any = None) -> Conditioner | None:
    """The Conditioner of a network (kind, spec) on `data`, or None for an unconditional network; a text network
    `net` tokenizes its own captions."""
    if kind == "text_unet":
        if data.captions is None and (data.labels is None or data.num_classes > 10):
            raise DiffusaError(f"text conditioning needs captions: {data.name} has no captions file (captions.jsonl "
                               "or captions.csv in the image folder) and no digit labels to caption")
        return Conditioner("text", data, dropout, data.num_classes, net.tokenize)
    if int(spec.get("num_classes", 0)) > 0:
        if data.labels is None:
            raise DiffusaError(f"{data.name} has no labels for a class-conditional model")
        return Conditioner("class", data, dropout, int(spec["num_classes"]))
    return None


__all__ = ["Conditioner", "conditioner_for"]
