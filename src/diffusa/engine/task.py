"""What a kind of training supplies to the engine: its modules, a per-example loss, and its extra state.

A new kind of training (distillation, LoRA fine-tuning, a new modality) is a new `Task` subclass in a file of its
own under `diffusa.tasks`; the loop (`diffusa.engine.Engine`) never changes for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusa.config import TrainConfig


@dataclass
class StepLoss:
    """One batch's losses: per example, optional per-example weights (importance sampling), extra numbers to log."""

    losses: torch.Tensor
    weights: torch.Tensor | None = None
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    extra: Any = None  # whatever `after_step` needs (e.g. the sampled times)


class Task:
    """Base class: override `loss`; the rest has working defaults.

    Attributes a task sets in its constructor: `model` (the module optimised and EMA-averaged), `data` (a dataset
    with `len`, `loader(...)` and `get(idx)`), `settings` (a `TrainConfig`) and `name` (the progress bar's label).
    """

    name: str = "train"
    shardable: bool = False  # `loss` may run on slices of a batch in parallel threads (diffusa.engine.shards)
    fits_budget: bool = True  # nothing reads settings.steps before the warm-up ends, so a time budget
    # (diffusa.engine.budget) may fix them then
    model: nn.Module
    data: Any
    settings: TrainConfig

    def parameters(self) -> Iterable[nn.Parameter]:
        """What the optimizer updates."""
        return self.model.parameters()

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        """Called once by the engine: the module to train through (DDP-wrapped under torchrun) and the EMA copy
        (None when the task keeps no EMA)."""

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        """Per-example losses of examples `idx` (data `x`, on the device); all randomness from `generator`."""
        raise NotImplementedError

    def after_step(self, result: StepLoss) -> None:
        """Runs with the optimizer step, atomically with respect to Ctrl-C (e.g. a loss-aware time sampler's
        history)."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Extra training state to checkpoint: tensors (safetensors) and JSON-able values."""
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Inverse of `state`."""

    def meta(self) -> dict[str, Any]:
        """The content of config.json, written when training starts."""
        raise NotImplementedError

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        """Refuse to resume a folder whose config.json describes another model (DiffusaError)."""

    def preview(self, out: Path, name: str) -> None:
        """Write a picture of the model now (samples, reconstructions) as out/samples/NAME.png; optional."""

    def finish(self, out: Path, model: nn.Module, seconds: float) -> None:
        """After the last step: final measurements into config.json, with `model` the weights that were saved and
        `seconds` the training time (every segment of a resumed run)."""


__all__ = ["StepLoss", "Task"]
