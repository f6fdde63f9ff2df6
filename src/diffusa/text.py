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
# Training captions get extra words (with probability FILLER_P, one to three, each put at a random word boundary):
# a FILLER word or a random letter string, and sometimes a comma, so the model learns that only the digit matters
# and that words it has never seen, wherever they stand, do not move it. None of the FILLER words, and no random
# string, is a word of HELD_OUT_TEMPLATES (or of any template, or a digit's name): the held-out phrasings stay
# unseen.
FILLER = ["small", "big", "neat", "messy", "bold", "thin", "thick", "tiny", "large", "clear", "simple", "quick",
          "careful", "black", "white", "grey", "old", "new", "sketch", "image", "picture", "shown", "here", "is",
          "this", "my", "your", "single", "centered", "faint", "dark", "style", "example", "sample", "just"]
FILLER_P = 0.5
COMMA_P = 0.25  # of an augmented caption: a comma after one of its words (not the last)
RESERVED = {w.strip(",") for t in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES for w in t.split()} | set(WORDS)


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


def random_word(generator: torch.Generator) -> str:
    """A random lowercase string of 2-7 letters that is no word of any template and no digit's name."""
    while True:
        n = int(torch.randint(2, 8, (1,), generator=generator))
        word = "".join(chr(97 + int(i)) for i in torch.randint(26, (n,), generator=generator))
        if word not in RESERVED:
            return word


def with_filler(caption: str, generator: torch.Generator) -> str:
    """The caption with one to three extra words (a FILLER word or a random_word, even odds) each inserted at a
    random word boundary, and with probability COMMA_P a comma after one word (caption augmentation)."""
    words = caption.split()
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        pick = int(torch.randint(len(FILLER), (1,), generator=generator))
        extra = FILLER[pick] if float(torch.rand(1, generator=generator)) < 0.5 else random_word(generator)
        words.insert(int(torch.randint(len(words) + 1, (1,), generator=generator)), extra)
    if float(torch.rand(1, generator=generator)) < COMMA_P:
        k = int(torch.randint(len(words) - 1, (1,), generator=generator))
        words[k] += ","
    return " ".join(words)


def digit_captions(labels: torch.Tensor, generator: torch.Generator,
                   templates: Sequence[str] = TRAIN_TEMPLATES, filler_p: float = FILLER_P) -> list[str]:
    """One caption per label, each from a template drawn uniformly with `generator`, with filler words added to
    a share `filler_p` of them."""
    pick = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    extra = (torch.rand(len(labels), generator=generator) < filler_p).tolist()
    out = [digit_caption(int(y), templates[k]) for y, k in zip(labels.tolist(), pick, strict=True)]
    return [with_filler(c, generator) if e else c for c, e in zip(out, extra, strict=True)]


__all__ = [
    "BOS",
    "COMMA_P",
    "EOS",
    "FILLER",
    "FILLER_P",
    "HELD_OUT_TEMPLATES",
    "MAX_LEN",
    "PAD",
    "RESERVED",
    "TRAIN_TEMPLATES",
    "WORDS",
    "digit_caption",
    "digit_captions",
    "null_text",
    "random_word",
    "tokenize",
    "with_filler",
]
