"""The noise-aware classifier of classifier guidance as a task of the engine (Dhariwal & Nichol 2021, Sec. 4):
cross-entropy of p(y | x_t, t) with x_t drawn from the diffusion run's process at uniform t; at the end, the
held-out accuracy at a few noise levels goes into config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusa.checkpoint import load_json, save_json
from diffusa.classifier import (
    CLASSIFIER_FORMAT,
    CLASSIFIER_VERSION,
    accuracy_by_noise,
    build_classifier,
    classifier_config,
)
from diffusa.config import TrainConfig
from diffusa.data import run_dataset
from diffusa.engine import Engine
from diffusa.engine.loop import validate_settings
from diffusa.engine.state import check_out
from diffusa.engine.task import StepLoss, Task
from diffusa.errors import DiffusaError
from diffusa.losses import UniformTimeSampler
from diffusa.process import process_from_dict
from diffusa.runs import read_run_meta


def classifier_settings(steps: int = 1500, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.05,
                        seed: int = 0) -> TrainConfig:
    """The classifier's optimisation: AdamW, cosine decay to 0 from the first step, no clipping, no EMA."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=0, lr_decay="cosine", lr_min_ratio=0.0,
                       weight_decay=weight_decay, grad_clip=0.0, ema_decay=0.0, ema_warmup=False, seed=seed,
                       log_every=50, checkpoint_every=500, sample_every=0)


class ClassifierTask(Task):
    """Trains p(y | x_t, t) on the labelled data of a diffusion run, under that run's process."""

    name = "train-classifier"

    def __init__(self, run: str | Path, settings: TrainConfig) -> None:
        self.run, self.settings = str(run), settings
        validate_settings(settings)  # before the data are read (the engine checks again)
        meta = read_run_meta(Path(run))
        self.data_cfg = meta["config"]["data"]
        self.data = run_dataset(self.data_cfg, "train")
        if self.data.labels is None or self.data.num_classes < 2:
            raise DiffusaError(f"{self.data.name} has no labels: a classifier needs labelled data")
        self.process_dict = meta["process"]
        self.process = process_from_dict(self.process_dict)
        self.arch = classifier_config(meta)
        torch.manual_seed(settings.seed)
        self.model = build_classifier(self.arch, self.data.num_classes)
        self.times = UniformTimeSampler(self.process)

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        self.train_module = train_module

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        y = self.data.labels[idx.cpu()].to(x.device)
        t, _ = self.times.sample(len(idx), generator, x.device)
        x_t = self.process.q_sample(x, t, torch.randn(x.shape, generator=generator).to(x.device))
        logits = self.train_module(x_t, self.process.c_noise(t).float().to(x.device))
        losses = F.cross_entropy(logits, y, reduction="none")
        return StepLoss(losses, logs={"accuracy": (logits.argmax(1) == y).float().mean().detach()})

    def meta(self) -> dict[str, Any]:
        s = self.settings
        return {"format": CLASSIFIER_FORMAT, "format_version": CLASSIFIER_VERSION,
                "num_classes": self.data.num_classes, "network": self.arch, "process": self.process_dict,
                "data": self.data_cfg, "steps": s.steps, "batch_size": s.batch_size, "lr": s.lr,
                "weight_decay": s.weight_decay, "seed": s.seed, "trained_for": self.run}

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise DiffusaError(f"cannot resume {out}: it is not a classifier folder (format {meta.get('format')!r})")
        if meta.get("network") != self.arch or meta.get("process") != self.process_dict:
            raise DiffusaError(f"cannot resume {out}: it classifies for another run")

    @torch.no_grad()
    def finish(self, out: Path, model: nn.Module, seconds: float) -> None:
        model.eval()
        test = run_dataset(self.data_cfg, "test", stream="off")  # labelled data: never a folder
        device = next(model.parameters()).device
        acc = accuracy_by_noise(model, self.process, test.x.to(device), test.labels.to(device)) \
            if test.labels is not None else {}
        meta = load_json(out / "config.json")
        meta.update({"held_out_accuracy": acc, "train_seconds": seconds})
        save_json(out / "config.json", meta)
        model.train()


def train_classifier(run: str | Path, out: str | Path, *, steps: int = 1500, batch_size: int = 128,
                     lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0, progress: bool = True,
                     resume: bool = False) -> Path:
    """Train p(y | x_t, t) on the labelled data of `run` with the engine (`diffusa.tasks.classifier`)."""
    check_out(out, resume, what="a classifier")  # before the data are read and the network built
    task = ClassifierTask(run, classifier_settings(steps, batch_size, lr, weight_decay, seed))
    return Engine(task, out, resume=resume, progress=progress).fit()


__all__ = ["ClassifierTask", "classifier_settings", "train_classifier"]
