"""Denoising a large image in overlapping tiles, so that memory stays bounded by the tiles of one network call.

`TiledDenoiser` is a Denoiser around another: at every step of any sampler it evaluates the wrapped Denoiser's raw
output on overlapping tiles of x_t (the network's native size, or another) and blends the outputs linearly across
each overlap, as MultiDiffusion fuses the denoising directions of overlapping windows (Bar-Tal et al. 2023, eq. 5
with linear-ramp weights). Every parameterization is affine in the raw output with coefficients of (x_t, t) alone
(`diffusa.prediction`), so blending raw outputs blends x0 and eps with the same weights; x0 clipping applies after
the blend, as on one pass. The sampler sees one image: the trajectory is shared, so tiles agree at their seams.

Tiles: along each axis of n pixels, tiles of t pixels start every t - o pixels (o the overlap) and the last is
aligned to the far edge. Each tile's weight is the product of two ramps, min(1, (i + 1/2) / o, (t - i - 1/2) / o)
per axis; the blend divides by the sum of weights, so where two tiles overlap by o pixels the weights cross
linearly from one to the other and sum to 1, and an image of one tile is the wrapped Denoiser exactly.
A condition image (`Cond.image`) is cropped with x_t, so it must come at x_t's size; other fields go with their
example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffusa.cond import Cond, as_cond
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, RawFn

TILE_BATCH = 64  # tiles per network call: what bounds the network's activations
SPATIAL = ("image", "mask")  # Cond fields cropped with x_t


def axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    """First pixels of the tiles along an axis of n pixels: every tile - overlap, the last aligned to the edge."""
    if not 0 < tile <= n:
        raise DiffusaError(f"a tile of {tile} pixels does not fit an image side of {n}")
    if not 0 <= overlap < tile:
        raise DiffusaError(f"the overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    starts = list(range(0, n - tile + 1, tile - overlap))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def ramp(tile: int, overlap: int) -> torch.Tensor:
    """Blend weights along one side of a tile: min(1, (i + 1/2) / o, (tile - i - 1/2) / o); all ones for o = 0."""
    if overlap == 0:
        return torch.ones(tile, dtype=torch.float64)
    i = torch.arange(tile, dtype=torch.float64) + 0.5
    return (torch.minimum(i, tile - i) / overlap).clamp(max=1.0)


@dataclass(frozen=True)
class Tiles:
    """The tiles of an image of `size` (H, W) pixels: `tile` (h, w) pixels each, `overlap` (oh, ow) pixels."""

    size: tuple[int, int]
    tile: tuple[int, int]
    overlap: tuple[int, int]

    def __post_init__(self) -> None:
        for n, t, o in zip(self.size, self.tile, self.overlap, strict=True):
            axis_starts(n, t, o)  # the refusals, now

    @property
    def corners(self) -> list[tuple[int, int]]:
        """Top-left pixel (row, column) of every tile, row by row."""
        rows = axis_starts(self.size[0], self.tile[0], self.overlap[0])
        cols = axis_starts(self.size[1], self.tile[1], self.overlap[1])
        return [(r, c) for r in rows for c in cols]

    def __len__(self) -> int:
        return len(self.corners)

    def weights(self) -> torch.Tensor:
        """(h, w) blend weights of one tile: the outer product of the two ramps."""
        return ramp(self.tile[0], self.overlap[0])[:, None] * ramp(self.tile[1], self.overlap[1])[None, :]


def crop_cond(cond: Cond | None, examples: torch.Tensor, corners: list[tuple[int, int]],
              tile: tuple[int, int]) -> Cond | None:
    """The Cond of tiles: example `examples[k]`'s fields, its spatial fields (condition image, mask) cropped to the
    tile at `corners[k]`."""
    if cond is None:
        return None
    h, w = tile
    fields = {}
    for key, value in cond.present().items():
        if key in SPATIAL:
            fields[key] = torch.stack([value[b, :, r:r + h, c:c + w]
                                       for b, (r, c) in zip(examples.tolist(), corners, strict=True)])
        else:
            fields[key] = value[examples.to(value.device)]
    return Cond(**fields)


class TiledDenoiser(Denoiser):
    """A Denoiser that runs `denoiser` on overlapping tiles of x_t and blends the raw outputs linearly (see the
    module docstring); `batch` tiles per call of the wrapped raw function. Process, prediction and settings are the
    wrapped Denoiser's. x_t must be `tiles.size`."""

    def __init__(self, denoiser: Denoiser, tiles: Tiles, batch: int = TILE_BATCH) -> None:
        if not isinstance(denoiser, Denoiser):
            raise DiffusaError(f"tiling wraps a Denoiser, got {type(denoiser).__name__}")
        self.base, self.tiles, self.batch = denoiser, tiles, batch
        super().__init__(self.tiled, denoiser.process, denoiser.prediction, **denoiser.settings())

    def tiled(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The blended raw output at (x_t, t): sum_k w_k raw(tile_k) / sum_k w_k, pixel by pixel."""
        if tuple(x.shape[-2:]) != self.tiles.size:
            raise ValueError(f"x_t is {tuple(x.shape[-2:])}; these tiles cover {self.tiles.size}")
        c = as_cond(cond)
        if c is not None and c.image is not None and c.image.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"a tiled condition image must come at x_t's size {tuple(x.shape[-2:])}, got "
                             f"{tuple(c.image.shape[-2:])}")
        corners, (h, w) = self.tiles.corners, self.tiles.tile
        weight = self.tiles.weights().to(x.device, x.dtype)
        jobs = [(b, k) for b in range(x.shape[0]) for k in range(len(corners))]
        total = torch.zeros(x.shape[-2:], dtype=x.dtype, device=x.device)
        for r, col in corners:
            total[r:r + h, col:col + w] += weight
        out: torch.Tensor | None = None
        for lo in range(0, len(jobs), self.batch):
            chunk = jobs[lo:lo + self.batch]
            examples = torch.tensor([b for b, _ in chunk])
            where = [corners[k] for _, k in chunk]
            xs = torch.stack([x[b, :, r:r + h, col:col + w] for b, (r, col) in zip(examples.tolist(), where,
                                                                                      strict=True)])
            ys = self.base.raw(xs, t[examples.to(t.device)], crop_cond(c, examples, where, (h, w)))
            if out is None:
                out = torch.zeros((x.shape[0], ys.shape[1], *x.shape[-2:]), dtype=ys.dtype, device=x.device)
            for (b, (r, col)), y in zip(zip(examples.tolist(), where, strict=True), ys, strict=True):
                out[b, :, r:r + h, col:col + w] += y * weight
        assert out is not None
        return out / total

    def derive(self, raw: RawFn | None = None, **settings: Any) -> Denoiser:
        """The same tiling around `self.base.derive(raw, **settings)` (see `Denoiser.derive`)."""
        return TiledDenoiser(self.base.derive(raw, **settings), self.tiles, self.batch)


__all__ = ["TILE_BATCH", "TiledDenoiser", "Tiles", "axis_starts", "crop_cond", "ramp"]
