"""Diffusion training as a task of the engine: a run is built from its config (data, process, network, Denoiser,
objective, time sampler, conditioning), and each step's loss is the objective at times from the time sampler
(Ho et al. 2020, Alg. 1, in the currency of DESIGN.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusa.conditioning import conditioner_for
from diffusa.config import POINT_FEW_STEPS, POINT_SAMPLING, RunConfig, resolve_defaults
from diffusa.data import run_dataset
from diffusa.engine.loop import validate_settings
from diffusa.engine.task import StepLoss, Task
from diffusa.errors import DiffusaError
from diffusa.latent import LatentDecoder, latent_dataset
from diffusa.losses import build_objective, build_time_sampler
from diffusa.nets import build_network
from diffusa.process import DiscreteDDPM
from diffusa.runs import build_process, make_denoiser, network_spec, run_metadata
from diffusa.samplers import get_sampler, sample
from diffusa.standardize import DATA_STD, Destandardize, data_stats, standardized, wanted
from diffusa.superres import ImageCondition, residual_std
from diffusa.viz import save_samples

TIME_SAMPLER_PREFIX = "time_sampler."


def as_json(value: Any) -> Any:
    """`value` as config.json holds it once written and read back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value))


def check_student_resume(meta: dict[str, Any], out: Path, table: dict[str, Any], spec: Any, verb: str,
                         whose: str) -> None:
    """A student run (distilled, reflowed) resumes only with the "distill" table and network it started with."""
    if meta.get("distill") != as_json(table):
        raise DiffusaError(f"cannot resume {out}: it was {verb} from another teacher or with other settings "
                           f"({meta.get('distill')})")
    if meta.get("network", {}).get("config") != as_json(spec):
        raise DiffusaError(f"cannot resume {out}: its network differs from {whose}")


class DiffusionTask(Task):
    """Trains `denoiser(x_t, t, cond)` on a dataset under a process; the network is averaged by EMA."""

    name = "train"
    shardable = True  # `loss` reads the model and its own settings only; randomness from the generator
    guidance_input = False  # a network that takes the guidance scale (model.net.guidance_embed): guided students only

    def __init__(self, cfg: RunConfig, data: Any = None) -> None:
        self.cfg = cfg
        dc = cfg.data
        self.data = data if data is not None else run_dataset(dc, "train")
        self.latent: dict[str, Any] | None = None
        self.decoder = None
        self.standardize: dict[str, list[float]] | None = None
        if dc.latent:  # encode once; the diffusion model sees only latents (Rombach et al. 2022)
            self.data, self.latent = latent_dataset(self.data, dc.latent)
            self.decoder = LatentDecoder(self.latent)
        elif wanted(dc.standardize, self.data):  # points at unit scale, EDM told so (standardize.py)
            self.standardize = data_stats(self.data.x)
            self.data = standardized(self.data, self.standardize)
            self.decoder = Destandardize(self.standardize)
            if cfg.process.name == "edm" and cfg.process.sigma_data is None:
                cfg.process.sigma_data = DATA_STD
        if cfg.model.residual and cfg.process.name == "edm" and cfg.process.sigma_data is None:
            cfg.process.sigma_data = residual_std(self.data, dc.super_resolution or 0)  # EDM told what it diffuses
        resolve_defaults(cfg, self.data.kind)
        validate_settings(cfg.train)  # before the network is built (the engine checks again, for every task)
        get_sampler(cfg.train.sampler)  # the preview sampler: refused now, not after every step has run
        self.settings = cfg.train
        self.source = ImageCondition.of(dc)  # condition images: super-resolution's, augmented (diffusa.superres)
        self.source.check(self.data, dc.latent)
        if cfg.model.residual and not self.source.factor:
            raise DiffusaError("model.residual predicts around the upsampled input of a super-resolution model: set "
                               "data.super_resolution, or drop model.residual")
        self.kind, self.spec = network_spec(cfg, self.data.shape, self.data.num_classes,
                                            self.source.channels(self.data), data_kind=self.data.kind,
                                            image_level=self.source.augmented)
        unet = self.spec.get("unet", self.spec) if isinstance(self.spec, dict) else {}  # a text U-Net nests it
        if isinstance(unet, dict) and unet.get("guidance_embed") and not self.guidance_input:
            raise DiffusaError("model.net.guidance_embed: only a guided consistency student (diffusa distill "
                               "--guidance-range) takes the guidance scale as an input; this run cannot (a guided "
                               "student is not a base to fine-tune)")
        torch.manual_seed(cfg.train.seed)  # the network's initial weights
        self.model = build_network(self.kind, self.spec)
        if cfg.train.grad_checkpoint:
            if not hasattr(self.model, "grad_checkpoint"):
                raise DiffusaError(f"--grad-checkpoint needs the U-Net; this run's network is {self.kind!r}")
            self.model.grad_checkpoint = True
        self.process = build_process(cfg)
        self.build_loss()
        self.conditioner = conditioner_for(self.kind, self.spec, self.data, cfg.train.label_dropout, self.model,
                                           self.source)
        self.image = self.data.kind == "image" and self.latent is None  # latents are not clipped to [-1, 1]
        self.init: dict[str, Any] | None = None  # set by `diffusion_engine` when starting from another run

    def build_loss(self) -> None:
        """The objective and time sampler of cfg.loss (a task with a loss of its own overrides this)."""
        self.time_sampler = build_time_sampler(self.cfg.loss, self.process)
        self.objective = build_objective(self.cfg.loss, self.process)

    @property
    def net(self) -> nn.Module:
        return self.model

    def bind(self, train_module: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
        self.device = device
        self.denoiser = make_denoiser(train_module, self.process, self.cfg, self.image)
        self.ema_denoiser = make_denoiser(ema if ema is not None else self.model, self.process, self.cfg, self.image)

    def loss(self, idx: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> StepLoss:
        t, w = self.time_sampler.sample(x.shape[0], generator, x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        cond = None
        if self.conditioner is not None:  # label dropout: one model learns p(x | y) and p(x) (Ho & Salimans 2021)
            cond = self.conditioner.training(idx, generator, x.device, x)
        losses = self.objective(self.denoiser, x, t, noise, cond)
        return StepLoss(losses, w, extra=t)

    def after_step(self, result: StepLoss) -> None:
        self.time_sampler.update(result.extra, result.losses.detach().float())

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not hasattr(self.time_sampler, "state_dict"):  # e.g. importance sampling's loss history
            return {}, {}
        return {TIME_SAMPLER_PREFIX + k: v for k, v in self.time_sampler.state_dict().items()}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        own = {k[len(TIME_SAMPLER_PREFIX):]: v for k, v in tensors.items() if k.startswith(TIME_SAMPLER_PREFIX)}
        if own and hasattr(self.time_sampler, "load_state_dict"):
            self.time_sampler.load_state_dict(own)

    def meta(self) -> dict[str, Any]:
        meta = run_metadata(self.cfg, self.data.shape, self.kind, self.spec, self.data.kind)
        if self.latent is not None:
            meta["latent"] = self.latent
        if self.standardize is not None:
            meta["standardize"] = self.standardize
        if self.data.kind == "points" and self.cfg.process.name in POINT_SAMPLING:  # measured per process
            sampler, steps, spacing = POINT_SAMPLING[self.cfg.process.name]
            meta["sampling"] = {"sampler": sampler, "steps": steps,
                                "why": "the best over eight 2-D sets for this process at 20 steps, and "
                                       "few_steps at 10 (benchmarks/toys.py, docs/results/toys.md)"}
            if spacing is not None:
                meta["sampling"]["spacing"] = spacing
            sampler, top, spacing = POINT_FEW_STEPS[self.cfg.process.name]  # measured at 10 steps
            meta["sampling"]["few_steps"] = {"max_steps": top, "sampler": sampler}
            if spacing is not None:
                meta["sampling"]["few_steps"]["spacing"] = spacing
        if self.init is not None:
            meta["init"] = self.init
        return meta

    def check_resume(self, meta: dict[str, Any], out: Path) -> None:
        if "distill" in meta:  # its loss is distillation's (diffusa.tasks.consistency), not this one
            raise DiffusaError(f"{out} is a distilled student: continue it with `diffusa distill --resume --out {out}`")
        loss = meta.get("config", {}).get("loss")
        kind = loss.get("kind") if isinstance(loss, dict) else None
        if kind is not None and kind != self.cfg.loss.kind:  # e.g. a consistency-trained run (loss.kind "ict")
            raise DiffusaError(f"cannot resume {out}: it was trained with loss.kind {kind!r}, this config says "
                               f"{self.cfg.loss.kind!r}")
        if meta.get("network", {}).get("config") != as_json(self.spec):
            raise DiffusaError(f"cannot resume {out}: its network differs from this config")

    def preview(self, out: Path, name: str) -> None:
        """A grid of EMA samples with a fixed seed, so grids over training are comparable."""
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
        if ref is not None and self.decoder is not None:
            ref = self.decoder(ref)
        save_samples(x, out / "samples" / f"{name}.png", reference=ref, title=f"{self.data.name} {name}")


__all__ = ["DiffusionTask"]
