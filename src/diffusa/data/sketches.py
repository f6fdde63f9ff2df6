"""Rough sketches of digits: each digit drawn as a few thick straight strokes, the input SDEdit (Meng et al. 2022,
Sec. 4.1, "stroke-based image synthesis") turns into a realistic image.

A digit is a list of polylines (boxy, like a seven-segment display's) in the unit square (x to the right, y down),
placed in the 20 x 20 box at the centre of a 28 x 28 image as MNIST's digits are, jittered (scale, rotation, slant,
shift, each vertex) and rendered with a stroke of constant width: a pixel's ink is the clipped distance of its centre
to the nearest segment, so the edge is one pixel of anti-aliasing and the strokes stay straight and uniform: a
sketch, not a handwritten digit.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

Polyline = list[tuple[float, float]]

# x, y in [0, 1]; each digit one to five straight lines, boxy as a seven-segment display's (0 and 8 closed)
DIGIT_STROKES: dict[int, list[Polyline]] = {
    0: [[(0.22, 0.0), (0.78, 0.0), (0.78, 1.0), (0.22, 1.0), (0.22, 0.0)]],
    1: [[(0.55, 0.0), (0.45, 1.0)]],
    2: [[(0.2, 0.0), (0.8, 0.0), (0.8, 0.45), (0.2, 1.0), (0.82, 1.0)]],
    3: [[(0.2, 0.0), (0.8, 0.0), (0.8, 1.0), (0.2, 1.0)], [(0.35, 0.5), (0.8, 0.5)]],
    4: [[(0.25, 0.0), (0.2, 0.6), (0.85, 0.6)], [(0.7, 0.1), (0.7, 1.0)]],
    5: [[(0.8, 0.0), (0.22, 0.0), (0.22, 0.45), (0.8, 0.45), (0.8, 1.0), (0.2, 1.0)]],
    6: [[(0.75, 0.0), (0.22, 0.45), (0.22, 1.0), (0.8, 1.0), (0.8, 0.55), (0.22, 0.55)]],
    7: [[(0.15, 0.0), (0.85, 0.0), (0.4, 1.0)]],
    8: [[(0.25, 0.0), (0.75, 0.0), (0.75, 1.0), (0.25, 1.0), (0.25, 0.0)], [(0.25, 0.5), (0.75, 0.5)]],
    9: [[(0.8, 0.5), (0.22, 0.5), (0.22, 0.0), (0.8, 0.0), (0.8, 1.0)]],
}


def segment_distance(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of points px (..., 2) to the segment from a to b (2,)."""
    ab = b - a
    t = ((px - a) @ ab / ab.dot(ab).clamp_min(1e-12)).clamp(0, 1)
    return (px - (a + t[..., None] * ab)).norm(dim=-1)


def render_polylines(polylines: list[torch.Tensor], size: int, half_width: float) -> torch.Tensor:
    """Ink in [0, 1], (size, size): 1 within `half_width` - 0.5 pixels of a segment (vertices in pixel units,
    x then y, pixel centres at i + 0.5), falling linearly to 0 at `half_width` + 0.5."""
    c = torch.arange(size, dtype=torch.float64) + 0.5
    px = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)  # (y, x, 2): [..., 0] = x
    d = torch.full((size, size), math.inf, dtype=torch.float64)
    for line in polylines:
        for a, b in pairwise(line):
            d = torch.minimum(d, segment_distance(px, a.double(), b.double()))
    return (half_width + 0.5 - d).clamp(0, 1).float()


def sketch_digits(labels: torch.Tensor, size: int = 28, generator: torch.Generator | None = None,
                  jitter: float = 1.0) -> torch.Tensor:
    """Rough sketches of `labels` (N,), images (N, 1, size, size) in [-1, 1] (-1 background): DIGIT_STROKES
    scaled to a box of 20/28 of the side, then per sketch a random scale (0.85-1.05), rotation (+-10 deg), slant
    (+-0.2), shift (+-1.5 px), vertex jitter (+-0.04 of the box) and half-width (1.7-2.3 px: strokes about twice
    as thick as MNIST's), all times `jitter` (0: the templates themselves, half-width 2). The same generator state
    gives the same sketches."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    box, centre = 20 * size / 28, size / 2
    out = []
    for label in labels.tolist():
        u = torch.rand(7, generator=g, dtype=torch.float64) * 2 - 1  # each in [-1, 1)
        scale = 0.95 + 0.1 * u[0] * jitter
        angle = math.radians(10) * u[1] * jitter
        slant = 0.2 * u[2] * jitter
        shift = 1.5 * u[3:5] * jitter * size / 28
        half_width = (2.0 + 0.3 * u[5] * jitter) * size / 28
        rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                           dtype=torch.float64)
        lines = []
        for line in DIGIT_STROKES[int(label)]:
            p = torch.tensor(line, dtype=torch.float64) - 0.5
            p = p + 0.04 * jitter * (torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1)
            if line[0] == line[-1]:  # a closed loop stays closed
                p[-1] = p[0]
            p[:, 0] = p[:, 0] - slant * p[:, 1]  # slanted: the top to the right, as most handwriting
            lines.append((p * box * scale) @ rot.T + centre + shift)
        out.append(render_polylines(lines, size, float(half_width)))
    return torch.stack(out)[:, None] * 2 - 1
