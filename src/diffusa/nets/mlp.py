"""An MLP denoiser for low-dimensional data such as the 2-D toy distributions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.nets.layers import timestep_embedding


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
        e = self.emb(timestep_embedding(c_noise, self.cfg.emb_dim))
        if self.label_emb is not None:
            labels = cond if cond is not None else torch.full((x.shape[0],), self.cfg.num_classes,
                                                             dtype=torch.long, device=x.device)
            e = e + self.label_emb(labels)
        h = self.inp(x)
        for lin, norm in zip(self.layers, self.norms, strict=True):
            h = h + lin(F.silu(norm(h + e)))
        return self.out(F.silu(h))
