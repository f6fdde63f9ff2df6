"""Networks: `net(x, c_noise, cond) -> tensor`, knowing no diffusion maths."""

from __future__ import annotations

from typing import Any

from torch import nn

from diffusa.errors import DiffusaError
from diffusa.nets.mlp import MLP, MLPConfig
from diffusa.nets.text import TextUNet
from diffusa.nets.unet import UNet, UNetConfig


def build_network(kind: str, cfg: dict[str, Any]) -> nn.Module:
    """Build a network from its kind ("unet", "text_unet" or "mlp") and its config dict."""
    cfg = dict(cfg)
    try:
        if kind == "unet":
            for key in ("channel_mult", "attention_resolutions"):
                if key in cfg:
                    cfg[key] = tuple(cfg[key])
            return UNet(UNetConfig(**cfg))
        if kind == "mlp":
            return MLP(MLPConfig(**cfg))
        if kind == "text_unet":
            return TextUNet(cfg["unet"], cfg["text"])
    except (TypeError, KeyError) as e:
        raise DiffusaError(f"bad settings for network {kind!r}: {e}") from None
    raise DiffusaError(f"unknown network {kind!r}; known: mlp, text_unet, unet")


__all__ = ["MLP", "MLPConfig", "TextUNet", "UNet", "UNetConfig", "build_network"]
