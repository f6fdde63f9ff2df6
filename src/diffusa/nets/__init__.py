"""Networks: `net(x, c_noise, cond) -> tensor`, knowing no diffusion maths; cond is a diffusa.Cond.

Every kind is built through one registry (diffusa.nets.registry): `build_network(kind, cfg)`,
`network_config(kind, request)` for its defaults, `accepts(kind)` for the conditioning it reads.
"""

from __future__ import annotations

from diffusa.nets.mlp import MLP, MLPConfig, MLPKind
from diffusa.nets.registry import (
    NetRequest,
    NetworkKind,
    accepts,
    build_network,
    kinds,
    network_config,
    network_kind,
    register,
)
from diffusa.nets.text import TextUNet, TextUNetKind
from diffusa.nets.unet import UNet, UNetConfig, UNetKind

register("unet", UNetKind())
register("mlp", MLPKind())
register("text_unet", TextUNetKind())

__all__ = [
    "MLP",
    "MLPConfig",
    "NetRequest",
    "NetworkKind",
    "TextUNet",
    "UNet",
    "UNetConfig",
    "accepts",
    "build_network",
    "kinds",
    "network_config",
    "network_kind",
    "register",
]
