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
# Training captions get filler words (with probability FILLER_P, one to three, before or after the template's
# text), so the model learns that only the digit matters and words it has never seen do not move it. None of
# these words occurs in HELD_OUT_TEMPLATES: the held-out phrasings stay unseen.
FILLER = ["small", "big", "neat", "messy", "bold", "thin", "thick", "tiny", "large", "clear", "simple", "quick",
          "careful", "black", "white", "grey", "old", "new", "sketch", "image", "picture", "shown", "here", "is",
          "this", "my", "your", "single", "centered", "faint", "dark", "style", "example", "sample", "just"]
FILLER_P = 0.5


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


def with_filler(caption: str, generator: torch.Generator) -> str:
    """The caption with one to three FILLER words put before or after it (caption augmentation)."""
    n = int(torch.randint(1, 4, (1,), generator=generator))
    words = [FILLER[int(i)] for i in torch.randint(len(FILLER), (n,), generator=generator)]
    cut = int(torch.randint(n + 1, (1,), generator=generator))
    return " ".join([*words[:cut], caption, *words[cut:]])


def digit_captions(labels: torch.Tensor, generator: torch.Generator,
                   templates: Sequence[str] = TRAIN_TEMPLATES, filler_p: float = FILLER_P) -> list[str]:
    """One caption per label, each from a template drawn uniformly with `generator`, with filler words added to
    a share `filler_p` of them."""
    pick = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    extra = (torch.rand(len(labels), generator=generator) < filler_p).tolist()
    out = [digit_caption(int(y), templates[k]) for y, k in zip(labels.tolist(), pick, strict=True)]
    return [with_filler(c, generator) if e else c for c, e in zip(out, extra, strict=True)]


__all__ = ["BOS", "EOS", "FILLER", "FILLER_P", "HELD_OUT_TEMPLATES", "MAX_LEN", "PAD", "TRAIN_TEMPLATES", "WORDS",
           "digit_caption", "digit_captions", "null_text", "tokenize", "with_filler"]
