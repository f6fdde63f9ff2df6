"""Noise-aware classifiers for classifier guidance: train one under a diffusion run's process and data, save it
(safetensors + JSON), load it back as log p(y | x_t, t) (Dhariwal & Nichol 2021, Sec. 4)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusa.checkpoint import load_json, load_state_dict_strict, load_tensors, save_json, save_tensors
from diffusa.data import batches, load_dataset
from diffusa.errors import DiffusaError
from diffusa.guidance import LogProbFn, classifier_log_prob
from diffusa.losses import UniformTimeSampler
from diffusa.nets.noisy_classifier import EncoderClassifier
from diffusa.nets.unet import UNetConfig
from diffusa.process import Process, process_from_dict
from diffusa.runs import read_run_meta

CLASSIFIER_FORMAT = "diffusa-classifier"
CLASSIFIER_VERSION = 1
ARCH_KEYS = ("in_channels", "channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim",
             "emb_mult", "image_size", "patch_size")


def classifier_config(run_meta: dict[str, Any]) -> dict[str, Any]:
    """The classifier's U-Net encoder: the diffusion run's network shape (encoder half)."""
    if run_meta["network"]["kind"] != "unet":
        raise DiffusaError("classifier guidance needs image data (a U-Net run); this run models points")
    spec = run_meta["network"]["config"]
    return {k: spec[k] for k in ARCH_KEYS if k in spec}


def build_classifier(arch: dict[str, Any], num_classes: int) -> EncoderClassifier:
    cfg = dict(arch)
    for key in ("channel_mult", "attention_resolutions"):
        cfg[key] = tuple(cfg[key])
    return EncoderClassifier(UNetConfig(**cfg), num_classes)


@torch.no_grad()
def accuracy_by_noise(net: EncoderClassifier, process: Process, x: torch.Tensor, y: torch.Tensor,
                      times: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9), seed: int = 0) -> dict[str, float]:
    """Held-out accuracy at a few noise levels (x_t = alpha x0 + sigma eps at each time)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in times:
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        x_t = process.q_sample(x, tt, torch.randn(x.shape, generator=g))
        out[f"t={t:g}"] = float((net(x_t, process.c_noise(tt).float()).argmax(1) == y).float().mean())
    return out


def train_classifier(run: str | Path, out: str | Path, *, steps: int = 1500, batch_size: int = 128,
                     lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0, progress: bool = True) -> Path:
    """Train p(y | x_t, t) on the labelled data of `run`, with x_t drawn from the run's process at uniform t."""
    meta = read_run_meta(Path(run))
    cfg = meta["config"]
    data = load_dataset(cfg["data"]["name"], "train", cfg["data"]["image_size"], cfg["data"]["grayscale"])
    if data.labels is None or data.num_classes < 2:
        raise DiffusaError(f"{data.name} has no labels: a classifier needs labelled data")
    out = Path(out)
    if (out / "config.json").exists():
        raise DiffusaError(f"{out} already holds a classifier; choose another --out")
    process = process_from_dict(meta["process"])
    arch = classifier_config(meta)
    torch.manual_seed(seed)
    net = build_classifier(arch, data.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    times = UniformTimeSampler(process)
    order = batches(len(data), batch_size, seed)
    g = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train-classifier", unit="step", dynamic_ncols=True, mininterval=1.0)
    start, loss_ema = time.time(), None
    for step in range(steps):
        idx = next(order)
        x0, y = data.x[idx], data.labels[idx]
        t, _ = times.sample(len(idx), g)
        x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        lr_now = lr * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine decay
        for group in opt.param_groups:
            group["lr"] = lr_now
        loss = F.cross_entropy(net(x_t, process.c_noise(t).float()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    net.eval()
    test = load_dataset(cfg["data"]["name"], "test", cfg["data"]["image_size"], cfg["data"]["grayscale"])
    acc = accuracy_by_noise(net, process, test.x, test.labels) if test.labels is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "classifier.safetensors", net.state_dict())
    save_json(out / "config.json", {"format": CLASSIFIER_FORMAT, "format_version": CLASSIFIER_VERSION,
                                    "num_classes": data.num_classes, "network": arch, "process": meta["process"],
                                    "data": cfg["data"], "steps": steps, "batch_size": batch_size, "lr": lr,
                                    "seed": seed, "train_seconds": time.time() - start,
                                    "held_out_accuracy": acc, "trained_for": str(run)})
    return out


def load_classifier(path: str | Path) -> tuple[EncoderClassifier, Process, dict[str, Any]]:
    """(network, process, config) of a classifier folder written by `train_classifier`."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DiffusaError(f"{path} is not a diffusa classifier: config.json is missing")
    meta = load_json(path / "config.json")
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise DiffusaError(f"{path / 'config.json'} is not a classifier config (format {meta.get('format')!r}); "
                           "train one with `diffusa train-classifier RUN --out DIR`")
    if meta.get("format_version") != CLASSIFIER_VERSION:
        raise DiffusaError(f"{path}: classifier format version {meta.get('format_version')!r}; this diffusa reads "
                           f"version {CLASSIFIER_VERSION}")
    try:
        net = build_classifier(meta["network"], int(meta["num_classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DiffusaError(f"{path / 'config.json'}: bad classifier settings ({e})") from None
    load_state_dict_strict(net, load_tensors(path / "classifier.safetensors"), path / "classifier.safetensors")
    return net.eval(), process_from_dict(meta["process"]), meta


def guidance_log_prob(path: str | Path, process: Process) -> tuple[LogProbFn, int]:
    """log p(y | x_t, t) of a saved classifier, checked to share `process` (the diffusion model's)."""
    net, own, meta = load_classifier(path)
    if own.to_dict() != process.to_dict():
        raise DiffusaError(f"classifier {path} was trained under process {own.to_dict()}, the model uses "
                           f"{process.to_dict()}: train one for this run with `diffusa train-classifier`")
    return classifier_log_prob(net, process), int(meta["num_classes"])


__all__ = ["accuracy_by_noise", "guidance_log_prob", "load_classifier", "train_classifier"]
