"""KL- and VQ-regularized autoencoders (Rombach et al. 2022, Sec. 3 and App. G; van den Oord et al. 2017).

Both have one interface: `encode(x) -> z` (the latent diffusion runs on: the posterior mean, or the quantized
code), `decode(z) -> x`, and `forward(x) -> (reconstruction, regularizer loss, stats)` for training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.autoencoder.nets import AutoencoderConfig, Decoder, Encoder


class KLAutoencoder(nn.Module):
    """q(z | x) = N(mu(x), diag sigma(x)^2); the regularizer is KL(q(z | x) || N(0, I)) per latent element."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, 2 * cfg.latent_channels)
        self.decoder = Decoder(cfg)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.moments(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        mean, logvar = self.moments(x)
        # drawn where the generator lives (the engine's is on the CPU), then moved: the same noise on every device
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + (0.5 * logvar).exp() * eps
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).mean(1).mean()
        return self.decode(z), self.cfg.kl_weight * kl, {"kl": kl.item()}


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantization with the straight-through gradient (van den Oord et al. 2017, eq. 3);
    the codebook learns by its loss, or by exponential moving averages of the assigned encodings (App. A.1)
    with Laplace-smoothed counts. The codebook starts from encodings of the first training batch."""

    def __init__(self, size: int, dim: int, commitment: float, ema_decay: float) -> None:
        super().__init__()
        self.size, self.dim, self.commitment, self.decay = size, dim, commitment, ema_decay
        self.codebook = nn.Parameter(torch.randn(size, dim) * 0.1, requires_grad=ema_decay == 0)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("initialized", torch.tensor(False))

    def assign(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` (N, dim)."""
        e = self.codebook
        d = flat.square().sum(1, keepdim=True) - 2 * flat @ e.t() + e.square().sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor, generator: torch.Generator | None) -> None:
        pick = torch.randint(flat.shape[0], (self.size,), generator=generator).to(flat.device)
        self.codebook.data.copy_(flat[pick] + 1e-3 * torch.randn(self.size, self.dim, generator=generator).to(flat))
        self.ema_sum.copy_(self.codebook.data)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.size).to(flat.dtype)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing: no code divides by 0
        self.codebook.data.copy_(self.ema_sum / count[:, None])

    def forward(self, z_e: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantized z, codebook + commitment loss, code indices (B, h, w))."""
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach(), generator)
        idx = self.assign(flat.detach())
        z_q = self.codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2)
        if self.training and self.decay > 0:
            self._ema_update(flat.detach(), idx)
            loss = self.commitment * F.mse_loss(z_e, z_q.detach())
        else:
            loss = F.mse_loss(z_q, z_e.detach()) + self.commitment * F.mse_loss(z_e, z_q.detach())
        return z_e + (z_q - z_e).detach(), loss, idx.view(b, h, w)


class VQAutoencoder(nn.Module):
    """Encoder -> vector quantizer -> decoder. As in LDM (Rombach et al. 2022, Sec. 4), diffusion runs on the
    pre-quantization latent and the quantizer is part of decoding: `encode` returns z_e, `decode` quantizes."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, cfg.latent_channels)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_channels, cfg.commitment, cfg.ema_decay)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        idx = self.quantizer.assign(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        return self.quantizer.codebook[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize(z))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return self.quantizer.assign(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])).view(z.shape[0], *z.shape[2:])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        z_q, loss, idx = self.quantizer(self.encoder(x), generator)
        return self.decode(z_q), loss, {"codes_used": int(idx.unique().numel())}


AUTOENCODERS: dict[str, type[nn.Module]] = {"kl": KLAutoencoder, "vq": VQAutoencoder}

__all__ = ["AUTOENCODERS", "KLAutoencoder", "VQAutoencoder", "VectorQuantizer"]
