"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 2) as a task of the engine.

The teacher is any diffusa run (any process, any parameterization, conditional or not), read as a Denoiser. The
student is the teacher's network, started from its weights, read as a consistency function
(`diffusa.consistency.ConsistencyDenoiser`). Each step, for data x and per example a level n ~ U{0, ..., N - 2}
of Karras's rho = 7 grid of N levels sh_0 = sh_min < ... < sh_{N-1} = sh_max (in sigma_hat = sigma / alpha):

    x_{n+1}     = alpha (x + sh_{n+1} z)                        (q_sample at t_{n+1})
    x_hat_n     = one step of the teacher's ODE solver from t_{n+1} to t_n (any deterministic diffusa sampler
                  over the two-point grid [t_{n+1}, t_n]: Heun by default, as the paper)
    loss        = d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x_hat_n, t_n))

with theta- the target network, an EMA of the student at rate mu: the engine's EMA (train.ema_decay = mu, without
warm-up), updated after each optimizer step as Algorithm 2's last line. Its weights are the ones saved, and
sampled. d is the squared L2 distance (mean over dimensions) or the pseudo-Huber distance
sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, "Improved techniques"). N is fixed, or
grows as N(k) (`diffusa.consistency.levels_at`) from `levels_start` to `levels`.

The student's run folder is an ordinary run: the teacher's config.json with the distillation's training settings,
plus "consistency" (what `load_run` needs to read the network as a consistency function) and "distill" (how it was
made). `diffusa sample` and `diffusa.load` then draw with the "consistency" sampler (Algorithm 1).

Guided distillation (`guidance_range`; Meng et al. 2023, Luo et al. 2023's latent consistency models, eq. 9): for a
class- or text-conditional teacher, each example draws w ~ U[w_min, w_max]; the teacher's ODE step uses the
classifier-free guided denoiser at that w (`diffusa.guidance.ClassifierFreeGuided`, one batched call, each example's
w read from cond.guidance), and the student and target networks receive w as an input (the U-Net's zero-initialised
guidance embedding), so that the student draws with guidance in one network call per step. The range is recorded as
config.json's "guidance" (`diffusa.runs.GuidanceRange`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusa.config import TrainConfig, load_config
from diffusa.consistency import ConsistencyDenoiser, level_times, levels_at
from diffusa.engine import Engine
from diffusa.engine.loop import load_init
from diffusa.engine.state import check_out
from diffusa.engine.task import StepLoss
from diffusa.errors import DiffusaError
from diffusa.guidance import GuidanceInput, classifier_free
from diffusa.nets import network_kind
from diffusa.prediction import Denoiser
from diffusa.runs import GuidanceRange, init_weights, load_run, make_denoiser
from diffusa.samplers import default_karras_grid, get_sampler
from diffusa.tasks.diffusion import DiffusionTask, as_json, check_student_resume

METHODS = ("cd",)  # consistency distillation (reflow is `diffusa.tasks.reflow`, iCT `diffusa.tasks.ict`)
# deterministic samplers whose one step over [t, s] is an ODE step (the multistep ones take a first-order step)
SOLVERS = ("heun", "euler", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ode_euler", "ode_heun", "rk4")
DISTANCES = ("l2", "pseudo_huber")
HUBER_C = 0.00054  # c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, Sec. 3.3)
LEVELS_MAX = 10_000


@dataclass
class DistillConfig:
    """How a consistency model is distilled (recorded as config.json's "distill")."""

    method: str = "cd"
    levels: int = 18  # N: Song et al. 2023 distil CIFAR-10 on 18 levels, ImageNet 64 and LSUN on 40
    levels_start: int | None = None  # s0 of N(k), growing to `levels`; None: N fixed (distillation's)
    mu: float = 0.95  # the target network's EMA rate (Song et al. 2023, Table 3: 0.95 for CD)
    solver: str = "heun"  # the teacher's ODE step
    distance: str = "l2"  # l2 | pseudo_huber
    # (w_min, w_max): guided distillation, w ~ U[w_min, w_max] an input of the student; None: unguided
    guidance_range: tuple[float, float] | None = None

    def check(self) -> DistillConfig:
        """Refuse settings that cannot distil, each in one DiffusaError naming the flag."""
        if self.method not in METHODS:
            raise DiffusaError(f"unknown distillation method {self.method!r}; known: {', '.join(METHODS)}")
        for name, value, low in (("--levels", self.levels, 2), ("--levels-start", self.levels_start, 2)):
            if value is None and name == "--levels-start":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= LEVELS_MAX:
                raise DiffusaError(f"{name} must be an integer in [{low}, {LEVELS_MAX}], got {value!r}")
        if self.levels_start is not None and self.levels_start > self.levels:
            raise DiffusaError(f"--levels-start {self.levels_start} exceeds --levels {self.levels}: N(k) grows from "
                               "the first to the second")
        if isinstance(self.mu, bool) or not isinstance(self.mu, (int, float)) or not 0 <= self.mu < 1:
            raise DiffusaError(f"--mu must be a number in [0, 1), got {self.mu!r}")
        if self.solver not in SOLVERS:
            raise DiffusaError(f"--solver {self.solver!r} is not a deterministic one-step ODE solver; known: "
                               f"{', '.join(SOLVERS)}")
        if self.distance not in DISTANCES:
            raise DiffusaError(f"unknown distance {self.distance!r}; known: {', '.join(DISTANCES)}")
        if self.guidance_range is not None:
            rng = GuidanceRange.of(self.guidance_range, "--guidance-range")
            self.guidance_range = (rng.low, rng.high)
        return self

    @property
    def guidance(self) -> GuidanceRange | None:
        """The guidance scales of a guided distillation, None for an unguided one."""
        return None if self.guidance_range is None else GuidanceRange.of(self.guidance_range)


def distill_settings(steps: int = 2000, batch_size: int | None = None, lr: float = 4e-4, mu: float = 0.95,
                     seed: int = 0, max_minutes: float = 0.0, threads: int = 0, sample_n: int = 64) -> TrainConfig:
    """The student's optimisation: Adam(W) at a constant rate without weight decay (Song et al. 2023, Table 3:
    4e-4 for CD on CIFAR-10), a short warm-up; the engine's EMA is the target network at rate mu, without
    warm-up; previews with one consistency step. batch_size None: the data kind's default (DATA_DEFAULTS)."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 10), lr_decay="constant",
                       weight_decay=0.0, grad_clip=1.0, ema_decay=mu, ema_warmup=False, seed=seed,
                       max_minutes=max_minutes, log_every=25, checkpoint_every=200, sample_every=0,
                       sample_n=sample_n, sampler="consistency", sample_steps=1, threads=threads)


def consistency_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Per-example distance: the squared L2 distance averaged over dimensions ("l2"), or pseudo-Huber
    sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(dim) ("pseudo_huber")."""
    sq = (a - b).pow(2).flatten(1)
    if kind == "l2":
        return sq.mean(1)
    if kind == "pseudo_huber":
        c = HUBER_C * math.sqrt(sq.shape[1])
        return (sq.sum(1) + c**2).sqrt() - c
    raise DiffusaError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")


def teacher_step(teacher: Denoiser, x: torch.Tensor, times: torch.Tensor, n: torch.Tensor, cond: Any = None,
                 solver: str = "heun") -> torch.Tensor:
    """x_hat_n: one step of `solver` from times[n + 1] to times[n] for each example, through the samplers'
    own step code (a two-point grid per level; the examples at one level go together)."""
    step = get_sampler(solver)
    out = torch.empty_like(x)
    grid_times = times.detach().to("cpu", torch.float64)
    for m in torch.unique(n).tolist():
        sel = (n == m).nonzero().squeeze(1)
        grid = torch.stack([grid_times[m + 1], grid_times[m]])
        out[sel] = step(teacher, x[sel], grid, cond=None if cond is None else cond[sel]).to(x.dtype)
    return out


def distillation_loss(student: Denoiser, target: Denoiser, teacher: Denoiser, x0: torch.Tensor,
                      times: torch.Tensor, n: torch.Tensor, z: torch.Tensor, cond: Any = None, solver: str = "heun",
                      distance: str = "l2") -> torch.Tensor:
    """Per-example consistency distillation loss (Song et al. 2023, Algorithm 2, lambda = 1):
    d(f_student(x_{n+1}, t_{n+1}), f_target(x_hat_n, t_n)) with x_{n+1} = alpha x0 + sigma z at t_{n+1} =
    times[n + 1] and x_hat_n the teacher's ODE step to t_n = times[n] (`teacher_step`). `times` increasing,
    `n` in 0 .. len(times) - 2; the target and the teacher get no gradient."""
    proc = teacher.process
    t_hi, t_lo = times[n + 1], times[n]
    x_hi = proc.q_sample(x0, t_hi, z)  # x_hat = x0 + sh_{n+1} z in the scaled variables, times alpha
    with torch.no_grad():
        x_lo = teacher_step(teacher, x_hi, times, n, cond, solver)
        goal = target(x_lo, t_lo, cond).x0
    return consistency_distance(student(x_hi, t_hi, cond).x0, goal, distance)


class CurriculumStep:
    """The step count k of a discretisation curriculum N(k) (Song et al. 2023; Song & Dhariwal 2023), counted after
    each step and kept with the checkpoint under STEP_KEY, so that a resumed run continues its schedule."""

    STEP_KEY = "distill_step"
    fits_budget = False  # N(k) reads the step count from the first step
    k: int

    def after_step(self, result: StepLoss) -> None:
        self.k += 1

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {self.STEP_KEY: self.k}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        self.k = int(values.get(self.STEP_KEY, 0))


class ConsistencyTask(CurriculumStep, DiffusionTask):
    """Distils a consistency model from a teacher run: the teacher's data, process, network and conditioning; the
    loss of `distillation_loss`; the target network is the engine's EMA (rate mu). Guided (config.guidance_range):
    the teacher is classifier-free guided at each example's w, and the student's network takes w as an input."""

    name = "distill"
    guidance_input = True

    def __init__(self, teacher: str | Path, settings: TrainConfig, config: DistillConfig | None = None,
                 data: Any = None) -> None:
        from diffusa.shipped import run_path

        self.config = (config or DistillConfig()).check()
        if settings.ema_decay != self.config.mu or settings.ema_warmup:
            raise DiffusaError(f"the target network is the engine's EMA: train.ema_decay must be mu "
                               f"({self.config.mu}) and train.ema_warmup off")
        self.teacher_name = str(teacher)
        self.weights, meta = init_weights(teacher)  # refuses a folder that is not a run, in one line
        if "consistency" in meta:
            raise DiffusaError(f"{teacher} is a consistency model already; distil from a diffusion run")
        cfg = load_config(base=meta["config"])
        cfg.train = settings
        self.guidance = self.config.guidance
        teacher_spec = meta["network"]["config"]
        if self.guidance is not None:  # the student's network: the teacher's with the guidance scale as an input
            kind = network_kind(meta["network"]["kind"])
            try:
                teacher_spec = as_json(kind.guidance_input(teacher_spec))
            except DiffusaError as e:
                raise DiffusaError(f"{e}; guided distillation needs a U-Net teacher") from None
            cfg.model.net = {**cfg.model.net, "guidance_embed": True}
        super().__init__(cfg, data)
        if self.kind != meta["network"]["kind"] or as_json(self.spec) != teacher_spec:
            raise DiffusaError(f"the teacher's network ({meta['network']['kind']}) cannot be rebuilt from its "
                               "config by this diffusa; retrain the teacher")
        self.init = {"from": self.teacher_name}
        run = load_run(run_path(teacher))
        self.teacher = self.guided_teacher = run.denoiser
        if self.teacher.net is not None:
            self.teacher.net.requires_grad_(False)
        if self.guidance is not None:
            if self.conditioner is None or self.conditioner.mode not in ("class", "text"):
                raise DiffusaError(f"--guidance-range distils classifier-free guidance, which needs a class- or "
                                   f"text-conditional teacher; {teacher} is unconditional")
            self.guided_teacher = classifier_free(self.teacher, None, run.null_cond())  # each example's own w
        # the levels: Karras's grid inside the teacher's trained noise levels, the range Heun samples it over
        ends = default_karras_grid(self.teacher, 2)[:2]
        a, s = self.process.alpha_sigma(ends)
        self.sigma_max, self.sigma_min = (s / a).tolist()
        self.t_min = float(level_times(self.process, self.config.levels, self.sigma_min, self.sigma_max)[0])
        self._times: dict[int, torch.Tensor] = {}
        self.k = 0  # steps taken: N(k)'s k

    def consistency_table(self) -> dict[str, Any]:
        """config.json's "consistency": what `load_run` reads the student's network as (ConsistencyDenoiser)."""
        return {"t_min": self.t_min, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "levels": self.config.levels}

    def consistency(self, base: Denoiser) -> ConsistencyDenoiser:
        return ConsistencyDenoiser.from_table(base, self.consistency_table())

    def start_from_teacher(self) -> None:
        """Load the teacher's weights into the student; a guided student's guidance embedding, which the teacher
        lacks, keeps its zero initialisation, so the student starts as the teacher's conditional network."""
        new = [k for k in self.model.state_dict() if "guidance_emb" in k.split(".")] if self.guidance else []
        load_init(self.model, self.weights, new)

    def times(self, levels: int, device: torch.device) -> torch.Tensor:
        if levels not in self._times:
            self._times[levels] = level_times(self.process, levels, self.sigma_min, self.sigma_max)
        return self._times[levels].to(device)

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        self.device = device
        if self.teacher.net is not None:
            self.teacher.net.to(device)
        # training reads f unclipped (image=False); the previews clip as sampling does
        self.student = self.consistency(make_denoiser(train_module, self.process, self.cfg, False))
        averaged = ema if ema is not None else self.model  # mu = 0: the target is the student, without gradient
        self.target = self.consistency(make_denoiser(averaged, self.process, self.cfg, False))
        self.denoiser = self.student
        self.ema_denoiser = self.consistency(make_denoiser(averaged, self.process, self.cfg, self.image))
        if self.guidance is not None:  # previews at the default scale
            self.ema_denoiser = GuidanceInput(self.ema_denoiser, self.guidance.default)

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        c = self.config
        levels = levels_at(self.k, self.settings.steps, c.levels, c.levels_start)
        times = self.times(levels, x.device)
        n = torch.randint(0, levels - 1, (x.shape[0],), generator=generator).to(x.device)
        z = torch.randn(x.shape, generator=generator).to(x.device)
        cond = None
        if self.conditioner is not None:  # the teacher is asked with the same conditioning, dropped labels included
            cond = self.conditioner.training(idx, generator, x.device, x)
        if self.guidance is not None:  # w ~ U[w_min, w_max] per example: the student's input, the teacher's scale
            cond = cond.replace(guidance=self.guidance.sample(x.shape[0], generator).to(x.device))
        losses = distillation_loss(self.student, self.target, self.guided_teacher, x, times, n, z, cond, c.solver,
                                   c.distance)
        return StepLoss(losses, logs={"levels": float(levels)} if c.levels_start is not None else {})

    def distill_table(self) -> dict[str, Any]:
        """config.json's "distill": the teacher and the settings of `DistillConfig` (guidance_range only when
        guided, so that unguided students made before it existed resume)."""
        settings = asdict(self.config)
        if settings["guidance_range"] is None:
            del settings["guidance_range"]
        return {"teacher": self.teacher_name, **settings}

    def meta(self) -> dict[str, Any]:
        meta = super().meta()
        meta["consistency"] = self.consistency_table()
        meta["distill"] = self.distill_table()
        if self.guidance is not None:  # what a draw asks the student (pipelines.request): the range, its default
            meta["guidance"] = self.guidance.table()
        # a draw's default (pipelines.sampling): one step, the point of a consistency model; 2..N-1 when asked
        meta["sampling"] = {"sampler": "consistency", "steps": 1,
                            "why": "consistency distillation: one network evaluation (Song et al. 2023, Algorithm 1); "
                                   "compare 2 to N-1 steps with diffusa eval"}
        return meta

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        check_student_resume(meta, out, self.distill_table(), self.spec, "distilled", "the teacher's")


def resumed_settings(out: str | Path) -> tuple[str, DistillConfig, TrainConfig]:
    """(teacher, DistillConfig, training settings) a student folder was started with, to resume it."""
    from diffusa.runs import read_run_meta

    check_out(out, resume=True)  # a folder with nothing to resume is refused as `train --resume` refuses it
    meta = read_run_meta(Path(out))
    table = meta.get("distill")
    if not isinstance(table, dict) or not isinstance(table.get("teacher"), str):
        raise DiffusaError(f"{out} is not a distilled student (its config.json has no distill table); a diffusion "
                           "run resumes with `diffusa train --resume`")
    known = {f.name for f in fields(DistillConfig)}
    config = DistillConfig(**{k: v for k, v in table.items() if k in known})
    return table["teacher"], config, load_config(base=meta["config"]).train


def distill_engine(teacher: str | Path, out: str | Path, settings: TrainConfig | None = None,
                   config: DistillConfig | None = None, *, resume: bool = False, progress: bool = True,
                   data: Any = None) -> Engine:
    """The engine that distils `teacher` (a run folder or shipped model) into the student run folder `out`; the
    student starts from the teacher's weights (a resumed one from its checkpoint)."""
    config = config or DistillConfig()
    settings = settings or distill_settings(mu=config.mu)
    check_out(out, resume, what="a run")  # before the data are read and the networks built
    task = ConsistencyTask(teacher, settings, config, data)
    task.start_from_teacher()  # a resumed student's checkpoint then replaces the weights
    return Engine(task, out, resume=resume, progress=progress)


def distill(teacher: str | Path, out: str | Path, settings: TrainConfig | None = None,
            config: DistillConfig | None = None, *, resume: bool = False, progress: bool = True) -> Path:
    """Distil a consistency model from `teacher` into the run folder `out` (the Python API behind
    `diffusa distill`); sample it with `diffusa.load(out)(steps=1)`."""
    from diffusa.engine import leave_distributed

    try:
        return distill_engine(teacher, out, settings, config, resume=resume, progress=progress).fit()
    finally:
        leave_distributed()


__all__ = ["DISTANCES", "METHODS", "SOLVERS", "ConsistencyTask", "DistillConfig", "consistency_distance", "distill",
           "distill_engine", "distill_settings", "distillation_loss", "resumed_settings", "teacher_step"]
