"""The autoencoder of latent diffusion as a task of the engine (Rombach et al. 2022, Sec. 3): reconstruction MSE
plus the KL or VQ regulariser; at the end, the latent scale factor (1 / std of the training latents, Sec. 4.3.2 /
App. G) and held-out reconstruction metrics go into config.json."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusa.autoencoder.io import AE_FORMAT, AE_VERSION, build_autoencoder, encode_all, reconstruction_metrics
from diffusa.autoencoder.nets import AutoencoderConfig
from diffusa.checkpoint import load_json, save_json
from diffusa.config import TrainConfig, check_range
from diffusa.data import load_dataset
from diffusa.engine import Engine
from diffusa.engine.loop import validate_settings
from diffusa.engine.state import check_out
from diffusa.engine.task import StepLoss, Task
from diffusa.errors import DiffusaError

SCALE_CHUNK = 500  # training images encoded at a time for the scale factor (all of them are)
HELD_OUT = 5_000  # held-out images whose reconstructions are measured (every one of the built-in test splits)


def autoencoder_settings(steps: int = 2000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> TrainConfig:
    """The autoencoder's optimisation: 50 warm-up steps, cosine decay to 5%, clipping at 1, no EMA."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=50, lr_decay="cosine", lr_min_ratio=0.05,
                       weight_decay=0.0, grad_clip=1.0, ema_decay=0.0, ema_warmup=False, seed=seed, log_every=50,
                       checkpoint_every=200, sample_every=0)


class AutoencoderTask(Task):
    """Trains a KL or VQ autoencoder on a dataset's training images."""

    name = "train-autoencoder"

    def __init__(self, data_name: str, cfg: AutoencoderConfig, settings: TrainConfig) -> None:
        self.data_name, self.settings = data_name, settings
        validate_settings(settings)  # before the data are read (the engine checks again)
        check_range("--kl-weight", cfg.kl_weight, False, 0, math.inf, True, False)
        self.data = load_dataset(data_name, "train")
        if self.data.kind != "image":
            raise DiffusaError(f"an autoencoder needs images; {data_name} holds points")
        self.cfg = replace(cfg, in_channels=self.data.shape[0], image_size=self.data.shape[-1])
        torch.manual_seed(settings.seed)
        self.model = build_autoencoder(self.cfg)

    def parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]  # a VQ codebook may learn by EMA instead

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        self.train_module = train_module

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        recon, reg, stats = self.train_module(x, generator)
        mse = (recon - x).square().flatten(1).mean(1)
        return StepLoss(mse + reg, logs={"mse": mse.detach().mean(), "reg": reg.detach(), **stats})

    def meta(self) -> dict[str, Any]:
        s = self.settings
        return {"format": AE_FORMAT, "format_version": AE_VERSION, "config": self.cfg.to_dict(),
                "data": self.data_name, "image_shape": list(self.data.shape), "steps": s.steps,
                "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed}

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        if meta.get("format") != AE_FORMAT:
            raise DiffusaError(f"cannot resume {out}: it is not an autoencoder folder (format {meta.get('format')!r})")
        if meta.get("config") != self.cfg.to_dict() or meta.get("data") != self.data_name:
            raise DiffusaError(f"cannot resume {out}: it trains another autoencoder or other data")

    @torch.no_grad()
    def finish(self, out: Path, model: nn.Module, seconds: float) -> None:
        model.eval()
        device = next(model.parameters()).device
        # the latents' std from running sums over chunks: a folder that streams is never decoded whole
        total = total_sq = count = 0.0
        shape: list[int] = []
        for idx in torch.arange(len(self.data)).split(SCALE_CHUNK):
            z = encode_all(model, self.data.get(idx).to(device)).double()
            total, total_sq, count = total + float(z.sum()), total_sq + float(z.square().sum()), count + z.numel()
            shape = list(z.shape[1:])
        std = math.sqrt(max(total_sq - total**2 / count, 0.0) / (count - 1))
        test = load_dataset(self.data_name, "test")
        held = test.get(torch.arange(min(len(test), HELD_OUT))).to(device)
        meta = load_json(out / "config.json")
        meta.update({"scale_factor": 1.0 / std, "latent_shape": shape, "train_seconds": seconds,
                     "held_out": reconstruction_metrics(model, held)})
        save_json(out / "config.json", meta)
        model.train()


def train_autoencoder(data_name: str, out: str | Path, cfg: AutoencoderConfig, *, steps: int = 2000,
                      batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                      resume: bool = False) -> Path:
    """Train on a dataset's train split with the engine; write model.safetensors and config.json (with the scale
    factor and the held-out reconstruction metrics), log.jsonl and loss.png into `out`."""
    check_out(out, resume, what="an autoencoder")  # before the data are read and the network built
    task = AutoencoderTask(data_name, cfg, autoencoder_settings(steps, batch_size, lr, seed))
    return Engine(task, out, resume=resume, progress=progress).fit()


__all__ = ["AutoencoderTask", "autoencoder_settings", "train_autoencoder"]
