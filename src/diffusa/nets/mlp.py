"""An MLP denoiser for low-dimensional data such as the 2-D toy distributions (points (D,)); class labels
(cond.labels) are embedded and added to the noise-level embedding, like the U-Net's (Ho et al. 2020, App. B)."""

from __future__ import annotations

import math
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

# fourier > 0 adds random Fourier features of the input (Tancik et al. 2020), for detail finer than the inputs'
# scale: on 2-D points with narrow modes (std 0.05 after standardising) 64 frequencies of std 1 took the
# probability-flow ODE from 2.25x to 1.95x the energy-distance floor, but on moons from 1.0-1.4x to 1.2-1.6x for
# every process, so the default stays the plain MLP (docs/benchmarks.md, the 2-D points section)
DEFAULT_MLP: dict[str, Any] = {"hidden": 256, "depth": 4}
MAX_FOURIER = 4096


@dataclass
class MLPConfig:
    """Width and depth of the MLP; `dim` is the data dimension."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    emb_dim: int = 64
    num_classes: int = 0
    fourier: int = 0  # > 0: random Fourier features of the input, this many frequencies (Tancik et al. 2020)
    fourier_scale: float = 1.0  # their std (cycles per unit of the standardised data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MLP(nn.Module):
    """Residual MLP: the noise-level embedding is added to every hidden layer. `net(x, c_noise, cond)`."""

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.fourier > 0:  # fixed frequencies, the same for every run (seeded), saved with the weights
            freqs = torch.empty(cfg.dim, cfg.fourier)
            if freqs.device.type != "meta":  # not when the size is checked on the meta device (diffusa.limits)
                freqs.copy_(torch.randn(cfg.dim, cfg.fourier, generator=torch.Generator().manual_seed(0)))
            self.register_buffer("freqs", freqs * cfg.fourier_scale)
        self.inp = nn.Linear(cfg.dim + 2 * cfg.fourier, cfg.hidden)
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
        if self.cfg.fourier > 0:
            z = 2 * math.pi * x.float() @ self.freqs.float()  # float32 phases, also under autocast
            x = torch.cat([x, torch.sin(z).to(x.dtype), torch.cos(z).to(x.dtype)], dim=1)
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
        check_int(self.name, cfg, "fourier", low=0)
        if cfg.get("fourier", 0) > MAX_FOURIER:
            raise DiffusaError(f"network {self.name!r}: fourier must be <= {MAX_FOURIER}, got {cfg['fourier']}")
        scale = cfg.get("fourier_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 1e3:
            raise DiffusaError(f"network {self.name!r}: fourier_scale must be a number in (0, 1000], got {scale!r:.40}")

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        return MLP(MLPConfig(**cfg))


__all__ = ["DEFAULT_MLP", "MLP", "MLPConfig", "MLPKind"]
