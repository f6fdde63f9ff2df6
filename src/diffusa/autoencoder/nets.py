"""Convolutional encoder and decoder for latent diffusion (Rombach et al. 2022, App. G; Esser et al. 2021):
residual blocks, a stride-2 convolution per level down, nearest-neighbour upsampling per level up. An image of
H x W becomes a latent of ceil(H / f) x ceil(W / f), f = 2 ** len(channel_mult)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.nets.layers import group_norm


@dataclass
class AutoencoderConfig:
    """Shape and regularizer of an autoencoder; plain data, saved as JSON beside the weights."""

    kind: str = "kl"  # kl | vq
    in_channels: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)  # one downsampling per level: f = 2 ** len(channel_mult)
    latent_channels: int = 4
    kl_weight: float = 1e-4  # kl: weight of KL(q(z | x) || N(0, I)) per latent element against the pixel MSE
    codebook_size: int = 256  # vq
    commitment: float = 0.25  # vq: beta of the commitment loss (van den Oord et al. 2017, eq. 3)
    ema_decay: float = 0.99  # vq: codebook EMA decay (App. A.1); 0 = learn the codebook by its loss instead
    image_size: int = 28

    @property
    def factor(self) -> int:
        return 2 ** len(self.channel_mult)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d


class Block(nn.Module):
    """GroupNorm-SiLU-conv twice, residual."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """x (B, C, H, W) -> (B, out_channels, H / f, W / f)."""

    def __init__(self, cfg: AutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        cur = ch
        for mult in cfg.channel_mult:
            layers += [Block(cur, ch * mult), nn.Conv2d(ch * mult, ch * mult, 3, stride=2, padding=1)]
            cur = ch * mult
        self.body = nn.Sequential(*layers, Block(cur, cur))
        self.norm, self.conv_out = group_norm(cur), nn.Conv2d(cur, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm(self.body(self.conv_in(x)))))


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> (B, C, H, W) at the sizes the encoder halved from."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch = cfg.channels
        cur = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, cur, 3, padding=1)
        self.mid = Block(cur, cur)
        self.up = nn.ModuleList()
        for mult in reversed(cfg.channel_mult):
            self.up.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, padding=1), Block(cur, ch * mult)]))
            cur = ch * mult
        self.norm, self.conv_out = group_norm(cur), nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        self.sizes = decoder_sizes(cfg.image_size, len(cfg.channel_mult))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for (conv, block), size in zip(self.up, self.sizes, strict=True):
            h = block(conv(F.interpolate(h, size=size, mode="nearest")))
        return self.conv_out(F.silu(self.norm(h)))


def decoder_sizes(image_size: int, levels: int) -> list[tuple[int, int]]:
    """The spatial sizes on the way up: the encoder's, reversed (28 -> 14 -> 7 gives [(14, 14), (28, 28)])."""
    sizes = [image_size]
    for _ in range(levels):
        sizes.append((sizes[-1] + 1) // 2)
    return [(s, s) for s in reversed(sizes[:-1])]


__all__ = ["AutoencoderConfig", "Block", "Decoder", "Encoder", "decoder_sizes"]
