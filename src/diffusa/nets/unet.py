"""A U-Net for images (Ronneberger et al. 2015, as adapted by Ho et al. 2020 and Dhariwal & Nichol 2021).

It knows no diffusion maths: `net(x, c_noise, cond) -> tensor`. Class labels (cond, LongTensor (B,))
are embedded and added to the noise-level embedding; label `num_classes` is the null label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusa.nets.layers import AttentionBlock, Downsample, ResBlock, Upsample, group_norm, timestep_embedding


@dataclass
class UNetConfig:
    """Shape of the U-Net. Every field is plain data, so it serialises to JSON."""

    in_channels: int = 1
    out_channels: int | None = None  # default: in_channels (x2 with learned variance, set by the caller)
    channels: int = 32  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; each level after the first halves H, W
    num_res_blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes (H) that get self-attention
    head_dim: int = 32
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional, with a null label for classifier-free guidance
    emb_mult: int = 4  # noise embedding width = channels * emb_mult
    image_size: int = 28
    patch_size: int = 1  # > 1: pixel-unshuffle p x p patches into channels first (lossless, p^2 fewer positions)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d


class UNet(nn.Module):
    """Encoder-decoder with skip connections, residual blocks, attention at chosen resolutions."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpoint = False  # a training-time memory option, not part of the model's shape
        ch = cfg.channels
        emb_dim = ch * cfg.emb_mult
        self.emb_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes > 0 else None
        p = cfg.patch_size
        self.conv_in = nn.Conv2d(cfg.in_channels * p * p, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur, res = ch, -(-cfg.image_size // p)
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                blocks = nn.ModuleList([ResBlock(cur, out, emb_dim, cfg.dropout)])
                if res in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(out, cfg.head_dim))
                self.down.append(blocks)
                cur = out
                skips.append(cur)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skips.append(cur)
                res = (res + 1) // 2

        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, cfg.dropout), AttentionBlock(cur, cfg.head_dim),
                                  ResBlock(cur, cur, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = ch * mult
                blocks = nn.ModuleList([ResBlock(cur + skips.pop(), out, emb_dim, cfg.dropout)])
                if res in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(out, cfg.head_dim))
                cur = out
                if level > 0 and i == cfg.num_res_blocks:
                    blocks.append(Upsample(cur))
                    res = res * 2
                self.up.append(blocks)
        self.norm_out = group_norm(cur)
        out_ch = cfg.out_channels or cfg.in_channels
        self.conv_out = nn.Conv2d(cur, out_ch * p * p, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, c_noise: torch.Tensor, cond: Any) -> torch.Tensor:
        """Noise-level embedding plus, for class-conditional nets, the label embedding."""
        emb = self.emb_mlp(timestep_embedding(c_noise, self.cfg.channels))
        if self.label_emb is not None:
            labels = cond if cond is not None else torch.full((emb.shape[0],), self.cfg.num_classes,
                                                             dtype=torch.long, device=emb.device)
            emb = emb + self.label_emb(labels)
        return emb

    def _run_layer(self, layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, sizes: list[torch.Size]) -> torch.Tensor:
        """Run one layer; with gradient checkpointing, residual and attention blocks recompute their
        activations in the backward pass instead of storing them (Chen et al. 2016)."""
        if isinstance(layer, Upsample):
            return layer(h, sizes.pop())
        if isinstance(layer, Downsample):
            return layer(h)
        args = (h, emb) if isinstance(layer, ResBlock) else (h,)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        emb = self.embed(c_noise, cond)
        p = self.cfg.patch_size
        if p > 1:
            if x.shape[-1] % p or x.shape[-2] % p:
                raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size {p}")
            x = F.pixel_unshuffle(x, p)
        h = self.conv_in(x)
        hs = [h]
        sizes: list[torch.Size] = []
        for blocks in self.down:
            for layer in blocks:
                if isinstance(layer, Downsample):
                    sizes.append(h.shape[-2:])
                h = self._run_layer(layer, h, emb, sizes)
            hs.append(h)
        for layer in self.mid:
            h = self._run_layer(layer, h, emb, sizes)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blocks:
                h = self._run_layer(layer, h, emb, sizes)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out
