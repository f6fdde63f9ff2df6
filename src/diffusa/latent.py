"""Latent diffusion (Rombach et al. 2022): a dataset is encoded once by a trained autoencoder into latents scaled
to unit variance; the diffusion model trains and samples there, and samples are decoded back to images. Every
process, objective, sampler and guidance is unchanged: they only see a smaller tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusa.autoencoder import decode_all, encode_all, load_autoencoder
from diffusa.data import Dataset
from diffusa.errors import DiffusaError


def latent_dataset(data: Dataset, autoencoder: str | Path) -> tuple[Dataset, dict[str, Any]]:
    """(the dataset's latents x scale factor, with its labels and captions; the run's "latent" record)."""
    model, meta = load_autoencoder(autoencoder)
    if data.kind != "image" or list(data.shape) != list(meta["image_shape"]):
        raise DiffusaError(f"autoencoder {autoencoder} was trained on images of shape {meta['image_shape']}, "
                           f"this data has {list(data.shape)}")
    scale = float(meta["scale_factor"])
    # in chunks through `get`, so a folder that streams from disk is encoded without being held in memory
    z = torch.cat([encode_all(model, data.get(idx)) for idx in torch.arange(len(data)).split(500)]) * scale
    info = {"autoencoder": str(Path(autoencoder).resolve()), "scale_factor": scale,
            "image_shape": list(data.shape), "latent_shape": list(z.shape[1:]), "kind": meta["config"]["kind"]}
    return Dataset(data.name, z, data.labels, "image", data.num_classes, data.captions,
                   cond_images=getattr(data, "cond_images", None)), info


def autoencoder_path(info: dict[str, Any], run_dir: str | Path | None = None) -> Path:
    """The autoencoder a run names; a relative path (a shipped or moved run) is taken from the run's folder."""
    path = Path(info["autoencoder"])
    return path if path.is_absolute() or run_dir is None else Path(run_dir) / path


class LatentDecoder:
    """Scaled latents -> images in [-1, 1], with the autoencoder a run names."""

    def __init__(self, info: dict[str, Any], run_dir: str | Path | None = None) -> None:
        self.model, meta = load_autoencoder(autoencoder_path(info, run_dir))
        self.scale = float(info["scale_factor"])
        if abs(float(meta["scale_factor"]) - self.scale) > 1e-6 * abs(self.scale):
            raise DiffusaError(f"autoencoder {info['autoencoder']} changed since the run was trained (scale factor "
                               f"{meta['scale_factor']} != {self.scale})")

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return decode_all(self.model, z.float().cpu() / self.scale).to(z.device)


__all__ = ["LatentDecoder", "autoencoder_path", "latent_dataset"]
