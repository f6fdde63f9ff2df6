"""Train an autoencoder for latent diffusion, measure its reconstructions, save and load it (safetensors + JSON).

The latent scale factor is 1 / std of the training latents (Rombach et al. 2022, Sec. 4.3.2 / App. G), so the
diffusion model sees latents of unit variance whatever the regularizer.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusa.autoencoder.model import AUTOENCODERS
from diffusa.autoencoder.nets import AutoencoderConfig
from diffusa.checkpoint import load_json, load_state_dict_strict, load_tensors, save_json, save_tensors
from diffusa.data import batches, load_dataset
from diffusa.errors import DiffusaError

AE_FORMAT = "diffusa-autoencoder"
AE_VERSION = 1


def build_autoencoder(cfg: AutoencoderConfig) -> torch.nn.Module:
    if cfg.kind not in AUTOENCODERS:
        raise DiffusaError(f"unknown autoencoder kind {cfg.kind!r}; known: {', '.join(AUTOENCODERS)}")
    return AUTOENCODERS[cfg.kind](cfg)


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


def train_autoencoder(data_name: str, out: str | Path, cfg: AutoencoderConfig, *, steps: int = 2000,
                      batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> Path:
    """Train on a dataset's train split; write autoencoder.safetensors, config.json (with the scale factor and the
    held-out reconstruction metrics) and log.jsonl into `out`."""
    out = Path(out)
    if (out / "config.json").exists():
        raise DiffusaError(f"{out} already holds an autoencoder; choose another --out")
    data = load_dataset(data_name, "train")
    if data.kind != "image":
        raise DiffusaError(f"an autoencoder needs images; {data_name} holds points")
    cfg = replace(cfg, in_channels=data.shape[0], image_size=data.shape[-1])
    torch.manual_seed(seed)
    model = build_autoencoder(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order, g = batches(len(data), batch_size, seed), torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train-autoencoder", unit="step", dynamic_ncols=True, mininterval=1.0)
    start = time.time()
    with (out / "log.jsonl").open("w") as log:
        for step in range(steps):
            x = data.x[next(order)]
            decay = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine to 5%, 50 warm-up steps
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 50) * decay
            recon, reg, stats = model(x, g)
            rec_loss = F.mse_loss(recon, x)
            loss = rec_loss + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                log.write(json.dumps({"step": step + 1, "mse": rec_loss.item(), "reg": float(reg.detach()), **stats,
                                      "elapsed_s": time.time() - start}) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mse=f"{rec_loss.item():.4f}", refresh=False)
    if bar is not None:
        bar.close()
    model.eval()
    test = load_dataset(data_name, "test")
    scale = 1.0 / float(encode_all(model, data.x).std())
    z_shape = list(encode_all(model, data.x[:1]).shape[1:])
    save_tensors(out / "autoencoder.safetensors", model.state_dict())
    save_json(out / "config.json", {"format": AE_FORMAT, "format_version": AE_VERSION, "config": cfg.to_dict(),
                                    "scale_factor": scale, "latent_shape": z_shape, "data": data_name,
                                    "image_shape": list(data.shape), "steps": steps, "batch_size": batch_size,
                                    "lr": lr, "seed": seed, "train_seconds": time.time() - start,
                                    "held_out": reconstruction_metrics(model, test.x)})
    return out


def load_autoencoder(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, its config.json) from a folder written by `train_autoencoder`."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DiffusaError(f"{path} is not a diffusa autoencoder: config.json is missing")
    meta = load_json(path / "config.json")
    if meta.get("format") != AE_FORMAT:
        raise DiffusaError(f"{path / 'config.json'} is not an autoencoder config (format {meta.get('format')!r})")
    if meta.get("format_version") != AE_VERSION:
        raise DiffusaError(f"{path}: autoencoder format version {meta.get('format_version')!r}; this diffusa reads "
                           f"version {AE_VERSION}")
    try:
        raw = dict(meta["config"])
        raw["channel_mult"] = tuple(raw["channel_mult"])
        model = build_autoencoder(AutoencoderConfig(**raw))
        float(meta["scale_factor"])
    except (KeyError, TypeError, ValueError) as e:
        raise DiffusaError(f"{path / 'config.json'}: bad autoencoder settings ({e})") from None
    load_state_dict_strict(model, load_tensors(path / "autoencoder.safetensors"), path / "autoencoder.safetensors")
    return model.eval(), meta


__all__ = ["build_autoencoder", "decode_all", "encode_all", "load_autoencoder", "reconstruction_metrics",
           "train_autoencoder"]
