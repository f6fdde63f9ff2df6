"""Text for conditioning: a byte-level tokenizer (nothing to download) and captions for labelled digits.

Captions for mnist5k (and sklearn's digits) are made from the labels by templates. TRAIN_TEMPLATES are used in
training; HELD_OUT_TEMPLATES never are, so prompts written with them measure whether the model follows the
meaning of a prompt rather than memorised strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffusa.errors import DiffusaError

PAD, BOS, EOS = 256, 257, 258
MAX_LEN = 48
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# {d}: the numeral, {w}: the word
TRAIN_TEMPLATES = [
    "a handwritten {d}", "the digit {w}", "number {w} written by hand", "a {w}", "{d}", "digit {d}",
    "an image of the number {w}", "a picture of a {d}", "handwritten digit {w}", "the number {d}",
    "a scribbled {w}", "{w}", "a photo of the digit {d}", "the handwritten number {w}",
]
HELD_OUT_TEMPLATES = [
    "a drawing of the numeral {w}", "someone wrote a {d}", "{w}, handwritten", "the numeral {d} in ink",
    "a hand-drawn {w}", "please draw the number {d}",
]


def tokenize(texts: Sequence[str], max_len: int = MAX_LEN) -> dict[str, torch.Tensor]:
    """{"tokens": (B, max_len) long, "mask": (B, max_len) bool}: BOS, the UTF-8 bytes, EOS, then PAD.

    Every caption is padded to max_len, so conditionings of any two batches stack (classifier-free guidance
    batches its two branches); bytes beyond max_len - 2 are cut. The empty string is the null caption."""
    if max_len < 3:
        raise DiffusaError(f"max_len must leave room for BOS, a byte and EOS, got {max_len}")
    tokens = torch.full((len(texts), max_len), PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DiffusaError(f"captions must be strings, got {type(text).__name__}")
        ids = [BOS, *text.encode("utf-8")[: max_len - 2], EOS]
        tokens[i, : len(ids)] = torch.tensor(ids)
    return {"tokens": tokens, "mask": tokens != PAD}


def null_text(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The empty caption for every example of `cond` (classifier-free guidance's unconditional branch)."""
    b, length = cond["tokens"].shape
    null = tokenize([""] * b, length)
    return {k: v.to(cond[k].device) for k, v in null.items()}


def digit_caption(label: int, template: str) -> str:
    """A caption for a digit label from one template."""
    return template.format(d=label, w=WORDS[label])


def digit_captions(labels: torch.Tensor, generator: torch.Generator,
                   templates: Sequence[str] = TRAIN_TEMPLATES) -> list[str]:
    """One caption per label, each from a template drawn uniformly with `generator`."""
    pick = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [digit_caption(int(y), templates[k]) for y, k in zip(labels.tolist(), pick, strict=True)]


__all__ = ["BOS", "EOS", "HELD_OUT_TEMPLATES", "MAX_LEN", "PAD", "TRAIN_TEMPLATES", "WORDS", "digit_caption",
           "digit_captions", "null_text", "tokenize"]
