"""Synthetic RGB scenes: landscapes a user could have photographed, made here so nothing is downloaded.

Each scene is a sky gradient of random hue (day, dusk or night with stars), a sun or a moon, clouds, one or two
ranges of mountains (random polylines, snow on the high ones) or rolling hills, a ground band with texture (grass
strokes, speckle, or furrowed fields running to the horizon), sometimes a road with a dashed centre line, and
houses (walls, a pitched roof, a chimney, framed windows, a door), trees (a trunk with a round or a conifer crown),
picket fences and striped or checkered flags, placed far to near. The detail a 16x16 thumbnail loses is one to
three pixels wide at 64x64: window frames, pickets, furrows, grass, stars.

A scene is drawn at `SUPERSAMPLE` times its size with PIL's ImageDraw and shrunk by box averages (anti-aliased
edges). Scene i of seed s is drawn from its own generator, `numpy.random.default_rng((s, i))`, so it does not depend
on n, and the same (seed, n, size) gives the same bytes.

    diffusa scenes scenes/ --n 2000                           # 2,000 PNGs, 64x64 RGB: a user-style image folder
    diffusa train --data scenes/ --set data.super_resolution=4 ...   # docs/super_resolution.md
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusa.data.base import uint8_to_unit
from diffusa.errors import DiffusaError

SUPERSAMPLE = 4  # drawn at this many times the size, then box-averaged down
MIN_SIZE = 8  # a scene's smallest side
MAX_SIZE = 1024  # and its largest: drawn at SUPERSAMPLE x, a 4096 x 4096 canvas (50 MB)
FILE_PATTERN = "scene_{:05d}.png"

Color = tuple[int, int, int]


def _hsv(h: float, s: float, v: float) -> Color:
    """An RGB colour (0..255 each) from hue (wrapped to [0, 1)), saturation and value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    """(1 - t) a + t b, rounded."""
    return tuple(round((1 - t) * x + t * y) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _sky(rng: np.random.Generator, side: int, horizon: float) -> tuple[np.ndarray, str, Color, Color]:
    """The sky as uint8 (side, side, 3): a vertical gradient from the zenith's colour to the horizon's (random hue,
    day, dusk or night), down to the horizon and held below it; the kind and both colours."""
    kind = str(rng.choice(["day", "day", "dusk", "night"]))
    if kind == "day":
        hue = rng.uniform(0.5, 0.7)
        top, bottom = _hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.65, 0.95)), \
            _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.1, 0.35), rng.uniform(0.9, 1.0))
    elif kind == "dusk":
        top = _hsv(rng.uniform(0.62, 0.85), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6))
        bottom = _hsv(rng.uniform(-0.05, 0.14), rng.uniform(0.5, 0.9), rng.uniform(0.85, 1.0))
    else:
        hue = rng.uniform(0.55, 0.75)
        top, bottom = _hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.2)), \
            _hsv(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.45))
    t = np.clip(np.arange(side, dtype=np.float64) / (horizon * side), 0.0, 1.0) ** rng.uniform(0.7, 1.6)
    column = (1 - t)[:, None] * np.asarray(top, np.float64) + t[:, None] * np.asarray(bottom, np.float64)
    sky = np.broadcast_to(np.round(column)[:, None, :], (side, side, 3)).astype(np.uint8)
    return sky, kind, top, bottom


def _range_outline(rng: np.random.Generator, side: int, base: float, height: float, peaks: int) -> list[tuple]:
    """A mountain range's skyline: a polyline across the image, peaks and valleys at random, down to `base`."""
    xs = np.sort(rng.uniform(0, 1, 2 * peaks))
    xs = np.concatenate([[-0.05], xs, [1.05]])
    ys = base - height * np.where(np.arange(len(xs)) % 2 == 1, rng.uniform(0.45, 1.0, len(xs)),
                                  rng.uniform(0.0, 0.4, len(xs)))
    ys += rng.normal(0, 0.01, len(xs))
    points = [(float(x * side), float(y * side)) for x, y in zip(xs, ys, strict=True)]
    return [(-0.05 * side, base * side + side), *points, (1.05 * side, base * side + side)]


def _hills_outline(rng: np.random.Generator, side: int, base: float, height: float) -> list[tuple]:
    """Rolling hills: a sum of two random sinusoids above `base`."""
    x = np.linspace(-0.02, 1.02, 48)
    y = base - height * (0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(0.6, 1.6) * x + rng.uniform(0, 1)))
                         + 0.2 * np.sin(2 * np.pi * (rng.uniform(2, 4) * x + rng.uniform(0, 1))))
    points = [(float(a * side), float(b * side)) for a, b in zip(x, y, strict=True)]
    return [(-0.02 * side, base * side + side), *points, (1.02 * side, base * side + side)]


def _house(draw: Any, rng: np.random.Generator, x: float, y: float, w: float, px: float, night: bool) -> None:
    """A house standing on (x, y) (bottom centre), w wide: walls, a pitched roof, a chimney, framed windows
    (lit at night), a door. px: one output pixel in drawing units."""
    h = w * rng.uniform(0.55, 0.9)
    left, right, top = x - w / 2, x + w / 2, y - h
    wall = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.6), rng.uniform(0.55, 0.95))
    roof = _hsv(rng.choice([0.0, 0.03, 0.07, 0.6, 0.33]) + rng.uniform(-0.02, 0.02), rng.uniform(0.3, 0.8),
                rng.uniform(0.25, 0.6))
    dark = _mix(wall, (0, 0, 0), 0.55)
    ridge = top - w * rng.uniform(0.3, 0.55)
    overhang = w * 0.08
    if rng.random() < 0.7:  # a chimney behind the roof
        cx = x + w * rng.uniform(-0.3, 0.3)
        draw.rectangle([cx - 0.06 * w, ridge + 0.1 * w, cx + 0.06 * w, top], fill=_mix(roof, (90, 50, 40), 0.5))
    draw.rectangle([left, top, right, y], fill=wall, outline=dark, width=max(1, round(px * 0.5)))
    draw.polygon([(left - overhang, top), (x, ridge), (right + overhang, top)], fill=roof)
    draw.line([(left - overhang, top), (right + overhang, top)], fill=_mix(roof, (0, 0, 0), 0.5),
              width=max(1, round(px)))
    # the door, then one or two rows of windows either side of it
    door_w = w * rng.uniform(0.14, 0.2)
    door_x = x + w * rng.uniform(-0.25, 0.25)
    draw.rectangle([door_x - door_w / 2, y - h * rng.uniform(0.45, 0.6), door_x + door_w / 2, y],
                   fill=_hsv(rng.uniform(0, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.45)))
    lit = _hsv(rng.uniform(0.1, 0.16), rng.uniform(0.5, 0.8), 1.0)
    glass = lit if night else _hsv(rng.uniform(0.5, 0.6), rng.uniform(0.2, 0.5), rng.uniform(0.55, 0.85))
    frame = (235, 235, 230) if not night else (60, 50, 40)
    win = w * rng.uniform(0.14, 0.2)
    rows = 2 if h > 3 * win else 1
    for r in range(rows):
        wy = top + h * (0.18 + 0.38 * r)
        for wx in (left + w * 0.22, right - w * 0.22):
            if abs(wx - door_x) < (win + door_w) / 2 and r == rows - 1:
                continue  # the door is there
            box = [wx - win / 2, wy, wx + win / 2, wy + win]
            draw.rectangle(box, fill=glass if rng.random() < 0.85 else dark, outline=frame,
                           width=max(1, round(px * 0.75)))
            draw.line([(wx, wy), (wx, wy + win)], fill=frame, width=max(1, round(px * 0.5)))
            draw.line([(wx - win / 2, wy + win / 2), (wx + win / 2, wy + win / 2)], fill=frame,
                      width=max(1, round(px * 0.5)))


def _tree(draw: Any, rng: np.random.Generator, x: float, y: float, w: float, night: bool) -> None:
    """A tree standing on (x, y), about w wide: a trunk and a round (a few blobs) or a conifer crown."""
    dim = 0.45 if night else 1.0
    trunk = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45) * dim)
    green = rng.uniform(0.2, 0.4)
    if rng.random() < 0.6:  # broadleaf
        h = w * rng.uniform(1.1, 1.7)
        draw.rectangle([x - w * 0.08, y - h * 0.55, x + w * 0.08, y], fill=trunk)
        cy = y - h * 0.65
        for _ in range(int(rng.integers(3, 6))):
            r = w * rng.uniform(0.25, 0.45)
            bx, by = x + w * rng.uniform(-0.25, 0.25), cy + h * rng.uniform(-0.15, 0.1)
            draw.ellipse([bx - r, by - r, bx + r, by + r],
                         fill=_hsv(green + rng.uniform(-0.03, 0.03), rng.uniform(0.5, 0.85),
                                   rng.uniform(0.3, 0.7) * dim))
    else:  # conifer: stacked triangles
        h = w * rng.uniform(1.6, 2.4)
        draw.rectangle([x - w * 0.07, y - h * 0.2, x + w * 0.07, y], fill=trunk)
        colour = _hsv(green + 0.05, rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.5) * dim)
        tiers = int(rng.integers(2, 4))
        for k in range(tiers):
            bottom = y - h * (0.15 + 0.25 * k)
            half = w * 0.5 * (1 - 0.22 * k)
            draw.polygon([(x - half, bottom), (x, bottom - h * 0.45), (x + half, bottom)], fill=colour)


def _fence(draw: Any, rng: np.random.Generator, x0: float, x1: float, y: float, h: float, px: float,
           night: bool) -> None:
    """A picket fence from x0 to x1 standing on y, h tall: pickets a pixel or two wide, two rails."""
    colour = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.4), rng.uniform(0.75, 1.0) * (0.5 if night else 1.0))
    shade = _mix(colour, (0, 0, 0), 0.35)
    for ry in (y - 0.3 * h, y - 0.75 * h):
        draw.line([(x0, ry), (x1, ry)], fill=shade, width=max(1, round(px)))
    gap = px * rng.uniform(2.5, 3.5)
    width = px * rng.uniform(1.0, 1.5)
    x = x0
    while x < x1:
        draw.polygon([(x, y), (x, y - h * 0.85), (x + width / 2, y - h), (x + width, y - h * 0.85), (x + width, y)],
                     fill=colour)
        x += gap


def _flag(draw: Any, rng: np.random.Generator, x: float, y: float, h: float, px: float) -> None:
    """A flag on a pole standing on (x, y), h tall: horizontal stripes or a checkerboard."""
    draw.rectangle([x - px * 0.5, y - h, x + px * 0.5, y], fill=(70, 70, 75))
    fw, fh = h * rng.uniform(0.5, 0.8), h * rng.uniform(0.3, 0.45)
    top, left = y - h, x + px * 0.5
    a = _hsv(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    b = (250, 250, 250) if rng.random() < 0.5 else _hsv(rng.uniform(0, 1), rng.uniform(0.5, 1), rng.uniform(0.1, 0.9))
    if rng.random() < 0.5:  # stripes
        k = int(rng.integers(3, 6))
        for i in range(k):
            draw.rectangle([left, top + fh * i / k, left + fw, top + fh * (i + 1) / k], fill=a if i % 2 else b)
    else:  # checkerboard
        cols = int(rng.integers(3, 6))
        rows = max(2, round(cols * fh / fw))
        for i in range(rows):
            for j in range(cols):
                draw.rectangle([left + fw * j / cols, top + fh * i / rows, left + fw * (j + 1) / cols,
                                top + fh * (i + 1) / rows], fill=a if (i + j) % 2 else b)


def render_scene(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One scene drawn from `rng`: uint8 (size, size, 3)."""
    from PIL import Image, ImageDraw

    side = size * SUPERSAMPLE
    px = side / 64  # a pixel of a 64x64 scene in drawing units (line widths scale with the size)
    horizon = rng.uniform(0.45, 0.7)
    sky, kind, top, bottom = _sky(rng, side, horizon)
    night = kind == "night"
    im = Image.fromarray(sky, "RGB")
    draw = ImageDraw.Draw(im)
    hy = horizon * side

    if night:  # stars: single pixels of random brightness
        for _ in range(int(rng.integers(15, 60))):
            sx, sy = rng.uniform(0, side), rng.uniform(0, hy * 0.9)
            v = int(rng.integers(150, 256))
            draw.rectangle([sx, sy, sx + px * rng.uniform(0.6, 1.2), sy + px * rng.uniform(0.6, 1.2)], fill=(v, v, v))
    # the sun or the moon (a crescent: the disc, then a disc of sky across it)
    r = side * rng.uniform(0.04, 0.09)
    cx, cy = rng.uniform(0.1, 0.9) * side, rng.uniform(0.1, max(0.12, horizon - 0.12)) * side
    if night:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_hsv(rng.uniform(0.1, 0.17), rng.uniform(0, 0.25), 0.97))
        if rng.random() < 0.6:
            dx = r * rng.uniform(0.35, 0.8) * rng.choice([-1, 1])
            behind = tuple(int(v) for v in sky[min(int(cy), side - 1), 0])
            draw.ellipse([cx + dx - r, cy - r * 1.05, cx + dx + r, cy + r * 0.95], fill=behind)
    else:
        sun = _hsv(rng.uniform(0.1, 0.16), rng.uniform(0.2, 0.7), 1.0) if kind == "day" else \
            _hsv(rng.uniform(0.0, 0.09), rng.uniform(0.6, 0.9), 1.0)
        halo = _mix(sun, bottom if cy > hy * 0.5 else top, 0.5)
        draw.ellipse([cx - 1.5 * r, cy - 1.5 * r, cx + 1.5 * r, cy + 1.5 * r], fill=halo)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=sun)
        for _ in range(int(rng.integers(0, 4))):  # clouds: a few overlapping ellipses each
            ccx, ccy = rng.uniform(0, 1) * side, rng.uniform(0.05, horizon * 0.7) * side
            white = _mix((255, 255, 255), bottom, rng.uniform(0.0, 0.35))
            for _ in range(int(rng.integers(3, 7))):
                w, h = side * rng.uniform(0.04, 0.1), side * rng.uniform(0.02, 0.05)
                ox, oy = side * rng.uniform(-0.1, 0.1), side * rng.uniform(-0.02, 0.02)
                draw.ellipse([ccx + ox - w, ccy + oy - h, ccx + ox + w, ccy + oy + h], fill=white)

    # mountain ranges far to near (hazier far), or hills
    land_hue = rng.uniform(0.05, 0.4)
    dim = 0.45 if night else 1.0
    if rng.random() < 0.65:
        layers = int(rng.integers(1, 3))
        for k in range(layers):
            near = (k + 1) / layers
            base = horizon + 0.01
            height = rng.uniform(0.12, 0.32) * (1.1 - 0.3 * near)
            outline = _range_outline(rng, side, base, height, int(rng.integers(2, 6)))
            rock = _hsv(rng.uniform(0.55, 0.75) if rng.random() < 0.5 else land_hue, rng.uniform(0.15, 0.5),
                        rng.uniform(0.3, 0.6) * dim)
            colour = _mix(rock, bottom, 0.55 * (1 - near) + 0.1)
            draw.polygon(outline, fill=colour)
            if height > 0.2 and not night:  # snow above the snow line: the range's mask, cut at a height
                mask = Image.new("L", (side, side), 0)
                ImageDraw.Draw(mask).polygon(outline, fill=255)
                line = int((base - height * rng.uniform(0.55, 0.75)) * side)
                mask.paste(0, (0, max(line, 0), side, side))
                im.paste(_mix((250, 250, 255), colour, 0.15), (0, 0), mask)
    else:
        for k in range(int(rng.integers(1, 3))):
            colour = _hsv(land_hue + rng.uniform(-0.05, 0.05), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.65) * dim)
            draw.polygon(_hills_outline(rng, side, horizon + 0.01, rng.uniform(0.05, 0.15) * (1 - 0.3 * k)),
                         fill=_mix(colour, bottom, 0.3 - 0.15 * k))

    # the ground, lighter towards the horizon, and its texture
    ground = _hsv(land_hue + rng.uniform(-0.04, 0.04), rng.uniform(0.35, 0.8), rng.uniform(0.4, 0.75) * dim)
    far = _mix(ground, bottom, 0.3)
    steps = 12
    for i in range(steps):
        y0 = hy + (side - hy) * i / steps
        draw.rectangle([0, y0, side, hy + (side - hy) * (i + 1) / steps], fill=_mix(far, ground, i / (steps - 1)))
    texture = str(rng.choice(["grass", "speckle", "fields"]))
    if texture == "fields":  # furrows from a vanishing point on the horizon, alternating shades
        vx = rng.uniform(0.2, 0.8) * side
        n = int(rng.integers(10, 22))
        shade = _mix(ground, (0, 0, 0), rng.uniform(0.15, 0.3))
        spread = side * rng.uniform(1.5, 3.0)
        for i in range(0, n, 2):
            xa, xb = vx - spread / 2 + spread * i / n, vx - spread / 2 + spread * (i + 1) / n
            draw.polygon([(vx, hy), (xa, side), (xb, side)], fill=shade)
    else:
        count = int(rng.integers(150, 400)) if texture == "grass" else int(rng.integers(100, 300))
        ys = hy + (side - hy) * rng.uniform(0, 1, count) ** 0.8
        xs = rng.uniform(0, side, count)
        tones = rng.uniform(-0.35, 0.35, count)
        for gx, gy, tone in zip(xs, ys, tones, strict=True):
            depth = (gy - hy) / (side - hy)  # 0 at the horizon, 1 at the bottom: nearer strokes are larger
            c = _mix(ground, (255, 255, 210) if tone > 0 else (0, 0, 0), abs(tone))
            if texture == "grass":
                draw.line([(gx, gy), (gx + px * rng.uniform(-0.7, 0.7), gy - px * (1 + 3 * depth))], fill=c,
                          width=max(1, round(px * (0.5 + 0.5 * depth))))
            else:
                s = px * (0.5 + 1.0 * depth)
                draw.ellipse([gx - s, gy - s * 0.6, gx + s, gy + s * 0.6], fill=c)
    if rng.random() < 0.35:  # a road to the horizon with a dashed centre line
        vx = rng.uniform(0.3, 0.7) * side
        bx, half = rng.uniform(0.2, 0.8) * side, side * rng.uniform(0.12, 0.25)
        grey = _hsv(0, 0, rng.uniform(0.3, 0.5) * dim)
        draw.polygon([(vx - px * 0.3, hy), (vx + px * 0.3, hy), (bx + half, side), (bx - half, side)], fill=grey)
        for i in range(10):
            t0, t1 = ((i + 0.2) / 10) ** 1.8, ((i + 0.6) / 10) ** 1.8
            a = (vx + (bx - vx) * t0, hy + (side - hy) * t0)
            b = (vx + (bx - vx) * t1, hy + (side - hy) * t1)
            draw.line([a, b], fill=(240, 230, 150), width=max(1, round(px * (0.3 + 1.2 * t1))))

    # objects on the ground, far (small) to near (large)
    objects = []
    for _ in range(int(rng.integers(0, 4))):
        objects.append(("house", rng.uniform(0.05, 1.0)))
    for _ in range(int(rng.integers(1, 7))):
        objects.append(("tree", rng.uniform(0.0, 1.0)))
    if rng.random() < 0.35:
        objects.append(("fence", rng.uniform(0.3, 1.0)))
    if rng.random() < 0.25:
        objects.append(("flag", rng.uniform(0.1, 1.0)))
    for what, depth in sorted(objects, key=lambda o: o[1]):
        y = hy + (side - hy) * (0.05 + 0.9 * depth)
        scale = side * (0.25 + 0.75 * depth)
        x = rng.uniform(0.05, 0.95) * side
        if what == "house":
            _house(draw, rng, x, y, scale * rng.uniform(0.22, 0.34), px, night)
        elif what == "tree":
            _tree(draw, rng, x, y, scale * rng.uniform(0.1, 0.2), night)
        elif what == "fence":
            x0 = rng.uniform(-0.1, 0.5) * side
            _fence(draw, rng, x0, x0 + side * rng.uniform(0.3, 0.7), y, scale * rng.uniform(0.06, 0.1), px, night)
        else:
            _flag(draw, rng, x, y, scale * rng.uniform(0.25, 0.4), px)
    return np.asarray(im.reduce(SUPERSAMPLE), dtype=np.uint8)


def _check(n: int, size: int, seed: int) -> None:
    for name, value, low in (("n", n, 0), ("size", size, MIN_SIZE), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise DiffusaError(f"{name} must be an integer >= {low}, got {value!r}")
    if size > MAX_SIZE:
        raise DiffusaError(f"size must be at most {MAX_SIZE}, got {size}")


def scene_pixels(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """n scenes as uint8 (n, size, size, 3); scene i is drawn from `default_rng((seed, i))`."""
    _check(n, size, seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = render_scene(np.random.default_rng((seed, i)), size)
    return out


def render_scenes(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n scenes as float32 (n, 3, size, size) in [-1, 1]: bit for bit what the folder loader reads back from
    `write_scene_folder(folder, n, size, seed)`."""
    return uint8_to_unit(scene_pixels(n, size, seed))


def write_scene_folder(folder: str | Path, n: int, size: int = 64, seed: int = 0) -> list[Path]:
    """Write n scenes as RGB PNGs `scene_00000.png`, ... into `folder` (made if missing; files of those names are
    replaced); the paths, in order."""
    from PIL import Image

    _check(n, size, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / FILE_PATTERN.format(i)
        Image.fromarray(render_scene(np.random.default_rng((seed, i)), size), "RGB").save(path)
        paths.append(path)
    return paths


__all__ = ["FILE_PATTERN", "SUPERSAMPLE", "render_scene", "render_scenes", "scene_pixels",
           "write_scene_folder"]
