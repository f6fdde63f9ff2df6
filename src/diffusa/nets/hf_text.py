"""A local Hugging Face (or sentence-transformers) model directory as a frozen text encoder, loaded offline:
token-level features (its last hidden state) and its own tokenizer. Nothing is downloaded, ever — a path that
is not a complete local model directory is an error. Its weights stay in the directory: the run's checkpoint
stores only the path, and the frozen model is kept out of the network's state_dict."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusa.errors import DiffusaError


def _transformers() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: local_files_only below already forbids downloads
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise DiffusaError("a Hugging Face text encoder needs the `transformers` package: pip install transformers"
                           ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_hf(path: str | Path) -> tuple[Any, Any]:
    """(tokenizer, model) from a local directory, offline, the model frozen in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise DiffusaError(f"text encoder directory {path} does not exist (a local Hugging Face model directory)")
    tf = _transformers()
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = tf.AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise DiffusaError(f"cannot load a text encoder from {path}: {str(e).splitlines()[0]}") from None
    return tok, model.eval().requires_grad_(False)


class HFTextEncoder(nn.Module):
    """Frozen token features from a local model directory: (tokens, mask) -> (B, L, hidden)."""

    def __init__(self, path: str, max_len: int = 48) -> None:
        super().__init__()
        tok, model = load_hf(path)
        self.path, self.max_len, self.tokenizer = path, max_len, tok
        self.width = int(model.config.hidden_size)
        object.__setattr__(self, "frozen", [model])  # a list: not a submodule, so not in state_dict / parameters

    def _apply(self, fn: Callable, recurse: bool = True) -> HFTextEncoder:  # .to(device) moves the frozen model
        self.frozen[0]._apply(fn)
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo: dict) -> HFTextEncoder:  # EMA copies share the frozen model
        new = self.__class__.__new__(self.__class__)
        nn.Module.__init__(new)
        new.path, new.max_len, new.tokenizer, new.width = self.path, self.max_len, self.tokenizer, self.width
        object.__setattr__(new, "frozen", self.frozen)
        return new

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        return {"tokens": enc["input_ids"], "mask": enc["attention_mask"].to(torch.bool)}

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.frozen[0](input_ids=tokens, attention_mask=mask.long())
        return out.last_hidden_state.detach()


__all__ = ["HFTextEncoder", "load_hf"]
