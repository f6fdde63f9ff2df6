"""Noise-aware classifiers for classifier guidance: build one for a diffusion run, load it back as
log p(y | x_t, t) (Dhariwal & Nichol 2021, Sec. 4); it is trained as a task of the engine
(`diffusa.tasks.classifier.train_classifier`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusa.checkpoint import load_state_dict_strict, load_tensors, read_trained_meta, weights_file
from diffusa.errors import DiffusaError
from diffusa.guidance import LogProbFn, classifier_log_prob
from diffusa.nets import network_kind
from diffusa.nets.noisy_classifier import EncoderClassifier
from diffusa.nets.unet import UNetConfig
from diffusa.process import Process, process_from_dict

CLASSIFIER_FORMAT = "diffusa-classifier"
CLASSIFIER_VERSION = 1
ARCH_KEYS = ("in_channels", "channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim",
             "emb_mult", "image_size", "patch_size")


def classifier_config(run_meta: dict[str, Any]) -> dict[str, Any]:
    """The classifier's U-Net encoder: the diffusion run's network shape (encoder half)."""
    spec = network_kind(run_meta["network"]["kind"]).classifier_unet(run_meta["network"]["config"])
    if spec is None:
        raise DiffusaError("classifier guidance needs image data (a U-Net run); this run models points")
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
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        x_t = process.q_sample(x, tt, torch.randn(x.shape, generator=g).to(x.device))
        out[f"t={t:g}"] = float((net(x_t, process.c_noise(tt).float()).argmax(1) == y).float().mean())
    return out


def load_classifier(path: str | Path) -> tuple[EncoderClassifier, Process, dict[str, Any]]:
    """(network, process, config) of a classifier folder written by `train_classifier`."""
    path = Path(path)
    meta = read_trained_meta(path, CLASSIFIER_FORMAT, CLASSIFIER_VERSION, "classifier", "held_out_accuracy",
                             "diffusa train-classifier RUN --out DIR")
    try:
        net = build_classifier(meta["network"], int(meta["num_classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DiffusaError(f"{path / 'config.json'}: bad classifier settings ({e})") from None
    weights = weights_file(path, "classifier.safetensors")
    load_state_dict_strict(net, load_tensors(weights), weights)
    return net.eval(), process_from_dict(meta["process"]), meta


def guidance_log_prob(path: str | Path, process: Process) -> tuple[LogProbFn, int]:
    """log p(y | x_t, t) of a saved classifier, checked to share `process` (the diffusion model's)."""
    net, own, meta = load_classifier(path)
    if own.to_dict() != process.to_dict():
        raise DiffusaError(f"classifier {path} was trained under process {own.to_dict()}, the model uses "
                           f"{process.to_dict()}: train one for this run with `diffusa train-classifier`")
    return classifier_log_prob(net, process), int(meta["num_classes"])


__all__ = ["CLASSIFIER_FORMAT", "CLASSIFIER_VERSION", "accuracy_by_noise", "build_classifier", "classifier_config",
            "guidance_log_prob", "load_classifier"]
