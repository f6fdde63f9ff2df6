"""An MLP denoiser for low-dimensional data such as the 2-D toy distributions (points (D,)); class labels
(cond.labels) are embedded and added to the noise-level embedding, like the U-Net's (Ho et al. 2020, App. B)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.errors import DiffusaError
from diffusa.nets.inputs import labels_or_null, read_cond
from diffusa.nets.layers import timestep_embedding
from diffusa.nets.registry import NetRequest, NetworkKind, check_int, check_keys, label_conditioning

DEFAULT_MLP: dict[str, Any] = {"hidden": 256, "depth": 4}


@dataclass
class MLPConfig:
    """Width and depth of the MLP; `dim` is the data dimension."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    emb_dim: int = 64
    num_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MLP(nn.Module):
    """Residual MLP: the noise-level embedding is added to every hidden layer. `net(x, c_noise, cond)`."""

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.dim, cfg.hidden)
        self.emb = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, cfg.hidden) if cfg.num_classes > 0 else None
        self.layers = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.depth))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.hidden) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x (B, dim), c_noise (B,), cond a Cond with labels (or a label tensor) for a class-conditional MLP."""
        c = read_cond(cond, {"labels"} if self.label_emb is not None else set(), "MLP")
        e = self.emb(timestep_embedding(c_noise, self.cfg.emb_dim))
        if self.label_emb is not None:
            e = e + self.label_emb(labels_or_null(c, self.cfg.num_classes, x.shape[0], x.device))
        h = self.inp(x)
        for lin, norm in zip(self.layers, self.norms, strict=True):
            h = h + lin(F.silu(norm(h + e)))
        return self.out(F.silu(h))


class MLPKind(NetworkKind):
    """"mlp": points (D,); class labels as the condition."""

    accepts = frozenset({"labels"})

    def config(self, request: NetRequest) -> dict[str, Any]:
        shape = tuple(request.data_shape)
        if request.kind_of_data != "points" or len(shape) != 1:
            raise DiffusaError(f"the MLP needs flat points (D,); this data has shape {shape}")
        if request.learned_variance:
            raise DiffusaError("learned variance is only available for the U-Net")
        spec = {**DEFAULT_MLP, "dim": shape[0]}
        spec.update(request.net)
        if request.conditioning == "text":
            raise DiffusaError("text conditioning needs images (the U-Net's cross-attention); this data are points")
        label_conditioning(spec, request)
        if request.cond_channels:
            raise DiffusaError("an image condition (cond_channels) needs images and the U-Net; this data are points")
        return spec

    def check(self, cfg: Mapping[str, Any]) -> None:
        check_keys(self.name, cfg, MLPConfig.__dataclass_fields__)
        for key in ("dim", "hidden", "depth", "emb_dim"):
            check_int(self.name, cfg, key)
        check_int(self.name, cfg, "num_classes", low=0)

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        return MLP(MLPConfig(**cfg))


__all__ = ["DEFAULT_MLP", "MLP", "MLPConfig", "MLPKind"]
