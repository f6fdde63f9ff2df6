"""Text conditioning networks: a small transformer over byte tokens, trained jointly with the U-Net (or a frozen
local Hugging Face model, diffusa.nets.hf_text), and the U-Net that cross-attends to its token features.
`net(x, c_noise, cond)` with cond = {"tokens": (B, L) long, "mask": (B, L) bool} from `net.tokenize(texts)`;
it knows no diffusion maths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffusa.nets.unet import UNet, UNetConfig

BYTE_VOCAB = 259  # 256 byte values, then PAD, BOS, EOS (diffusa.text)


@dataclass
class TextEncoderConfig:
    """Shape of the byte-level text transformer."""

    width: int = 64
    depth: int = 2
    heads: int = 4
    max_len: int = 48
    vocab: int = BYTE_VOCAB
    encoder: str = "byte"  # byte: this transformer, trained jointly | hf: a frozen local Hugging Face model at `path`
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TextTransformer(nn.Module):
    """Pre-norm transformer encoder over tokens with learned positions (Vaswani et al. 2017; the byte-level input
    of Radford et al. 2019 without merges): (tokens, mask) -> token features (B, L, width)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the encoder's max_len {self.cfg.max_len}")
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        return self.norm(self.blocks(h, src_key_padding_mask=~mask.to(torch.bool)))


class TextUNet(nn.Module):
    """A text encoder and a U-Net with cross-attention, trained together."""

    def __init__(self, unet: dict[str, Any], text: dict[str, Any]) -> None:
        super().__init__()
        self.text_cfg = TextEncoderConfig(**text)
        ucfg = dict(unet)
        for key in ("channel_mult", "attention_resolutions"):
            if key in ucfg:
                ucfg[key] = tuple(ucfg[key])
        if self.text_cfg.encoder == "hf":
            from diffusa.nets.hf_text import HFTextEncoder

            self.encoder: nn.Module = HFTextEncoder(self.text_cfg.path, self.text_cfg.max_len)
            ucfg["context_dim"] = self.encoder.width
        elif self.text_cfg.encoder == "byte":
            self.encoder = TextTransformer(self.text_cfg)
            ucfg["context_dim"] = self.text_cfg.width
        else:
            raise ValueError(f"unknown text encoder {self.text_cfg.encoder!r}; known: byte, hf")
        self.unet = UNet(UNetConfig(**ucfg))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"tokens", "mask"} for this network's encoder (bytes, or the Hugging Face model's tokenizer)."""
        if self.text_cfg.encoder == "hf":
            return self.encoder.tokenize(texts)
        from diffusa.text import tokenize

        return tokenize(texts, self.text_cfg.max_len)

    @property
    def grad_checkpoint(self) -> bool:
        return self.unet.grad_checkpoint

    @grad_checkpoint.setter
    def grad_checkpoint(self, value: bool) -> None:
        self.unet.grad_checkpoint = value

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if not isinstance(cond, dict) or "tokens" not in cond:
            raise ValueError("a text-conditional model needs cond = {'tokens', 'mask'} (diffusa.text.tokenize)")
        mask = cond["mask"].to(torch.bool)
        return self.unet(x, c_noise, {"context": self.encoder(cond["tokens"], mask), "mask": mask})


__all__ = ["BYTE_VOCAB", "TextEncoderConfig", "TextTransformer", "TextUNet"]
