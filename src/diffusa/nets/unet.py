"""A U-Net for images (Ronneberger et al. 2015, as adapted by Ho et al. 2020 and Dhariwal & Nichol 2021).

It knows no diffusion maths: `net(x, c_noise, cond) -> tensor`. Class labels (cond, LongTensor (B,))
are embedded and added to the noise-level embedding; label `num_classes` is the null label. With
`context_dim > 0`, cond is {"context": (B, L, context_dim) token features, "mask": (B, L) real tokens}: every
attention resolution (and the middle block) gains cross-attention to the tokens, and their masked mean is added
to the noise-level embedding (Rombach et al. 2022; Nichol et al. 2022).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusa.nets.layers import (
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)


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
    context_dim: int = 0  # > 0: text-conditional, cross-attending to token features of this width
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
        self.context_emb = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim > 0 else None
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
                    blocks.extend(self._attention(out))
                self.down.append(blocks)
                cur = out
                skips.append(cur)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                skips.append(cur)
                res = (res + 1) // 2

        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, cfg.dropout), *self._attention(cur),
                                  ResBlock(cur, cur, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = ch * mult
                blocks = nn.ModuleList([ResBlock(cur + skips.pop(), out, emb_dim, cfg.dropout)])
                if res in cfg.attention_resolutions:
                    blocks.extend(self._attention(out))
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

    def _attention(self, channels: int) -> list[nn.Module]:
        """Self-attention, followed by cross-attention to the tokens in a text-conditional net."""
        layers: list[nn.Module] = [AttentionBlock(channels, self.cfg.head_dim)]
        if self.cfg.context_dim > 0:
            layers.append(CrossAttentionBlock(channels, self.cfg.context_dim, self.cfg.head_dim))
        return layers

    def embed(self, c_noise: torch.Tensor, cond: Any) -> torch.Tensor:
        """Noise-level embedding plus, for class-conditional nets, the label embedding (for text-conditional
        ones, the tokens' masked mean)."""
        emb = self.emb_mlp(timestep_embedding(c_noise, self.cfg.channels))
        if self.context_emb is not None:
            context, mask = text_inputs(cond)
            m = mask.to(context.dtype).unsqueeze(-1)
            emb = emb + self.context_emb((context * m).sum(1) / m.sum(1).clamp_min(1))
        if self.label_emb is not None:
            labels = cond if cond is not None else torch.full((emb.shape[0],), self.cfg.num_classes,
                                                             dtype=torch.long, device=emb.device)
            emb = emb + self.label_emb(labels)
        return emb

    def _run_layer(self, layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, sizes: list[torch.Size],
                   ctx: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """Run one layer; with gradient checkpointing, residual and attention blocks recompute their
        activations in the backward pass instead of storing them (Chen et al. 2016)."""
        if isinstance(layer, Upsample):
            return layer(h, sizes.pop())
        if isinstance(layer, Downsample):
            return layer(h)
        if isinstance(layer, CrossAttentionBlock):
            args: tuple[Any, ...] = (h, *ctx)
        else:
            args = (h, emb) if isinstance(layer, ResBlock) else (h,)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        emb = self.embed(c_noise, cond)
        ctx = text_inputs(cond) if self.cfg.context_dim > 0 else ()
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
                h = self._run_layer(layer, h, emb, sizes, ctx)
            hs.append(h)
        for layer in self.mid:
            h = self._run_layer(layer, h, emb, sizes, ctx)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blocks:
                h = self._run_layer(layer, h, emb, sizes, ctx)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, p) if p > 1 else out


def text_inputs(cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, mask) from a text conditioning {"context": (B, L, D), "mask": (B, L)}."""
    if not isinstance(cond, dict) or "context" not in cond:
        raise ValueError("a text-conditional U-Net needs cond = {'context': (B, L, D) tensor, 'mask': (B, L)}")
    context = cond["context"]
    mask = cond.get("mask")
    if mask is None:
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    return context, mask
