"""The training loop: AdamW with warm-up and decay, gradient clipping, EMA, sample grids, JSONL log,
loss-curve PNG, atomic checkpoints and exact resume; unchanged under `torchrun` (DDP, gloo on CPU).

Randomness is a function of (seed, step, rank) alone, and the data order of (seed, epoch), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diffusa.checkpoint import (
    load_json,
    load_state_dict_strict,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_json,
    save_tensors,
)
from diffusa.conditioning import conditioner_for
from diffusa.config import RunConfig, resolve_defaults
from diffusa.data import Dataset, batches, load_dataset
from diffusa.errors import DiffusaError
from diffusa.latent import LatentDecoder, latent_dataset
from diffusa.losses import build_objective, build_time_sampler
from diffusa.nets import build_network
from diffusa.process import DiscreteDDPM
from diffusa.runs import build_process, make_denoiser, network_spec, read_run_meta, run_metadata
from diffusa.samplers import get_sampler, sample
from diffusa.viz import save_loss_curve, save_samples


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


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct, reproducible seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


def lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to lr_min_ratio * lr at the last step."""
    tc = cfg.train
    warm = min(1.0, (step + 1) / max(1, tc.warmup))
    if tc.lr_decay == "cosine" and tc.steps > tc.warmup:
        prog = min(1.0, max(0.0, (step - tc.warmup) / (tc.steps - tc.warmup)))
        decay = tc.lr_min_ratio + (1 - tc.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))
    elif tc.lr_decay == "constant":
        decay = 1.0
    elif tc.lr_decay == "cosine":
        decay = 1.0
    else:
        raise DiffusaError(f"unknown lr_decay {tc.lr_decay!r}; known: constant, cosine")
    return tc.lr * warm * decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, with foreach ops."""
    e = [p for p in ema.parameters()]
    n = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(e, n, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(bn)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def validate_config(cfg: RunConfig) -> None:
    """Reject settings that cannot train before any work is done."""
    tc = cfg.train
    for key, kind in (("steps", int), ("batch_size", int), ("lr", (int, float))):
        value = getattr(tc, key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DiffusaError(f"train.{key} must be a number, got {value!r}")
    if tc.steps < 1:
        raise DiffusaError(f"--steps must be a positive integer, got {tc.steps}")
    if tc.batch_size < 1:
        raise DiffusaError(f"--batch-size must be a positive integer, got {tc.batch_size}")
    if tc.lr <= 0:
        raise DiffusaError(f"train.lr must be positive, got {tc.lr}")
    if not 0 <= tc.label_dropout <= 1:
        raise DiffusaError(f"train.label_dropout must be in [0, 1], got {tc.label_dropout}")
    if not 0 <= tc.ema_decay < 1:
        raise DiffusaError(f"train.ema_decay must be in [0, 1), got {tc.ema_decay}")
    if tc.precision not in PRECISIONS:
        raise DiffusaError(f"unknown precision {tc.precision!r}; known: {', '.join(PRECISIONS)}")
    if tc.lr_decay not in ("constant", "cosine"):
        raise DiffusaError(f"unknown lr_decay {tc.lr_decay!r}; known: constant, cosine")
    get_sampler(tc.sampler)  # raises DiffusaError naming the known samplers


def make_optimizer(net: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019), fused into one kernel where torch has one for the device: 4x
    cheaper than the per-parameter loop on the CPU (6 vs 28 ms a step for the default U-Net)."""
    return torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


@contextlib.contextmanager
def defer_sigint():
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


class Trainer:
    """Trains one run folder. Build it, then call `fit()`."""

    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                 data: Dataset | None = None) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist = setup_distributed()
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if self.out.exists() and not self.out.is_dir():
            raise DiffusaError(f"--out {self.out} exists and is not a folder")
        if (self.out / "config.json").exists() and not resume:
            raise DiffusaError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if resume and not (self.out / "train_state.json").exists():
            raise DiffusaError(f"cannot resume: {self.out} has no train_state.json (no checkpoint written yet?)")
        self.data = data if data is not None else load_dataset(cfg.data.name, "train", cfg.data.image_size,
                                                               cfg.data.grayscale)
        self.latent: dict[str, Any] | None = None
        self.decoder = None
        if cfg.data.latent:  # encode once; the diffusion model sees only latents (Rombach et al. 2022)
            self.data, self.latent = latent_dataset(self.data, cfg.data.latent)
            self.decoder = LatentDecoder(self.latent)
        resolve_defaults(cfg, self.data.kind)
        validate_config(cfg)
        self.kind, self.spec = network_spec(cfg, self.data.shape, self.data.num_classes)
        torch.manual_seed(cfg.train.seed)
        self.net = build_network(self.kind, self.spec).to(self.device)
        if cfg.train.grad_checkpoint:
            if not hasattr(self.net, "grad_checkpoint"):
                raise DiffusaError(f"--grad-checkpoint needs the U-Net; this run's network is {self.kind!r}")
            self.net.grad_checkpoint = True
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.amp_dtype = PRECISIONS[cfg.train.precision]
        # fp16 gradients underflow without loss scaling (Micikevicius et al. 2018); bf16 needs none
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.precision == "fp16" else None
        self.process = build_process(cfg)
        self.time_sampler = build_time_sampler(cfg.loss, self.process)  # before resume: it may carry state
        self.opt = make_optimizer(self.net, cfg, self.device)
        self.step = 0
        if resume:
            self._load_state()
        self.ddp = DistributedDataParallel(self.net) if self.dist.world > 1 else self.net
        image = self.data.kind == "image" and self.latent is None  # latents are not clipped to [-1, 1]
        self.denoiser = make_denoiser(self.ddp, self.process, cfg, image)
        self.ema_denoiser = make_denoiser(self.ema, self.process, cfg, image)
        self.objective = build_objective(cfg.loss, self.process)
        self.x = self.data.x.to(self.device)
        self.conditioner = conditioner_for(self.kind, self.spec, self.data, cfg.train.label_dropout, self.net)
        self.meta = run_metadata(cfg, self.data.shape, self.kind, self.spec, self.data.kind)
        if self.latent is not None:
            self.meta["latent"] = self.latent
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_json(self.out / "config.json", self.meta)

    # -- checkpoints ---------------------------------------------------------------------------
    def _load_state(self) -> None:
        meta = read_run_meta(self.out)
        if meta["network"]["config"] != json.loads(json.dumps(self.spec)):
            raise DiffusaError(f"cannot resume {self.out}: its network differs from this config")
        state = load_json(self.out / "train_state.json")
        tensors = load_tensors(self.out / "train_state.safetensors")
        if tensors.get("step", torch.tensor(-1)).item() != state.get("step"):
            raise DiffusaError(f"{self.out}: train_state.json and train_state.safetensors disagree; "
                               "the checkpoint is damaged")
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
        load_state_dict_strict(self.net, model, self.out / "train_state.safetensors")
        load_state_dict_strict(self.ema, load_tensors(self.out / "model.safetensors"), self.out / "model.safetensors")
        optimizer_from_tensors(self.opt, optim, state["optimizer"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])
        sampler_state = {k[13:]: v for k, v in tensors.items() if k.startswith("time_sampler.")}
        if sampler_state and hasattr(self.time_sampler, "load_state_dict"):
            self.time_sampler.load_state_dict(sampler_state)

    def save(self) -> None:
        """Write EMA weights, then the training state; each file atomically (rank 0 only)."""
        if not self.dist.main:
            return
        save_tensors(self.out / "model.safetensors", self.ema.state_dict(), {"step": str(self.step)})
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
        tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors["step"] = torch.tensor(self.step)
        if hasattr(self.time_sampler, "state_dict"):  # e.g. importance sampling's loss history
            tensors.update({f"time_sampler.{k}": v for k, v in self.time_sampler.state_dict().items()})
        save_tensors(self.out / "train_state.safetensors", tensors)
        state: dict[str, Any] = {"step": self.step, "optimizer": opt_meta}
        if self.scaler is not None:
            state["grad_scaler"] = {k: float(v) if torch.is_tensor(v) else v
                                    for k, v in self.scaler.state_dict().items()}
        save_json(self.out / "train_state.json", state)
        if (self.out / "log.jsonl").exists():
            save_loss_curve(self.out / "log.jsonl", self.out / "loss.png")

    def save_samples(self, name: str) -> None:
        """A grid of EMA samples with a fixed seed, so grids over training are comparable."""
        if not self.dist.main:
            return
        tc = self.cfg.train
        g = torch.Generator(device="cpu").manual_seed(tc.seed)
        n = tc.sample_n if self.data.kind == "image" else 2000
        steps = tc.sample_steps  # a short chain (process.num_steps < sample_steps) samples with all its steps
        if isinstance(self.process, DiscreteDDPM):
            steps = min(steps, self.process.num_steps)
        cond = self.conditioner.grid(n, self.device) if self.conditioner is not None else None
        x = sample(self.ema_denoiser, (n, *self.data.shape), tc.sampler, steps, generator=g, cond=cond,
                   device=self.device)
        if self.decoder is not None:
            x = self.decoder(x)
        ref = self.data.x[:2000] if self.data.kind == "points" else None
        save_samples(x, self.out / "samples" / f"{name}.png", reference=ref, title=f"{self.data.name} {name}")

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimisation step; returns (loss, grad norm)."""
        cfg, step, rank = self.cfg, self.step, self.dist.rank
        idx = next(self._batches)
        x0 = self.x[idx.to(self.device)]
        seed = step_seed(cfg.train.seed, step, rank)
        torch.manual_seed(seed)  # dropout
        g = torch.Generator().manual_seed(seed)
        t, w = self.time_sampler.sample(x0.shape[0], g, self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        cond = None
        if self.conditioner is not None:  # label dropout: one model learns p(x | y) and p(x) (Ho & Salimans 2021)
            cond = self.conditioner.training(idx, g, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.objective(self.denoiser, x0, t, noise, cond).float()
        loss = (losses * w).mean()
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.train.grad_clip if cfg.train.grad_clip > 0
                                            else float("inf"))
        lr = lr_at(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        decay = cfg.train.ema_decay
        if cfg.train.ema_warmup:
            decay = min(decay, (1 + step) / (10 + step))
        with defer_sigint():  # the weights, optimizer, EMA, time-sampler history and step counter change together
            self.time_sampler.update(t, losses.detach())
            if self.scaler is not None:
                self.scaler.step(self.opt)  # skips the step when the scaled gradients overflowed
                self.scaler.update()
            else:
                self.opt.step()
            ema_update(self.ema, self.net, decay)
            self.step += 1
        return loss.detach(), gn.detach()

    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> Path:
        """Train to cfg.train.steps (or max_minutes); Ctrl-C saves a checkpoint that --resume continues.

        `on_step(trainer)` runs after every step (benchmarks use it to snapshot the EMA weights)."""
        tc = self.cfg.train
        self._batches = batches(len(self.data), tc.batch_size, tc.seed, self.step, self.dist.rank, self.dist.world)
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=1.0)
        log = (self.out / "log.jsonl").open("a") if self.dist.main else None
        start, start_step = time.time(), self.step
        acc_loss, acc_n = torch.zeros(()), 0
        try:
            while self.step < tc.steps:
                loss, gn = self.train_step()
                if on_step is not None:
                    on_step(self)
                acc_loss += loss.cpu()
                acc_n += 1
                if bar is not None:
                    bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    mean = acc_loss / acc_n
                    if self.dist.world > 1:
                        dist.all_reduce(mean)
                        mean /= self.dist.world
                    elapsed = time.time() - start
                    rate = (self.step - start_step) / max(elapsed, 1e-9)
                    if log is not None:
                        log.write(json.dumps({"step": self.step, "loss": float(mean), "grad_norm": float(gn),
                                              "lr": lr_at(self.cfg, self.step - 1), "steps_per_s": rate,
                                              "elapsed_s": elapsed}) + "\n")
                        log.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{float(mean):.4f}", refresh=False)
                    acc_loss, acc_n = torch.zeros(()), 0
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save()
                if tc.sample_every and self.step % tc.sample_every == 0 and self.step < tc.steps:
                    self.save_samples(f"step_{self.step:06d}")
                if tc.max_minutes > 0 and time.time() - start > tc.max_minutes * 60:
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
        if bar is not None:
            bar.close()
        self.save()
        self.save_samples("final")
        if self.dist.world > 1:
            dist.barrier()
        return self.out


def snapshots(out: str | Path, steps: Collection[int], elapsed: float = 0.0) -> Callable[[Trainer], None]:
    """An `on_step` callback that keeps the EMA weights at the given steps in out/snapshots/step_N.safetensors,
    with the training seconds so far (`elapsed`: those of a resumed run): quality against training time from one
    run, as LDM's training-progress comparisons (Rombach et al. 2022, Fig. 6)."""
    start, steps = time.time() - elapsed, set(steps)

    def on_step(tr: Trainer) -> None:
        if tr.step in steps and tr.dist.main:
            save_tensors(Path(out) / "snapshots" / f"step_{tr.step}.safetensors",
                         {k: v.detach().clone() for k, v in tr.ema.state_dict().items()},
                         {"step": str(tr.step), "train_seconds": f"{time.time() - start:.1f}"})

    return on_step


def last_log(run: str | Path) -> dict:
    """The last record of a run's log.jsonl (step, loss, elapsed_s, ...); {} when it has none."""
    path = Path(run) / "log.jsonl"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a run folder from a config (the Python API behind `diffusa train`)."""
    try:
        return Trainer(cfg, out, resume=resume, progress=progress).fit()
    finally:
        leave_distributed()


def leave_distributed() -> None:
    """Leave the process group before exit: gloo's threads torn down at interpreter exit can abort a rank
    ("terminate called without an active exception") after training has finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe(meta: dict[str, Any]) -> str:
    """A one-line summary of a run's model."""
    net = meta["network"]
    return f"{net['kind']} {meta['config']['model']['prediction']}-prediction on data {meta['data_shape']}"
