"""Build an autoencoder for latent diffusion, measure its reconstructions, load it back (safetensors + JSON); it is
trained as a task of the engine (`diffusa.tasks.autoencoder.train_autoencoder`).

The latent scale factor is 1 / std of the training latents (Rombach et al. 2022, Sec. 4.3.2 / App. G), so the
diffusion model sees latents of unit variance whatever the regularizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusa.autoencoder.model import AUTOENCODERS
from diffusa.autoencoder.nets import AutoencoderConfig
from diffusa.checkpoint import load_state_dict_strict, load_tensors, read_trained_meta, weights_file
from diffusa.errors import DiffusaError

AE_FORMAT = "diffusa-autoencoder"
AE_VERSION = 1


def build_autoencoder(cfg: AutoencoderConfig) -> torch.nn.Module:
    if cfg.kind not in AUTOENCODERS:
        raise DiffusaError(f"unknown autoencoder kind {cfg.kind!r}; known: {', '.join(AUTOENCODERS)}")
    from diffusa.limits import build_within_budget

    return build_within_budget(lambda: AUTOENCODERS[cfg.kind](cfg), f"the {cfg.kind} autoencoder")


@torch.no_grad()
def encode_all(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The latents of a whole dataset, in batches (eval mode)."""
    return torch.cat([model.encode(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def decode_all(model: torch.nn.Module, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model.decode(z[i:i + batch]) for i in range(0, len(z), batch)]).clamp(-1, 1)


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """MSE and PSNR (pixels in [-1, 1]: peak-to-peak 2) of reconstructions, beside those of the mean image;
    Frechet distance of the reconstructions to the originals for 28x28 digits; codebook usage for VQ."""
    recon = decode_all(model, encode_all(model, x))
    mse = float(F.mse_loss(recon, x))
    mean_mse = float(F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x))
    out: dict[str, Any] = {"mse": mse, "psnr": 10 * math.log10(4 / max(mse, 1e-12)), "mean_image_mse": mean_mse}
    if tuple(x.shape[1:]) == (1, 28, 28):
        from diffusa.metrics import classify, frechet_distance

        out["fd_reconstruction"] = frechet_distance(classify(recon)[0], classify(x)[0])
    if hasattr(model, "quantizer"):
        z = encode_all(model, x)
        idx = model.quantizer.assign(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        p = torch.bincount(idx, minlength=model.cfg.codebook_size).double() / idx.numel()
        out["codebook_used"] = int((p > 0).sum())
        out["codebook_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return out


def load_autoencoder(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, its config.json) from a folder written by `diffusa.tasks.autoencoder.train_autoencoder`."""
    path = Path(path)
    meta = read_trained_meta(path, AE_FORMAT, AE_VERSION, "autoencoder", "scale_factor",
                             "diffusa train-autoencoder --out DIR")
    try:
        raw = dict(meta["config"])
        raw["channel_mult"] = tuple(raw["channel_mult"])
        model = build_autoencoder(AutoencoderConfig(**raw))
        float(meta["scale_factor"])
    except (KeyError, TypeError, ValueError) as e:
        raise DiffusaError(f"{path / 'config.json'}: bad autoencoder settings ({e})") from None
    weights = weights_file(path, "autoencoder.safetensors")
    load_state_dict_strict(model, load_tensors(weights), weights)
    return model.eval(), meta


__all__ = ["AE_FORMAT", "AE_VERSION", "build_autoencoder", "decode_all", "encode_all", "load_autoencoder",
           "reconstruction_metrics"]
