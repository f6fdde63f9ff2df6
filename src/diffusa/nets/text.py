"""Text conditioning networks: a small transformer over byte tokens, trained jointly with the U-Net (or a frozen
local Hugging Face model, diffusa.nets.hf_text), and the U-Net that cross-attends to its token features
(Rombach et al. 2022, Sec. 3.3). `net(x, c_noise, cond)` with cond a Cond holding tokens (B, L) long and
token_mask (B, L) bool, from `net.tokenize(texts)` (a {"tokens", "mask"} dict is read too), and optionally an
image for an image-conditioned inner U-Net; it knows no diffusion maths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from diffusa.cond import Cond
from diffusa.errors import DiffusaError
from diffusa.nets.inputs import read_cond
from diffusa.nets.registry import NetRequest, NetworkKind, check_int, check_keys, network_kind
from diffusa.nets.unet import UNet, check_unet, unet_config

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

    def __init__(self, unet: Mapping[str, Any], text: Mapping[str, Any]) -> None:
        super().__init__()
        self.text_cfg = TextEncoderConfig(**text)
        ucfg = dict(unet)
        if self.text_cfg.encoder == "hf":
            from diffusa.nets.hf_text import HFTextEncoder

            self.encoder: nn.Module = HFTextEncoder(self.text_cfg.path, self.text_cfg.max_len)
            ucfg["context_dim"] = self.encoder.width
        elif self.text_cfg.encoder == "byte":
            self.encoder = TextTransformer(self.text_cfg)
            ucfg["context_dim"] = self.text_cfg.width
        else:
            raise ValueError(f"unknown text encoder {self.text_cfg.encoder!r}; known: byte, hf")
        self.unet = UNet(unet_config(ucfg))

    def tokenize(self, texts: Sequence[str]) -> Cond:
        """A Cond (tokens, token_mask) for this network's encoder (bytes, or the Hugging Face model's tokenizer)."""
        if self.text_cfg.encoder == "hf":
            out = self.encoder.tokenize(texts)
        else:
            from diffusa.text import tokenize

            out = tokenize(texts, self.text_cfg.max_len)
        return Cond(tokens=out["tokens"], token_mask=out["mask"])

    @property
    def grad_checkpoint(self) -> bool:
        return self.unet.grad_checkpoint

    @grad_checkpoint.setter
    def grad_checkpoint(self, value: bool) -> None:
        self.unet.grad_checkpoint = value

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x (B, C, H, W), c_noise (B,), cond: tokens and token_mask (and an image, for cond_channels > 0;
        the guidance scale, for a guided student's U-Net)."""
        c = read_cond(cond, {"tokens", "token_mask", "image", "image_level", "guidance"}, "text-conditional network")
        text = None if c is None else c.text
        if text is None:
            raise ValueError("a text-conditional network needs cond.tokens and cond.token_mask (net.tokenize(texts))")
        tokens, mask = text
        rest = c.replace(tokens=None, token_mask=None)
        return self.unet(x, c_noise, rest if rest.present() else None, context=(self.encoder(tokens, mask), mask))


class TextUNetKind(NetworkKind):
    """"text_unet": images with captions; a text encoder and the U-Net, {"unet": ..., "text": ...}."""

    accepts = frozenset({"text", "image"})

    def config(self, request: NetRequest) -> dict[str, Any]:
        if request.conditioning != "text":
            raise DiffusaError(f"network 'text_unet' needs model.conditioning=\"text\", got {request.conditioning!r}")
        unet = network_kind("unet").config(replace(request, conditioning="none"))
        unet["num_classes"] = 0
        return {"unet": unet, "text": {**TextEncoderConfig().to_dict(), **request.text}}

    def check(self, cfg: Mapping[str, Any]) -> None:
        check_keys(self.name, cfg, ("unet", "text"), required=("unet", "text"))
        check_unet(self.name, cfg["unet"])
        text = cfg["text"]
        check_keys(self.name, text, TextEncoderConfig.__dataclass_fields__)
        for key in ("width", "depth", "heads", "vocab"):
            check_int(self.name, text, key)
        check_int(self.name, text, "max_len", low=3)
        t = TextEncoderConfig(**text)
        if t.encoder not in ("byte", "hf"):
            raise DiffusaError(f"network 'text_unet': unknown text encoder {t.encoder!r}; known: byte, hf")
        if t.encoder == "byte" and t.width % t.heads:
            raise DiffusaError(f"network 'text_unet': the text width {t.width} does not split into {t.heads} heads")
        if t.encoder == "hf" and not t.path:
            raise DiffusaError("network 'text_unet': the hf text encoder needs a path (model.text.path)")

    def image_channels(self, cfg: Mapping[str, Any]) -> int:
        return int(cfg["unet"].get("cond_channels", 0) or 0)

    def guidance_input(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {**cfg, "unet": network_kind("unet").guidance_input(cfg["unet"])}

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        return TextUNet(cfg["unet"], cfg["text"])


__all__ = ["BYTE_VOCAB", "TextEncoderConfig", "TextTransformer", "TextUNet", "TextUNetKind"]
