"""Consistency training without a teacher: improved CT (Song & Dhariwal 2023, "Improved Techniques for Training
Consistency Models") as a task of the engine, chosen by loss.kind = "ict" (`diffusa train --objective ict`).

The model is an ordinary run's network read as a consistency function (`diffusa.consistency.ConsistencyDenoiser`:
the boundary condition f(x, sigma_min) = x holds exactly). Each step, for data x, noise z and per example a level i
drawn from the discrete log-normal p(sigma_i) (`lognormal_level_probs`) over the N(k) levels of Karras's rho = 7 grid
sigma_min = sigma_0 < ... < sigma_{N-1} = sigma_max (`ict_levels_at`: N doubles from s0 + 1 to s1 + 1):

    loss = lambda(sigma_i) d(f_theta(x + sigma_{i+1} z, sigma_{i+1}), f_theta-(x + sigma_i z, sigma_i))

with the same z at both levels, lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) (`ict_level_weights`), d the
pseudo-Huber distance sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dim) (or squared L2), and theta- = stopgrad(theta):
no EMA teacher (the paper's Sec. 3.2: an EMA teacher biases CT), the target is the network itself without gradient,
under the same dropout draws as the student (the paper's Sec. 3.1). The engine's EMA (train.ema_decay) is only the
evaluation copy saved in model.safetensors, as the paper's 0.99993 EMA.

Consistency training lives on EDM's noise levels: the run's process is "edm" (alpha = 1, x_sigma = x + sigma z), and
its sigma_min and sigma_max (0.002 and 80 by default, the paper's) are the grid's range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusa.config import TrainConfig
from diffusa.consistency import (
    ConsistencyDenoiser,
    ict_level_weights,
    ict_levels_at,
    level_times,
    lognormal_level_probs,
)
from diffusa.engine.task import StepLoss
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.runs import make_denoiser
from diffusa.tasks.consistency import DISTANCES, LEVELS_MAX, CurriculumStep, consistency_distance
from diffusa.tasks.diffusion import DiffusionTask

ICT = "ict"  # loss.kind of consistency training


def ict_loss(student: Denoiser, target: Denoiser, x0: torch.Tensor, times: torch.Tensor, i: torch.Tensor,
             z: torch.Tensor, cond: Any = None, distance: str = "pseudo_huber") -> torch.Tensor:
    """Per-example, unweighted consistency training loss (Song & Dhariwal 2023, Sec. 3.2: theta- = stopgrad theta):
    d(f_student(x_{i+1}, t_{i+1}), f_target(x_i, t_i)), x_j = q_sample(x0, t_j, z) (x0 + sigma_j z on EDM) with the
    same z at both levels. `times` increasing, `i` in 0 .. len(times) - 2. The target gets no gradient and sees
    the global random state the student sees (the same dropout masks)."""
    proc = student.process
    t_hi, t_lo = times[i + 1], times[i]
    devices = [x0.device] if x0.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # the state is restored for the student's pass
        goal = target(proc.q_sample(x0, t_lo, z), t_lo, cond).x0
    return consistency_distance(student(proc.q_sample(x0, t_hi, z), t_hi, cond).x0, goal, distance)


def check_ict(cfg: Any) -> None:
    """Refuse a config consistency training cannot run, each in one DiffusaError naming the key."""
    c = cfg.loss.ict
    if cfg.process.name != "edm":
        raise DiffusaError(f"consistency training (loss.kind \"ict\") lives on EDM's noise levels: train it with "
                           f"--process edm (this config's process is {cfg.process.name})")
    if cfg.model.learned_variance:
        raise DiffusaError("consistency training learns a consistency function: model.learned_variance does not "
                           "apply")
    if cfg.data.latent:
        raise DiffusaError("consistency training in a latent space is not supported yet; train on the data "
                           "(drop --latent / data.latent)")
    for key, value in (("s0", c.s0), ("s1", c.s1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < LEVELS_MAX:
            raise DiffusaError(f"loss.ict.{key} must be an integer in [1, {LEVELS_MAX - 1}], got {value!r}")
    if c.s0 > c.s1:
        raise DiffusaError(f"loss.ict.s0 ({c.s0}) exceeds loss.ict.s1 ({c.s1}): N(k) grows from s0 + 1 to s1 + 1 "
                           "levels")
    if not c.p_std > 0:
        raise DiffusaError(f"loss.ict.p_std must be a number > 0, got {c.p_std!r}")
    if c.distance not in DISTANCES:
        raise DiffusaError(f"unknown loss.ict.distance {c.distance!r}; known: {', '.join(DISTANCES)}")
    tc = cfg.train
    if tc.sampler == "consistency" and tc.sample_steps > c.s1:
        raise DiffusaError(f"train.sample_steps {tc.sample_steps} exceeds the {c.s1} steps of this consistency "
                           f"model (loss.ict.s1)")


class ConsistencyTrainingTask(CurriculumStep, DiffusionTask):
    """Improved consistency training (Song & Dhariwal 2023) of a run's network from data alone; the run's data,
    network and conditioning are the diffusion task's, the loss is `ict_loss` weighted by lambda(sigma_i)."""

    STEP_KEY = "ict_step"

    name = "ict"

    def __init__(self, cfg: Any, data: Any = None) -> None:
        check_ict(cfg)
        tc = cfg.train  # previews draw one consistency step unless the config names another sampler
        if tc.sampler == TrainConfig.sampler and tc.sample_steps == TrainConfig.sample_steps:
            tc.sampler, tc.sample_steps = "consistency", 1
        super().__init__(cfg, data)
        self.sigma_min, self.sigma_max = self.process.sigma_min, self.process.sigma_max
        self.levels = cfg.loss.ict.s1 + 1  # the last grid's N: multistep sampling picks its times among them
        self.t_min = float(level_times(self.process, self.levels, self.sigma_min, self.sigma_max)[0])
        self._grids: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.k = 0  # steps taken: N(k)'s k

    def build_loss(self) -> None:
        self.time_sampler = self.objective = None  # the levels and the loss are consistency training's

    def consistency_table(self) -> dict[str, Any]:
        """config.json's "consistency": what `load_run` reads the network as (ConsistencyDenoiser)."""
        return {"t_min": self.t_min, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "levels": self.levels}

    def consistency(self, base: Denoiser) -> ConsistencyDenoiser:
        return ConsistencyDenoiser.from_table(base, self.consistency_table())

    def grid(self, levels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(times, p(sigma_i), lambda(sigma_i)) of the grid of `levels` levels, on the CPU, float64."""
        if levels not in self._grids:
            times = level_times(self.process, levels, self.sigma_min, self.sigma_max)
            a, s = self.process.alpha_sigma(times)
            sigmas = s / a
            c = self.cfg.loss.ict
            self._grids[levels] = (times, lognormal_level_probs(sigmas, c.p_mean, c.p_std),
                                   ict_level_weights(sigmas))
        return self._grids[levels]

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        self.device = device
        # training reads f unclipped (image=False); the previews clip as sampling does. The target is the network
        # itself (not DDP-wrapped: it runs without gradient)
        self.student = self.consistency(make_denoiser(train_module, self.process, self.cfg, False))
        self.target = self.consistency(make_denoiser(self.model, self.process, self.cfg, False))
        self.denoiser = self.student
        averaged = ema if ema is not None else self.model
        self.ema_denoiser = self.consistency(make_denoiser(averaged, self.process, self.cfg, self.image))

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        c = self.cfg.loss.ict
        levels = ict_levels_at(self.k, self.settings.steps, c.s0, c.s1)
        times, probs, weights = self.grid(levels)
        i = torch.multinomial(probs, x.shape[0], replacement=True, generator=generator)
        z = torch.randn(x.shape, generator=generator).to(x.device)
        cond = None
        if self.conditioner is not None:  # both levels see the same conditioning, dropped labels included
            cond = self.conditioner.training(idx, generator, x.device, x)
        losses = ict_loss(self.student, self.target, x, times.to(x.device), i.to(x.device), z, cond, c.distance)
        return StepLoss(losses, weights[i].to(x.device, torch.float32),
                        logs={"levels": float(levels), "distance": losses.detach().mean()})

    def meta(self) -> dict[str, Any]:
        meta = super().meta()
        meta["consistency"] = self.consistency_table()
        # a draw's default (pipelines.sampling): one step, the point of a consistency model
        meta["sampling"] = {"sampler": "consistency", "steps": 1,
                            "why": "consistency training: one network evaluation (Song & Dhariwal 2023); compare "
                                   f"2 to {self.levels - 1} steps with diffusa eval"}
        return meta

    def check_resume(self, meta: dict[str, Any], out: Any) -> None:
        super().check_resume(meta, out)
        if meta.get("consistency") != self.consistency_table():
            raise DiffusaError(f"cannot resume {out}: its consistency table ({meta.get('consistency')}) differs from "
                               "this config's")


__all__ = ["ICT", "ConsistencyTrainingTask", "check_ict", "ict_loss"]
