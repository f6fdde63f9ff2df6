"""The one training loop: AdamW with warm-up and decay, gradient clipping, EMA, mixed precision, the progress bar,
the JSONL log and loss-curve PNG, atomic checkpoints and exact resume, Ctrl-C, time limits, periodic previews;
unchanged under `torchrun` (DDP, gloo on CPU). A `Task` supplies what differs: its modules and its loss.

Randomness is a function of (seed, step, rank) alone, and the data order of (seed, epoch), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffusa.checkpoint import (
    load_json,
    load_state_dict_strict,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    remove_stray_temporaries,
    save_json,
    save_tensors,
)
from diffusa.config import TrainConfig, check_range
from diffusa.engine.budget import UNFITTED_STEPS, Fit, estimate, fit_step, fit_steps, fitted_steps
from diffusa.engine.shards import Shards, auto_shards
from diffusa.engine.state import (
    STATE,
    check_out,
    never_checkpointed,
    publish,
    read_checkpoint,
    trim_log,
    write_checkpoint,
)
from diffusa.engine.task import Task
from diffusa.errors import DiffusaError
from diffusa.threads import MAX_THREADS
from diffusa.viz import save_loss_curve

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LR_DECAYS = ("constant", "cosine")


@dataclass
class DistInfo:
    """Where this process stands in a torchrun job (world 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment; nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave_distributed() -> None:
    """Leave the process group before exit: gloo's threads torn down at interpreter exit can abort a rank
    ("terminate called without an active exception") after training has finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


def lr_at(tc: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to lr_min_ratio * lr at the last step (Loshchilov & Hutter
    2017's cosine, without restarts)."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup))
    decay = 1.0
    if tc.lr_decay == "cosine" and tc.steps > tc.warmup:
        prog = min(1.0, max(0.0, (step - tc.warmup) / (tc.steps - tc.warmup)))
        decay = tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))
    return tc.lr * warm * decay


@torch.no_grad()
def guide_step(tc: TrainConfig) -> int | None:
    """The step whose averaged weights a run keeps for autoguidance: `guide_at` of its steps (at least 1); None for
    guide_at = 0."""
    return max(1, round(tc.guide_at * tc.steps)) if tc.guide_at > 0 else None


def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, with foreach ops."""
    e = [p for p in ema.parameters()]
    n = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(e, n, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(bn)


SEED_LIMIT = 2**40  # |seed|: the data order seeds torch with seed * 1_000_003 + epoch, which must stay in int64
# (key, integer?, low, high, low included?, high included?): every number of TrainConfig the engine reads
SETTINGS: tuple[tuple[str, bool, float, float, bool, bool], ...] = (
    ("steps", True, 1, math.inf, True, False),
    ("batch_size", True, 1, math.inf, True, False),
    ("lr", False, 0, math.inf, False, False),
    ("warmup", True, 0, math.inf, True, False),
    ("lr_min_ratio", False, 0, 1, True, True),
    ("weight_decay", False, 0, math.inf, True, False),
    ("grad_clip", False, 0, math.inf, True, False),
    ("ema_decay", False, 0, 1, True, False),
    ("guide_at", False, 0, 1, True, False),
    ("label_dropout", False, 0, 1, True, True),
    ("seed", True, -SEED_LIMIT, SEED_LIMIT, False, False),
    ("max_minutes", False, 0, math.inf, True, False),
    ("budget_minutes", False, 0, math.inf, True, False),
    ("log_every", True, 1, math.inf, True, False),
    ("checkpoint_every", True, 0, math.inf, True, False),
    ("sample_every", True, 0, math.inf, True, False),
    ("sample_n", True, 1, 10_000, True, True),
    ("sample_steps", True, 1, 10_000, True, True),
    ("threads", True, 0, MAX_THREADS, True, True),
    ("shards", True, 0, MAX_THREADS, True, True),
)


def validate_settings(tc: TrainConfig) -> None:
    """Reject optimisation settings that cannot train, before any work is done: every number finite, of its type
    and in its range (a NaN grad_clip would silently turn clipping off), every name known."""
    flags = {"steps": "--steps", "batch_size": "--batch-size", "seed": "--seed", "max_minutes": "--minutes",
             "budget_minutes": "--budget"}
    for key, *rule in SETTINGS:
        check_range(flags.get(key, f"train.{key}"), getattr(tc, key), *rule)
    if tc.precision not in PRECISIONS:
        raise DiffusaError(f"unknown precision {tc.precision!r}; known: {', '.join(PRECISIONS)}")
    if tc.lr_decay not in LR_DECAYS:
        raise DiffusaError(f"unknown lr_decay {tc.lr_decay!r}; known: {', '.join(LR_DECAYS)}")
    if tc.budget_minutes > 0:
        fit_step(tc)  # a warm-up too short to time the steps in


def check_training_memory(model: nn.Module, batch_size: int, example_shape: tuple[int, ...]) -> None:
    """Refuse a training whose weights, EMA and Adam's two moments (four copies of the parameters), plus the
    activations of one batch (limits.ACTIVATION_FLOATS per input value, an estimate that errs low), would not fit
    this machine: before any step runs."""
    from diffusa.limits import ACTIVATION_FLOATS, check_bytes, tensor_bytes

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = tensor_bytes((batch_size, *example_shape), ACTIVATION_FLOATS)
    check_bytes(f"training with --batch-size {batch_size} on examples of shape {list(example_shape)}",
                4 * weights + batch, "lower the batch size or the network's size")


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so a checkpoint never captures a half-applied step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)


def make_optimizer(params: Any, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019), fused into one kernel where torch has one for the device: 4x cheaper than
    the per-parameter loop on the CPU (6 vs 28 ms a step for the default U-Net)."""
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=device.type in ("cpu", "cuda"))


def load_init(model: nn.Module, path: Path, new: Collection[str] = ()) -> None:
    """Start from another run's weights (`--init`): every tensor must match by name and shape, but those named in
    `new` (inputs the other network lacks, e.g. a guided student's guidance embedding), which keep their initial
    values where the file lacks them, and those the network widens itself (`widen_init`: an image-conditioned U-Net
    from one without the condition, its new input channels at zero)."""
    own = model.state_dict()
    tensors = load_tensors(path)
    tensors = {**{k: own[k] for k in new if k in own and k not in tensors}, **tensors}
    if callable(widen := getattr(model, "widen_init", None)):
        tensors = widen(tensors)
    for name in sorted(set(own) | set(tensors)):
        if name not in tensors or name not in own or tensors[name].shape != own[name].shape:
            theirs = tuple(tensors[name].shape) if name in tensors else "absent"
            mine = tuple(own[name].shape) if name in own else "absent"
            raise DiffusaError(f"--init {path.parent}: its network does not fit this one: tensor {name} is {theirs} "
                               f"there and {mine} here")
    load_state_dict_strict(model, tensors, path)


class Engine:
    """Trains one task into one run folder. Build it, then call `fit()`.

    Folder layout, the same for every task: config.json (the task's), model.safetensors (EMA weights, or the
    weights when the task keeps no EMA), train_state.safetensors + train_state.json (for exact resume), log.jsonl,
    loss.png, samples/ (previews).
    """

    def __init__(self, task: Task, out: str | Path, *, resume: bool = False, progress: bool = True,
                 init: str | Path | None = None) -> None:
        self.task, self.out, self.progress = task, Path(out), progress
        self.cfg = task.settings
        validate_settings(self.cfg)
        check_training_memory(task.model, self.cfg.batch_size, tuple(task.data.shape))
        self.dist = setup_distributed()
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        check_out(self.out, resume, init)
        if resume and never_checkpointed(self.out):  # stopped before its first checkpoint: start it again
            resume = False
        self.model = task.model.to(self.device)
        if init is not None:
            load_init(self.model, Path(init))
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval() if self.cfg.ema_decay > 0 else None
        self.amp_dtype = PRECISIONS[self.cfg.precision]
        # fp16 gradients underflow without loss scaling (Micikevicius et al. 2018); bf16 needs none
        self.scaler = torch.amp.GradScaler(self.device.type) if self.cfg.precision == "fp16" else None
        self.opt = make_optimizer(task.parameters(), self.cfg, self.device)
        self.step = 0
        self.seconds = 0.0  # training time of the earlier segments of a resumed run
        self._fitted: dict[str, Any] | None = None  # a time budget's fit (diffusa.engine.budget), checkpointed
        self._window: tuple[int, float] | None = None  # (step, time) where the budget's speed is timed from
        self._shards: Shards | None = None  # the batch's threads (diffusa.engine.shards), made at the first step
        self._shard_count: int | None = None
        self._acc: dict[str, torch.Tensor] = {}  # the log's running sums since its last record, and their count
        self._acc_n = 0
        if resume:
            task.check_resume(load_json(self.out / "config.json"), self.out)
            self._load_state()
        self._fit_at: int | None = None  # the step after which a time budget fixes the step count
        if self.cfg.budget_minutes > 0:
            if not task.fits_budget:
                raise DiffusaError(f"{task.name}: train.budget_minutes is not available here: its schedule reads the "
                                   "step count from the first step; give the steps instead")
            if self._fitted is not None:  # the checkpoint's fit wins over whatever config was passed in
                self.cfg.steps = fitted_steps(self._fitted, str(self.out / STATE))
            else:
                self._fit_at = fit_step(self.cfg)
                if self.step > self._fit_at:
                    raise DiffusaError(f"cannot resume {self.out} with a time budget: its checkpoint (step "
                                       f"{self.step}) is past step {self._fit_at}, where a budget fixes the steps, "
                                       "and records none; resume it with its own settings")
                self.cfg.steps = UNFITTED_STEPS
        self.train_module = DistributedDataParallel(self.model) if self.dist.world > 1 else self.model
        task.bind(self.train_module, self.ema, self.device)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stray_temporaries(self.out)
            trim_log(self.out, self.step)  # records after the checkpoint are written again, exactly
            if not resume:
                save_json(self.out / "config.json", task.meta())

    def shard_count(self) -> int:
        """The number of threads a step splits its batch over: train.shards, or (0, auto) `auto_shards`' choice for
        this task, device and torch's thread count now. Decided once, at the first call (the first step at the
        latest); more than 1 where sharding cannot run is refused in one line."""
        if self._shard_count is None:
            cfg, cpu = self.cfg, self.device.type == "cpu"
            k = cfg.shards or auto_shards(torch.get_num_threads(), cfg.batch_size, cpu=cpu, world=self.dist.world,
                                          scaler=self.scaler is not None, model=self.model,
                                          shardable=self.task.shardable)
            if k > 1 and not (cpu and self.dist.world == 1 and self.scaler is None and self.task.shardable):
                raise DiffusaError(f"train.shards {k}: batch shards run on CPU threads in one process, without fp16, "
                                   f"for tasks that allow them; use train.shards=1 here")
            self._shard_count = min(k, cfg.batch_size)
        return self._shard_count

    def close_shards(self) -> None:
        """Stop the shards' threads (fit does at its end; a later step starts them again)."""
        if self._shards is not None:
            self._shards.close()
            self._shards = None

    @property
    def averaged(self) -> nn.Module:
        """The weights that are saved and sampled: the EMA copy, or the model itself without EMA."""
        return self.ema if self.ema is not None else self.model

    # -- checkpoints ---------------------------------------------------------------------------
    def _load_state(self) -> None:
        tensors, state, ema = read_checkpoint(self.out)
        source = self.out / STATE
        load_state_dict_strict(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
        if self.ema is not None:
            if ema is None:
                raise DiffusaError(f"{source} holds no EMA weights, and this run keeps an EMA (train.ema_decay > 0)")
            load_state_dict_strict(self.ema, ema, source)
        optimizer_from_tensors(self.opt, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")},
                               state["optimizer"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self._fitted = state.get("budget")
        log = state.get("log", {})
        self._acc_n = int(log.get("n", 0))
        self._acc = {k: torch.tensor(v, dtype=torch.float32) for k, v in log.get("sums", {}).items()}
        extra = {k: v for k, v in tensors.items() if not k.startswith(("model.", "optim.")) and k != "step"}
        self.task.load_state(extra, state.get("task", {}))
        if self.dist.main:  # a kill after the commit may have left these one checkpoint behind
            publish(self.out, state, self.averaged.state_dict())

    def save(self) -> None:
        """Commit a checkpoint: one file renamed into place, then what derives from it (rank 0 only)."""
        if not self.dist.main:
            return
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors["step"] = torch.tensor(self.step)
        extra, values = self.task.state()
        tensors.update(extra)
        # the log's window so far, so a resumed run writes the records the uninterrupted one would have
        state: dict[str, Any] = {"step": self.step, "optimizer": opt_meta, "seconds": self.elapsed,
                                 "shards": self.shard_count(),
                                 "log": {"n": self._acc_n, "sums": {k: float(v) for k, v in self._acc.items()}}}
        if values:
            state["task"] = values
        if self._fitted is not None:
            state["budget"] = self._fitted
        if self.scaler is not None:
            state["grad_scaler"] = {k: float(v) if torch.is_tensor(v) else v
                                    for k, v in self.scaler.state_dict().items()}
        ema = self.ema.state_dict() if self.ema is not None else None
        write_checkpoint(self.out, tensors, state, ema, self.averaged.state_dict())
        if (self.out / "log.jsonl").exists():
            save_loss_curve(self.out / "log.jsonl", self.out / "loss.png")

    def save_snapshot(self) -> Path:
        """The averaged weights at this step in snapshots/step_N.safetensors, with the training seconds so far (rank
        0 only): autoguidance's weaker model (`train.guide_at`), and quality against training time from one run."""
        path = self.out / "snapshots" / f"step_{self.step}.safetensors"
        if self.dist.main:
            save_tensors(path, {k: v.detach().clone() for k, v in self.averaged.state_dict().items()},
                         {"step": str(self.step), "train_seconds": f"{self.elapsed:.1f}"})
        return path

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every segment of a resumed run."""
        start = getattr(self, "_start", None)
        return self.seconds + (time.time() - start if start is not None else 0.0)

    def preview(self, name: str) -> None:
        if self.dist.main:
            self.task.preview(self.out, name)

    # -- the loop ------------------------------------------------------------------------------
    def start_data(self) -> None:
        """The data iterator from the current step on (exact resume: the order is a function of the step)."""
        data = self.task.data
        if self.device.type != "cpu" and "x" in vars(data):  # resident data: copied to the GPU once, indexed there
            if getattr(self, "_device_data", None) is None:
                self._device_data = dataclasses.replace(data, x=data.x.to(self.device))
            data = self._device_data
        self._batches = data.loader(self.cfg.batch_size, self.cfg.seed, self.step, self.dist.rank, self.dist.world)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One optimisation step; returns (loss, grad norm, the task's extra numbers)."""
        cfg, step = self.cfg, self.step
        idx, x = next(self._batches)
        seed = step_seed(cfg.seed, step, self.dist.rank)
        torch.manual_seed(seed)  # dropout
        grads = None
        if self.shard_count() > 1:  # the batch in k threads, gradients summed (diffusa.engine.shards)
            if self._shards is None:
                self._shards = Shards(self.shard_count(), [p for g in self.opt.param_groups for p in g["params"]
                                                           if p.requires_grad], self.amp_dtype)
            loss, result, grads = self._shards(self.task.loss, idx, x.to(self.device), seed)
        else:
            g = torch.Generator().manual_seed(seed)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                result = self.task.loss(idx, x.to(self.device), g)
            losses = result.losses.float()
            loss = (losses * result.weights).mean() if result.weights is not None else losses.mean()
        if not bool(torch.isfinite(loss)):  # stop before the weights (and then a checkpoint) are spoilt
            raise DiffusaError(f"step {step + 1}: the loss is {float(loss.detach())}, not a finite number; training "
                               "stopped and the last checkpoint is kept (lower train.lr, or check the data)")
        self.opt.zero_grad(set_to_none=True)
        if grads is not None:
            for p, grad in zip(self._shards.params, grads, strict=True):
                p.grad = grad
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                            else float("inf"))
        lr = lr_at(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        decay = cfg.ema_decay
        if cfg.ema_warmup:
            decay = min(decay, (1 + step) / (10 + step))
        with defer_sigint():  # weights, optimizer, EMA, the task's state and the step counter change together
            self.task.after_step(result)
            if self.scaler is not None:
                self.scaler.step(self.opt)  # skips the step when the scaled gradients overflowed
                self.scaler.update()
            else:
                self.opt.step()
            if self.ema is not None:
                ema_update(self.ema, self.model, decay)
            self.step += 1
            for key, value in {"loss": loss, **result.logs}.items():  # the log's window, checkpointed with the step
                self._acc[key] = self._acc.get(key, torch.zeros(())) + torch.as_tensor(value).detach().float().cpu()
            self._acc_n += 1
        return loss.detach(), gn.detach(), result.logs

    def _all_ranks(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a time limit must stop all ranks at the same step)."""
        if self.dist.world == 1:
            return flag
        t = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def _budget(self, bar: Any, start_step: int) -> None:
        """After each step of a budgeted run before its fit: note the time at a quarter of the fit step (the speed
        is measured from there), and fit at the fit step."""
        fit_at = self._fit_at
        assert fit_at is not None
        if self.step == max(fit_at // 4, start_step + 1) and self.step < fit_at:
            self._window = (self.step, time.time())
        if self.step == fit_at:
            self._fit_budget(bar, start_step)

    def _fit_budget(self, bar: Any, start_step: int) -> None:
        """Fit the step count to train.budget_minutes (diffusa.engine.budget): the speed since the window's start
        (or, resumed at the fit step itself, the earlier segments' mean), one timed checkpoint and one timed
        preview; the steps the same on every rank; config.json, then a checkpoint that keeps the fit, so a resume
        trains the same steps."""
        s0, t0 = self._window or (start_step, self._start)
        if self.step > s0:
            rate = (self.step - s0) / max(time.time() - t0, 1e-9)
        else:
            rate = self.step / max(self.seconds, 1e-9)
        self.save()  # twice: the first also pays one-off imports (the loss curve's plotting)
        t = time.time()
        self.save()
        checkpoint_s = time.time() - t
        t = time.time()
        self.preview(f"step_{self.step:06d}")
        preview_s = time.time() - t
        kw = dict(step=self.step, elapsed_s=self.elapsed, rate=rate, checkpoint_s=checkpoint_s, preview_s=preview_s)
        steps = fit_steps(self.cfg, **kw).steps
        if self.dist.world > 1:  # the ranks train the same steps: the smallest choice
            n = torch.tensor(steps, dtype=torch.int64, device=self.device)
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            steps = int(n.item())
        fit = Fit(steps, rate, checkpoint_s, preview_s, estimate(self.cfg, steps, **kw))
        self.cfg.steps, self._fit_at = steps, None
        self._fitted = fit.record(self.cfg, self.step)
        if self.dist.main:
            meta = self.task.meta()
            meta["budget"] = self._fitted
            save_json(self.out / "config.json", meta)
        self.save()  # after config.json: a stop between the two fits again on resume, with the same rule
        if bar is not None:
            bar.total = steps
            bar.refresh()
            bar.write(fit.message(self.cfg, self.step))
        elif self.dist.main:
            print(fit.message(self.cfg, self.step), flush=True)

    def _write_log(self, log: Any, bar: Any, gn: torch.Tensor, start_step: int) -> None:
        """One JSONL record: the means since the last record (over every rank), grad norm, lr, speed."""
        means = {k: v / self._acc_n for k, v in self._acc.items()}
        if self.dist.world > 1:  # nccl reduces device tensors only
            means = {k: v.to(self.device) for k, v in means.items()}
            for v in means.values():
                dist.all_reduce(v)
                v /= self.dist.world
        rate = (self.step - start_step) / max(time.time() - self._start, 1e-9)
        if log is not None:
            record = {"step": self.step, **{k: float(v) for k, v in means.items()}, "grad_norm": float(gn),
                      "lr": lr_at(self.cfg, self.step - 1), "steps_per_s": rate, "elapsed_s": self.elapsed}
            log.write(json.dumps(record) + "\n")
            log.flush()
        if bar is not None:
            bar.set_postfix(loss=f"{float(means['loss']):.4f}", refresh=False)
        self._acc, self._acc_n = {}, 0

    def fit(self, on_step: Callable[[Engine], None] | None = None) -> Path:
        """Train to settings.steps (or max_minutes); Ctrl-C saves a checkpoint that --resume continues.

        `on_step(engine)` runs after every step (benchmarks use it to snapshot the EMA weights)."""
        tc = self.cfg
        self.start_data()
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            total = None if self._fit_at is not None else tc.steps  # a budget's steps are known at the fit
            bar = tqdm(total=total, initial=self.step, desc=self.task.name, unit="step", dynamic_ncols=True,
                       mininterval=1.0)
        log = (self.out / "log.jsonl").open("a") if self.dist.main else None
        self._start, start_step = time.time(), self.step
        self._window = None
        gn = torch.zeros(())
        try:
            if self._fit_at is not None and self.step == self._fit_at:  # resumed at the fit step itself
                self._fit_budget(bar, start_step)
            while self.step < tc.steps:
                _, gn, _ = self.train_step()
                if on_step is not None:
                    on_step(self)
                if bar is not None:
                    bar.update(1)
                over = tc.max_minutes > 0 and self._all_ranks(time.time() - self._start > tc.max_minutes * 60)
                if self.step % tc.log_every == 0 or self.step == tc.steps or over:
                    self._write_log(log, bar, gn, start_step)
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save()
                if self.step == guide_step(tc):
                    self.save_snapshot()
                if tc.sample_every and self.step % tc.sample_every == 0 and self.step < tc.steps:
                    self.preview(f"step_{self.step:06d}")
                if self._fit_at is not None:
                    self._budget(bar, start_step)
                if over:
                    if bar is not None:
                        bar.write(f"time budget of {tc.max_minutes} min reached at step {self.step}")
                    break
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            self.save()
            if self.dist.main:
                print(f"interrupted at step {self.step}; checkpoint saved — continue with --resume", flush=True)
            raise
        finally:
            if log is not None:
                log.close()
            self.close_shards()
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()  # a streaming loader's worker processes exit here, before the final save and preview
        if bar is not None:
            bar.close()
        self.save()
        self.preview("final")
        if self.dist.main:
            self.task.finish(self.out, self.averaged, self.elapsed)
        if self.dist.world > 1:
            dist.barrier()
            # drop the DDP wrapper (its reducer holds the process group) before `leave_distributed` destroys the
            # group: a reducer torn down after its group can abort a rank at exit (gloo, seen once under load)
            self.train_module = self.model
            self.task.bind(self.model, self.ema, self.device)
            gc.collect()
        return self.out


__all__ = [
    "PRECISIONS",
    "DistInfo",
    "Engine",
    "check_training_memory",
    "defer_sigint",
    "ema_update",
    "leave_distributed",
    "load_init",
    "lr_at",
    "make_optimizer",
    "setup_distributed",
    "step_seed",
    "validate_settings",
]
