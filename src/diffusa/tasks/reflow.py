"""Reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast") as a task of the engine: a new flow-matching
run trained on fixed (noise, sample) pairs of a teacher's probability-flow ODE.

The teacher is any diffusa run (any process, any parameterization, unconditional or class-conditional), read as a
Denoiser. Once, before training, `diffusa.reflow.reflow_pairs` draws z ~ N(0, I) and solves the teacher's ODE from
x_T = sigma(1) z with a deterministic diffusa sampler; the pairs are stored with the run (`pairs.safetensors`), so
a resumed run reads them rather than solving again. The student is an ordinary run of the flow process with
velocity prediction, trained with the flow's own objective on the coupling instead of independent noise:

    x_t    = (1 - t) x + t z                     (diffusa's flow: t = 0 the data, t = 1 the noise)
    loss   = || v_theta(x_t, t) - (z - x) ||^2   t ~ U(0, 1), mean over dimensions

which is the paper's eq. 1 on (X_0, X_1) = (z, x) read with s = 1 - t (`diffusa.reflow`). Repeating it on the
student gives the k-rectified flow; config.json's "distill" table records the teacher, its process, the solver,
its steps, the number of pairs and k (the teacher's k + 1; a run trained from data is a 1-rectified flow: its
probability-flow ODE is the rectified flow of the independent coupling, on the linear path for a flow run). The
student starts from the teacher's weights when the teacher is a velocity-predicting flow of the same network (the
paper fine-tunes the previous flow), else from fresh weights of the teacher's architecture.

K-step distillation (the paper's Sec. 2.3, `distill_steps` K >= 1): the same loss on the same pairs, but t only at
the K times of K-step Euler's uniform grid, t in {1, 1 - 1/K, ..., 1/K}. A student that fits v(x_t, t) = z - x at
those points walks each pair's straight line in K Euler steps and lands on its sample; it is no longer a flow at
other times, so k (the reflow count) stays the teacher's and config.json recommends `euler` at K steps. The paper
distils its 2-rectified flow with K = 1 (its best one-step results); it uses LPIPS, we the flow's L2.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from diffusa.checkpoint import load_tensors_and_metadata, save_tensors
from diffusa.config import LossConfig, ProcessConfig, RunConfig, TrainConfig, load_config
from diffusa.data import Dataset
from diffusa.engine import Engine
from diffusa.engine.state import check_out
from diffusa.engine.task import StepLoss
from diffusa.errors import DiffusaError
from diffusa.limits import check_bytes, tensor_bytes
from diffusa.reflow import ODE_SOLVERS, reflow_pairs
from diffusa.runs import init_weights, load_run, read_run_meta
from diffusa.tasks.diffusion import DiffusionTask, as_json, check_student_resume

METHOD = "reflow"
PAIRS = "pairs.safetensors"  # the coupling, in the run folder
PAIRS_FORMAT = "diffusa-reflow-pairs"
INITS = ("auto", "teacher", "fresh")
MAX_PAIRS = 10_000_000
MAX_ODE_STEPS = 10_000
MAX_DISTILL_STEPS = 1000


@dataclass
class ReflowConfig:
    """How the pairs are made and where the new flow starts (recorded in config.json's "distill")."""

    pairs: int = 10_000  # the paper draws 4M for CIFAR-10; a 2-D toy is served by 10,000
    solver: str = "rk4"  # the teacher's ODE solver (the paper: RK45); any deterministic diffusa sampler
    ode_steps: int = 25  # its steps on its default grid (rk4: 4 network evaluations a step)
    init: str = "auto"  # auto: the teacher's weights when it is a velocity flow of the same network | teacher | fresh
    distill_steps: int = 0  # 0: reflow, t ~ U(0, 1); K >= 1: K-step distillation, t on K-step Euler's grid

    def check(self) -> ReflowConfig:
        """Refuse settings that cannot reflow, each in one DiffusaError naming the flag."""
        for name, value, high in (("--pairs", self.pairs, MAX_PAIRS), ("--ode-steps", self.ode_steps,
                                                                         MAX_ODE_STEPS)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise DiffusaError(f"{name} must be an integer in [1, {high}], got {value!r}")
        if self.solver not in ODE_SOLVERS:
            raise DiffusaError(f"--solver {self.solver!r} does not solve the probability-flow ODE deterministically; "
                               f"known: {', '.join(ODE_SOLVERS)}")
        if self.init not in INITS:
            raise DiffusaError(f"unknown init {self.init!r}; known: {', '.join(INITS)}")
        k = self.distill_steps
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_DISTILL_STEPS:
            raise DiffusaError(f"--distill-steps must be an integer in [0, {MAX_DISTILL_STEPS}] (0: reflow), got "
                               f"{k!r}")
        return self

    def table(self) -> dict[str, Any]:
        """The settings as config.json's "distill" table records them (distill_steps only when distilling, so
        flows reflowed before it existed resume)."""
        table = asdict(self)
        if not self.distill_steps:
            del table["distill_steps"]
        return table


def reflow_settings(steps: int = 2000, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
                    max_minutes: float = 0.0, threads: int = 0, sample_n: int = 64) -> TrainConfig:
    """The new flow's optimisation: the engine's defaults for a run (AdamW, warm-up then cosine decay, EMA 0.999
    with warm-up); batch size and learning rate None: the data kind's (DATA_DEFAULTS). The preview draws one Euler
    step, the point of a straight flow. `seed` also seeds the pairs."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 10), seed=seed,
                       max_minutes=max_minutes, sample_every=0, sample_n=sample_n, sampler="euler", sample_steps=1,
                       threads=threads)


def teacher_k(meta: dict[str, Any]) -> int:
    """The reflow count of a run: its "distill" table's k for a reflowed flow, 1 for a run trained from data."""
    table = meta.get("distill")
    if isinstance(table, dict) and table.get("method") == METHOD:
        k = table.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DiffusaError(f"the teacher's config.json has distill.k {k!r}, not a positive integer; the file is "
                               "damaged")
        return k
    return 1


def check_teacher(teacher: str | Path, meta: dict[str, Any]) -> None:
    """Refuse, in one line each, teachers reflow does not support (yet)."""
    cfg = meta["config"]
    if "consistency" in meta:
        raise DiffusaError(f"{teacher} is a consistency model: it has no probability-flow ODE to draw pairs from; "
                           "reflow a diffusion or flow run")
    if "latent" in meta or cfg.get("data", {}).get("latent"):
        raise DiffusaError(f"{teacher} is a latent diffusion run: reflow in a latent space is not supported yet")
    if cfg.get("model", {}).get("conditioning") == "text":
        raise DiffusaError(f"{teacher} is text-conditional: reflow of a text-conditional teacher is not supported "
                           "yet (unconditional and class-conditional teachers are)")
    if cfg.get("data", {}).get("super_resolution") or meta["network"]["config"].get("cond_channels"):
        raise DiffusaError(f"{teacher} is conditioned on an image: reflow of an image-conditioned teacher is not "
                           "supported yet")


def student_config(teacher_meta: dict[str, Any], settings: TrainConfig) -> RunConfig:
    """The new flow's RunConfig: the teacher's data, network and conditioning; the flow process with velocity
    prediction and its own objective (L_simple, unit weight, t ~ U(0, 1)); the reflow's training settings."""
    cfg = load_config(base=teacher_meta["config"])
    cfg.process = ProcessConfig(name="flow")
    cfg.model.prediction = "velocity"
    cfg.model.learned_variance = False
    cfg.loss = LossConfig()
    cfg.train = settings
    return cfg


def pairs_metadata(teacher: str, config: ReflowConfig, seed: int) -> dict[str, str]:
    """What identifies a set of pairs (the safetensors header): a file that differs is made again."""
    return {"format": PAIRS_FORMAT, "teacher": str(teacher), "solver": config.solver,
            "ode_steps": str(config.ode_steps), "pairs": str(config.pairs), "seed": str(seed)}


def read_pairs(path: Path, want: dict[str, str], shape: tuple[int, ...]) -> dict[str, torch.Tensor] | None:
    """The pairs stored at `path` if they are the ones wanted (same teacher, solver, steps, count, seed and shape),
    else None."""
    if not path.is_file():
        return None
    tensors, meta = load_tensors_and_metadata(path)
    noise, samples = tensors.get("noise"), tensors.get("sample")
    if meta != want or noise is None or samples is None:
        return None
    n = int(want["pairs"])
    if tuple(noise.shape) != (n, *shape) or tuple(samples.shape) != (n, *shape):
        return None
    return tensors


class ReflowTask(DiffusionTask):
    """Trains a flow (velocity prediction) on the teacher's fixed (noise, sample) pairs: the flow's objective with
    each example's own noise from the coupling. `pairs_file`: where the pairs are kept (read when they match,
    else made and written); None makes them in memory."""

    name = "reflow"

    def __init__(self, teacher: str | Path, settings: TrainConfig, config: ReflowConfig | None = None,
                 pairs_file: str | Path | None = None, progress: bool = True) -> None:
        from diffusa.shipped import run_path

        self.config = (config or ReflowConfig()).check()
        self.teacher_name = str(teacher)
        check_teacher(teacher, read_run_meta(run_path(teacher)))  # refuses a folder that is not a run, in one line
        weights, meta = init_weights(teacher)
        self.teacher_meta = meta
        self.k = teacher_k(meta) + (0 if self.config.distill_steps else 1)  # distilling does not reflow
        shape = tuple(meta["data_shape"])
        check_bytes(f"--pairs {self.config.pairs} of shape {list(shape)}",
                    tensor_bytes((self.config.pairs, *shape), 3), "lower --pairs")
        num_classes = int(meta["network"]["config"].get("num_classes", 0))
        cfg = student_config(meta, settings)
        self.pairs = self.make_pairs(load_run(run_path(teacher)).denoiser, shape, num_classes, settings.seed,
                                     pairs_file, progress)
        data = Dataset(cfg.data.name, self.pairs["sample"], self.pairs.get("labels"), meta["data_kind"],
                       num_classes)
        # the pairs are in the teacher's model space already: nothing standardises them again; config.json keeps the
        # teacher's data settings (what a run started from this one reads) and its statistics ("standardize"), with
        # which samples go back to the data's units
        standardize, cfg.data.standardize = cfg.data.standardize, "off"
        super().__init__(cfg, data)
        cfg.data.standardize = standardize
        self.noise = self.pairs["noise"]
        self.standardize = meta.get("standardize")
        if self.standardize is not None:
            from diffusa.standardize import Destandardize

            self.decoder = Destandardize(self.standardize)
        same_net = self.kind == meta["network"]["kind"] and as_json(self.spec) == meta["network"]["config"]
        velocity_flow = meta.get("process", {}).get("name") == "flow" and \
            meta["config"]["model"].get("prediction") in ("velocity", "auto")
        self.start = self.config.init if self.config.init != "auto" else \
            "teacher" if same_net and velocity_flow else "fresh"
        if self.start == "teacher" and not same_net:
            raise DiffusaError(f"init teacher: the teacher's network ({meta['network']['kind']}) differs from the new "
                               "flow's (learned variance?); start fresh")
        self.weights = weights if self.start == "teacher" else None
        if self.weights is not None:
            self.init = {"from": self.teacher_name}

    def make_pairs(self, teacher: Any, shape: tuple[int, ...], num_classes: int, seed: int,
                   pairs_file: str | Path | None, progress: bool) -> dict[str, torch.Tensor]:
        """The coupling: read from `pairs_file` when it holds these pairs, else solved once (with a progress bar)
        and written there (by rank 0 under torchrun; every rank solves the same pairs from the same seed)."""
        c = self.config
        want = pairs_metadata(self.teacher_name, c, seed)
        path = Path(pairs_file) if pairs_file is not None else None
        found = read_pairs(path, want, shape) if path is not None else None
        if found is not None:
            return found
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if teacher.net is not None:
            teacher.net.to(device)
        bar = None
        if progress and int(os.environ.get("RANK", "0")) == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.pairs, desc=f"reflow pairs ({c.solver}, {c.ode_steps} steps)", unit="pair",
                       dynamic_ncols=True, mininterval=1.0)
        done = [0]

        def advance(k: int) -> None:
            if bar is not None:
                bar.update(k - done[0])
            done[0] = k

        batch = 2000 if len(shape) == 1 else 250
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)  # not the training steps' seeds
        try:
            pairs = reflow_pairs(teacher, shape, c.pairs, c.solver, c.ode_steps, generator=generator,
                                 num_classes=num_classes, batch_size=batch, device=device, progress=advance)
        finally:
            if bar is not None:
                bar.close()
        if path is not None and int(os.environ.get("RANK", "0")) == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(path, pairs, want)
        return pairs

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        k = self.config.distill_steps
        if k:  # K-step distillation: the K times of the uniform Euler grid, 1, 1 - 1/K, ..., 1/K
            j = torch.randint(1, k + 1, (x.shape[0],), generator=generator)
            t = (j.to(torch.float64) / k).to(x.device)
            w = torch.ones(x.shape[0], device=x.device)
        else:
            t, w = self.time_sampler.sample(x.shape[0], generator, x.device)
        z = self.noise[idx.cpu()].to(x.device)  # the coupling's noise, not a fresh draw
        cond = None
        if self.conditioner is not None:  # label dropout as any class-conditional run (Ho & Salimans 2021)
            cond = self.conditioner.training(idx, generator, x.device, x)
        return StepLoss(self.objective(self.denoiser, x, t, z, cond), w, extra=t)

    def distill_table(self) -> dict[str, Any]:
        """config.json's "distill": what the flow was reflowed from, and how."""
        return {"method": METHOD, "teacher": self.teacher_name, "teacher_process": self.teacher_meta.get("process"),
                "k": self.k, "seed": self.settings.seed, "start": self.start, **self.config.table()}

    def meta(self) -> dict[str, Any]:
        meta = super().meta()
        meta["distill"] = self.distill_table()
        k = self.config.distill_steps
        if k:
            meta["sampling"] = {"sampler": "euler", "steps": k, "spacing": "uniform",
                                "why": f"a {k}-step distillation: trained only at the times of {k}-step Euler's "
                                       "uniform grid"}
        return meta

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        check_student_resume(meta, out, self.distill_table(), self.spec, "reflowed", "this reflow's")


def resumed_reflow(table: dict[str, Any], meta: dict[str, Any]) -> tuple[str, ReflowConfig, TrainConfig]:
    """(teacher, ReflowConfig, training settings) a reflowed run was started with, from its config.json."""
    known = {"pairs", "solver", "ode_steps", "init", "distill_steps"}
    config = ReflowConfig(**{k: v for k, v in table.items() if k in known})
    return table["teacher"], config, load_config(base=meta["config"]).train


def check_same_reflow(out: Path, teacher: str | Path, config: ReflowConfig, settings: TrainConfig) -> None:
    """Refuse to resume `out` with another teacher or other reflow settings than it started with, before any pair
    is solved (the full table is compared again when the engine resumes)."""
    from diffusa.engine.state import never_checkpointed

    if never_checkpointed(out):  # stopped before its first checkpoint: it starts again
        return
    table = read_run_meta(out).get("distill")
    want = {"method": METHOD, "teacher": str(teacher), "seed": settings.seed, **config.table()}
    if not isinstance(table, dict) or any(table.get(k) != v for k, v in as_json(want).items()):
        raise DiffusaError(f"cannot resume {out}: it was reflowed from another teacher or with other settings "
                           f"({table})")


def reflow_engine(teacher: str | Path, out: str | Path, settings: TrainConfig | None = None,
                  config: ReflowConfig | None = None, *, resume: bool = False, progress: bool = True) -> Engine:
    """The engine that reflows `teacher` (a run folder or shipped model) into the flow run folder `out`: the pairs
    are made once into out/pairs.safetensors (a resumed run reads them), then the flow is trained on them."""
    config = (config or ReflowConfig()).check()
    settings = settings or reflow_settings()
    check_out(out, resume, what="a run")  # before the teacher's ODE is solved
    if config.distill_steps:  # the preview draws as the student will be drawn (a copy: the caller's stays)
        settings = replace(settings, sample_steps=config.distill_steps)
    if resume:
        check_same_reflow(Path(out), teacher, config, settings)
    task = ReflowTask(teacher, settings, config, Path(out) / PAIRS, progress)
    from diffusa.engine.state import never_checkpointed

    fresh = not resume or never_checkpointed(Path(out))  # stopped before its first checkpoint: starts again
    return Engine(task, out, resume=not fresh, progress=progress, init=task.weights if fresh else None)


def reflow(teacher: str | Path, out: str | Path, settings: TrainConfig | None = None,
           config: ReflowConfig | None = None, *, resume: bool = False, progress: bool = True) -> Path:
    """Reflow `teacher` into the flow run folder `out` (the Python API behind `diffusa distill --method reflow`);
    sample it in one Euler step with `diffusa.load(out)(sampler="euler", steps=1)`."""
    from diffusa.engine import leave_distributed

    try:
        return reflow_engine(teacher, out, settings, config, resume=resume, progress=progress).fit()
    finally:
        leave_distributed()


__all__ = ["METHOD", "PAIRS", "ReflowConfig", "ReflowTask", "check_teacher", "reflow", "reflow_engine",
           "reflow_settings", "resumed_reflow", "student_config", "teacher_k"]
