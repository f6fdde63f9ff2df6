"""Train a run: build the task from a config (`diffusa.tasks.diffusion`, or `diffusa.tasks.ict` for consistency
training), fit it on the one engine (`diffusa.engine`). `diffusa train` and the benchmarks call these."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from diffusa.config import RunConfig
from diffusa.engine import Engine, leave_distributed
from diffusa.engine.state import check_out
from diffusa.errors import DiffusaError
from diffusa.runs import init_weights
from diffusa.tasks.diffusion import DiffusionTask


def init_base(spec: str | Path) -> dict[str, Any]:
    """The config a fine-tuned run starts from (`--init`): the base run's process, model, loss and latent space;
    its data and training settings are the new run's own (defaults, then the user's flags)."""
    _, meta = init_weights(spec)
    cfg = meta["config"]
    return {"process": cfg["process"], "model": cfg["model"], "loss": cfg["loss"],
            "data": {"latent": cfg["data"].get("latent")}}


def training_task(cfg: RunConfig, data: Any = None) -> DiffusionTask:
    """The task a config trains: consistency training (`diffusa.tasks.ict`) when loss.kind is "ict", else
    diffusion."""
    from diffusa.losses import OBJECTIVES
    from diffusa.tasks.ict import ICT, ConsistencyTrainingTask

    if cfg.loss.kind not in (*OBJECTIVES, ICT):
        raise DiffusaError(f"unknown loss kind {cfg.loss.kind!r}; known: {', '.join((*OBJECTIVES, ICT))}")
    return ConsistencyTrainingTask(cfg, data) if cfg.loss.kind == ICT else DiffusionTask(cfg, data)


def diffusion_engine(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                     data: Any = None, init: str | Path | None = None) -> Engine:
    """The engine that trains a diffusion run folder from `cfg`. `init`: a run folder or shipped model whose EMA
    weights the network starts from (a new run, with its own optimizer state)."""
    check_out(out, resume, init)  # before the data are read (and encoded) and the network built
    weights = None
    task = training_task(cfg, data)
    if init is not None:
        weights, meta = init_weights(init)
        if meta["network"]["kind"] != task.kind:
            raise DiffusaError(f"--init {init}: its network is a {meta['network']['kind']}, this run's a {task.kind}")
        task.init = {"from": str(init)}
    return Engine(task, out, resume=resume, progress=progress, init=weights)


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          init: str | Path | None = None) -> Path:
    """Train a run folder from a config (the Python API behind `diffusa train`)."""
    try:
        return diffusion_engine(cfg, out, resume=resume, progress=progress, init=init).fit()
    finally:
        leave_distributed()


def snapshots(steps: Collection[int]) -> Callable[[Engine], None]:
    """An `on_step` callback that keeps the averaged weights at the given steps in out/snapshots/step_N.safetensors
    with the training seconds so far (`Engine.save_snapshot`): quality against training time from one run, as LDM's
    training-progress comparisons (Rombach et al. 2022, Fig. 6)."""
    steps = set(steps)

    def on_step(engine: Engine) -> None:
        if engine.step in steps:
            engine.save_snapshot()

    return on_step


def last_log(run: str | Path) -> dict:
    """The last record of a run's log.jsonl (step, loss, elapsed_s, ...); {} when it has none."""
    path = Path(run) / "log.jsonl"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


__all__ = ["diffusion_engine", "init_base", "init_weights", "last_log", "snapshots", "train", "training_task"]
