"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4): the U-Net's
encoder half and middle block, conditioned on the noise level, then global average pooling, layer norm and a
linear head. Like every network here it knows no diffusion maths: `net(x_t, c_noise) -> logits`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.nets.layers import ResBlock, timestep_embedding
from diffusa.nets.unet import UNet, UNetConfig


class EncoderClassifier(nn.Module):
    """Logits over `num_classes` from a noisy image and its noise-level input."""

    def __init__(self, cfg: UNetConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.cfg, self.num_classes = replace(cfg, num_classes=0, cond_channels=0), num_classes
        body = UNet(self.cfg)  # its encoder and middle block; the decoder is not kept
        self.emb_mlp, self.conv_in, self.down, self.mid = body.emb_mlp, body.conv_in, body.down, body.mid
        width = cfg.channels * cfg.channel_mult[-1]
        # pool, then normalise: a per-group norm before pooling would erase what a 2x2 or 4x4 map holds
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        emb = self.emb_mlp(timestep_embedding(c_noise, self.cfg.channels))
        if self.cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        h = self.conv_in(x)
        for blocks in self.down:
            for layer in blocks:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(self.norm(F.silu(h).mean(dim=(2, 3))))


__all__ = ["EncoderClassifier"]
