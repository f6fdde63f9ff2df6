"""Objectives (per-example losses) and time samplers (DESIGN.md: Objective, TimeSampler).

An objective is called as `objective(denoiser, x0, t, noise, cond) -> (B,)` per-example losses; a time
sampler has `sample(batch, generator, device) -> (t, weight)` and `update(t, losses)`. The trainer
minimises mean(weight * losses) and passes the unweighted per-example losses back to `update`.

`build_objective` and `build_time_sampler` turn a run's LossConfig into these objects; each kind is one
entry in OBJECTIVES / TIME_SAMPLERS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusa.config import EDM_SIGMA_DATA, default_p_mean
from diffusa.errors import DiffusaError
from diffusa.losses.importance import ImportanceTimeSampler
from diffusa.losses.simple import WEIGHTINGS, SimpleLoss
from diffusa.losses.time_samplers import LogNormalTimeSampler, UniformTimeSampler
from diffusa.losses.vlb import HybridLoss, VLBLoss
from diffusa.process import Process


def _simple(cfg: Any, process: Process) -> SimpleLoss:
    return SimpleLoss(cfg.norm, cfg.weighting, cfg.gamma)


def _uniform(cfg: Any, process: Process) -> UniformTimeSampler:
    return UniformTimeSampler(process)


def _lognormal(cfg: Any, process: Process) -> LogNormalTimeSampler:
    p_mean = default_p_mean(getattr(process, "sigma_data", EDM_SIGMA_DATA)) if cfg.p_mean is None else cfg.p_mean
    return LogNormalTimeSampler(process, p_mean, cfg.p_std)


def _vlb(cfg: Any, process: Process) -> VLBLoss:
    return VLBLoss(process)


def _hybrid(cfg: Any, process: Process) -> HybridLoss:
    return HybridLoss(process, _simple(cfg, process), cfg.vlb_weight)


def _importance(cfg: Any, process: Process) -> ImportanceTimeSampler:
    return ImportanceTimeSampler(process)


# kind -> factory(loss_config, process)
OBJECTIVES: dict[str, Callable[[Any, Process], Any]] = {"simple": _simple, "vlb": _vlb, "hybrid": _hybrid}
TIME_SAMPLERS: dict[str, Callable[[Any, Process], Any]] = {"uniform": _uniform, "lognormal": _lognormal,
                                                         "importance": _importance}


def build_objective(cfg: Any, process: Process) -> Any:
    """The objective named by `cfg.kind` (a LossConfig)."""
    if cfg.kind not in OBJECTIVES:
        raise DiffusaError(f"unknown loss kind {cfg.kind!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.kind](cfg, process)


def build_time_sampler(cfg: Any, process: Process) -> Any:
    """The time sampler named by `cfg.time_sampler` (a LossConfig)."""
    if cfg.time_sampler not in TIME_SAMPLERS:
        raise DiffusaError(f"unknown time sampler {cfg.time_sampler!r}; known: {', '.join(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[cfg.time_sampler](cfg, process)


__all__ = ["OBJECTIVES", "TIME_SAMPLERS", "WEIGHTINGS", "HybridLoss", "ImportanceTimeSampler", "LogNormalTimeSampler",
           "SimpleLoss", "UniformTimeSampler", "VLBLoss", "build_objective", "build_time_sampler"]
