"""Pictures people would rather look at than read: sample grids, point clouds, trajectories, loss curves."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.checkpoint import atomic_write, mark
from diffusa.data import unit_to_uint8


def _plt():
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "diffusa-mpl"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(arr: np.ndarray, path: Path) -> None:
    """uint8 pixels as a PNG marked as diffusa's (checkpoint.written_by_diffusa), written atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    info = PngInfo()
    info.add_text("Software", mark())
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG", pnginfo=info))


def _save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    """A matplotlib figure as a PNG marked as diffusa's, written atomically; the figure is closed."""
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                                                    metadata={"Software": mark()}))
    finally:
        _plt().close(fig)


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1] into one uint8 array (H', W', C)."""
    imgs = unit_to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = imgs[i]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_image_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> None:
    """Write a grid of images as a PNG."""
    _save_png(image_grid(x, nrow, scale=scale), Path(path))


def save_points(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Scatter 2-D samples (and, faded, reference data) to a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        r = reference.cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, c="tab:gray", label="data")
    p = x.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    _save_figure(fig, path, dpi=100)


def save_samples(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Images as a grid, points as a scatter plot."""
    if x.ndim == 4:
        save_image_grid(x, path)
    else:
        save_points(x, path, reference, title)


def save_strip(frames: Sequence[torch.Tensor], path: str | Path, labels: Sequence[str] | None = None) -> None:
    """A strip: one row per example, one column per frame (e.g. the reverse process, or the forward one)."""
    stacked = torch.stack(list(frames), dim=1)  # (N, F, C, H, W)
    n, f = stacked.shape[:2]
    grid = image_grid(stacked.reshape(n * f, *stacked.shape[2:]), nrow=f, scale=2)
    if labels is None:
        _save_png(grid, Path(path))
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, f * 0.8), max(1.5, n * 0.8 + 0.5)))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
    cell = grid.shape[1] / f
    ax.set_xticks([cell * (i + 0.5) for i in range(f)], list(labels), fontsize=7, rotation=45)
    ax.set_yticks([])
    _save_figure(fig, path, dpi=110)


def save_loss_curve(log_path: str | Path, path: str | Path) -> None:
    """Plot the training loss from a JSONL log (raw and smoothed) against the step."""
    steps, losses = [], []
    for line in Path(log_path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write: the engine drops it on resume
            continue
        if isinstance(rec, dict) and "loss" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
    if not steps:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=0.8, alpha=0.4, label="loss")
    k = max(1, len(losses) // 20)
    if k > 1:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, path, dpi=100)


def save_bound_terms(times: Sequence[float], terms: Sequence[float], path: str | Path, title: str = "") -> None:
    """The variational bound's terms (bits/dim) against the step's time t (Nichol & Dhariwal 2021, Fig. 2)."""
    t, v = np.asarray(times, dtype=float), np.asarray(terms, dtype=float)
    keep = np.isfinite(v) & (v > 0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(t[keep], v[keep], marker=".", ms=3, lw=0.8)
    ax.set_xlabel("t (step / T)")
    ax.set_ylabel("term of the bound (bits/dim)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    _save_figure(fig, path, dpi=100)

