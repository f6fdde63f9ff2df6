"""Mask-conditioned inpainting models: the condition and the training masks (Palette, Saharia et al. 2022; LDM
inpainting, Rombach et al. 2022, Sec. 4.5).

An inpainting model is an image-conditioned model (`Cond.image`, concatenated to the network's input on the path
super-resolution uses) whose condition is made from the example and a mask (True = repaint, "white", as the
pipeline's masks): the example with the repaint region blanked to 0 (mid-grey in [-1, 1]: on digits, neither ink
nor background) and the mask as one more channel, 1 where the pixel is to be drawn, 0 where it is known
(`masked_condition`, Rombach et al.'s concatenation of the masked image and the mask). A network trained so learns
p(x | the visible part), and samples with any sampler from noise given that condition; no RePaint jumps are
needed (the pipeline still replaces the known region before each step by default: `diffusa.pipelines.edit.inpaint`).

Training masks (`data.inpaint`) are drawn per example from the training step's generator, so a resumed run draws
the same masks: a kind per example, uniformly among the kinds asked for (`MASK_KINDS`):

- box: an axis-aligned rectangle, each side uniform in [1/4, 3/4] of the image's, placed uniformly inside it;
- strokes: 1-3 thick random polylines (3 segments each, each segment 1/8 - 1/3 of the image's side at a uniform
  angle, clamped to the image; the stroke's half-width 4-9% of the side, at least 0.75 px), free-form masks as in
  Palette's and LaMa's training (Suvorov et al. 2022);
- half: the top, bottom, left or right half (as the pipeline's named masks `top` ... `left`).

Every kind's parameters are drawn for every example in one fixed order (so the number of draws never depends on
the outcome), then each example keeps its kind's mask.

Mask guidance. A share `data.inpaint_dropout` (default 0.1) of training examples is given the whole image to draw
(`unmasked`: BLANK everywhere, mask channel 1), condition dropout as in classifier-free guidance (Ho & Salimans
2022), so the one network is also the unconditional model. Guidance then extrapolates from it towards the visible
part, D_u + w (D_c - D_u) (`null_mask_cond`, the null branch of `diffusa.guidance.ClassifierFreeGuided`): sampling
from p(x | visible) reads the true digit only as often as that posterior puts its mass there, while w > 1 sharpens
it towards its mode (p(x) p(visible | x)^w), which is what a classifier's argmax ceiling measures.
"""

from __future__ import annotations

import math

import torch

from diffusa.cond import Cond
from diffusa.errors import DiffusaError

MASK_KINDS = ("box", "strokes", "half")
ALL_KINDS = "all"  # data.inpaint="all": every kind
HALVES = ("left", "right", "top", "bottom")
BLANK = 0.0  # the repaint region's value in the condition image ([-1, 1] pixels: mid-grey)
STROKES, SEGMENTS = 3, 3  # at most 3 strokes per mask, 3 segments per stroke
RASTER_CHUNK = 256  # masks rasterised at once (memory: ~10 floats per example, stroke segment and pixel)


def parse_kinds(spec: str | None) -> tuple[str, ...]:
    """data.inpaint -> the mask kinds: "" / None (not an inpainting model), "all", or a comma list of MASK_KINDS."""
    if spec is None or not str(spec).strip():
        return ()
    if not isinstance(spec, str):
        raise DiffusaError(f"data.inpaint must be a string (\"all\" or kinds such as \"box,strokes\"), got {spec!r}")
    if spec.strip() == ALL_KINDS:
        return MASK_KINDS
    kinds = tuple(k.strip() for k in spec.split(","))
    bad = [k for k in kinds if k not in MASK_KINDS]
    if bad or len(set(kinds)) != len(kinds):
        raise DiffusaError(f"data.inpaint={spec!r}: give \"all\" or distinct mask kinds among "
                           f"{', '.join(MASK_KINDS)} (comma-separated)")
    return kinds


def half_mask(side: str, h: int, w: int) -> torch.Tensor:
    """The `side` half (left, right, top, bottom) of an h x w image, bool (1, 1, h, w), True = repaint."""
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    if side == "left":
        m[..., : w // 2] = True
    elif side == "right":
        m[..., w - w // 2:] = True
    elif side == "top":
        m[..., : h // 2, :] = True
    elif side == "bottom":
        m[..., h - h // 2:, :] = True
    else:
        raise DiffusaError(f"unknown half {side!r}; known: {', '.join(HALVES)}")
    return m


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _box_masks(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Rectangles with sides uniform in [1/4, 3/4] of the image's, placed uniformly inside it."""
    lo_h, lo_w = max(1, h // 4), max(1, w // 4)
    bh = lo_h + (torch.rand(n, generator=g) * (max(lo_h, 3 * h // 4) - lo_h + 1)).long()
    bw = lo_w + (torch.rand(n, generator=g) * (max(lo_w, 3 * w // 4) - lo_w + 1)).long()
    y0 = (torch.rand(n, generator=g) * (h - bh + 1)).long()
    x0 = (torch.rand(n, generator=g) * (w - bw + 1)).long()
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + bh)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + bw)[:, None, None]))
    return inside[:, None]


def _stroke_draws(n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The random parameters of n stroke masks: segment starts and ends (x, y: (n, S, K, 1) each), each stroke's
    half-width (n, S) and whether it is drawn (n, S)."""
    side = min(h, w)
    count = 1 + (torch.rand(n, generator=g) * STROKES).long()  # strokes per mask: 1..STROKES
    start = torch.stack([_uniform((n, STROKES), 0, w, g), _uniform((n, STROKES), 0, h, g)], -1)
    length = _uniform((n, STROKES, SEGMENTS), side / 8, side / 3, g)
    angle = _uniform((n, STROKES, SEGMENTS), 0, 2 * math.pi, g)
    radius = _uniform((n, STROKES), 0.04 * side, 0.09 * side, g).clamp_min(0.75)
    points = [start]
    for k in range(SEGMENTS):  # each vertex a step from the last, kept inside the image
        step = torch.stack([torch.cos(angle[..., k]), torch.sin(angle[..., k])], -1) * length[..., k, None]
        nxt = points[-1] + step
        points.append(torch.stack([nxt[..., 0].clamp(0, w), nxt[..., 1].clamp(0, h)], -1))
    a, b = torch.stack(points[:-1], 2)[..., None], torch.stack(points[1:], 2)[..., None]  # (n, S, K, 2, 1)
    (ax, ay), (bx, by) = a.unbind(3), b.unbind(3)
    return ax, ay, bx, by, radius, torch.arange(STROKES)[None, :] < count[:, None]


def _rasterise(draws: tuple[torch.Tensor, ...], h: int, w: int) -> torch.Tensor:
    """Stroke masks (n, 1, h, w) from `_stroke_draws`: the pixels whose centre lies within a drawn stroke's
    half-width of one of its segments."""
    ax, ay, bx, by, radius, active = draws
    n = ax.shape[0]
    px = (torch.arange(w) + 0.5).repeat(h)  # pixel centres, row by row (h*w,)
    py = (torch.arange(h) + 0.5).repeat_interleave(w)
    out = [torch.zeros(0, STROKES, h * w, dtype=torch.bool)]
    for lo in range(0, n, RASTER_CHUNK):  # memory: ~10 floats per example, segment and pixel at once
        c = slice(lo, lo + RASTER_CHUNK)
        dx, dy, qx, qy = bx[c] - ax[c], by[c] - ay[c], px - ax[c], py - ay[c]
        u = ((qx * dx + qy * dy) / (dx * dx + dy * dy).clamp_min(1e-12)).clamp(0, 1)  # projection onto segments
        dist2 = (qx - u * dx).square() + (qy - u * dy).square()  # (chunk, S, K, h*w): squared distances
        out.append((dist2.amin(2) <= radius[c].square()[..., None]) & active[c, :, None])
    return torch.cat(out).any(1).reshape(n, 1, h, w)


def stroke_masks(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """n free-form masks of 1-3 thick random polylines (see the module docstring), bool (n, 1, h, w)."""
    return _rasterise(_stroke_draws(n, h, w, generator), h, w)


def _half_masks(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    which = (torch.rand(n, generator=g) * len(HALVES)).long()
    halves = torch.cat([half_mask(s, h, w) for s in HALVES])  # (4, 1, h, w)
    return halves[which]


def random_masks(n: int, h: int, w: int, generator: torch.Generator,
                 kinds: tuple[str, ...] = MASK_KINDS) -> torch.Tensor:
    """n training masks, bool (n, 1, h, w), True = repaint: per example a kind uniform among `kinds`, then that
    kind's mask; every kind's parameters are drawn for all n first (kind, box, strokes, half, in that order)."""
    if not kinds:
        raise DiffusaError("random_masks needs at least one mask kind")
    kind = (torch.rand(n, generator=generator) * len(kinds)).long()
    boxes, strokes = _box_masks(n, h, w, generator), _stroke_draws(n, h, w, generator)
    drawn = {"box": boxes, "half": _half_masks(n, h, w, generator)}
    out = torch.zeros(n, 1, h, w, dtype=torch.bool)
    for i, k in enumerate(kinds):
        mine = kind == i
        if k == "strokes":  # rasterised only where used (the draws are made for all: the same masks either way)
            out[mine] = _rasterise(tuple(v[mine] for v in strokes), h, w)
        else:
            out[mine] = drawn[k][mine]
    return out


def masked_condition(x: torch.Tensor, repaint: torch.Tensor) -> torch.Tensor:
    """The condition of a mask-conditioned model: x (B, C, H, W) with the repaint region set to BLANK, then the
    mask (B or 1, 1, H, W; True = repaint) as one more channel (1 = repaint, 0 = known): (B, C + 1, H, W)."""
    m = repaint.to(device=x.device).expand(x.shape[0], 1, *x.shape[-2:])
    blanked = torch.where(m, torch.full((), BLANK, dtype=x.dtype, device=x.device), x)
    return torch.cat([blanked, m.to(x.dtype)], dim=1)


def unmasked(image: torch.Tensor) -> torch.Tensor:
    """The null condition of a mask-conditioned model, shaped as the condition `image` (B, C + 1, H, W): every
    pixel to draw (BLANK in the image channels, 1 in the mask channel), i.e. `masked_condition` of an all-white
    mask, which is what mask dropout trains on."""
    out = torch.full_like(image, BLANK)
    out[:, -1] = 1
    return out


def null_mask_cond(cond: Cond) -> Cond:
    """Mask guidance's unconditional conditioning as a function of the conditional one: its condition image
    replaced by `unmasked` (labels or captions, if any, kept)."""
    if cond is None or cond.image is None:
        raise DiffusaError("mask guidance needs the masked image as the condition (cond.image)")
    return cond.replace(image=unmasked(cond.image))


def drop_masks(image: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Training conditions with a share of examples (each with probability `share`, drawn from `generator`)
    replaced by `unmasked`; nothing is drawn at share 0."""
    if share <= 0:
        return image
    drop = (torch.rand(image.shape[0], generator=generator) < share).to(image.device)
    return torch.where(drop[:, None, None, None], unmasked(image), image)


__all__ = ["ALL_KINDS", "BLANK", "HALVES", "MASK_KINDS", "drop_masks", "half_mask", "masked_condition",
           "null_mask_cond", "parse_kinds", "random_masks", "stroke_masks", "unmasked"]
