"""The digit judge: a small CNN that classifies 28x28 digits and says "not a digit", the feature network for
Frechet distance, KID and precision/recall on digit data (diffusa.metrics), with the data it is trained and
tested on: augmented digits and synthetic non-digits (scripts/train_digit_classifier.py, docs/judge.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DIGITS = 10
NOT_A_DIGIT = DIGITS  # the extra class's index
# Non-digits the judge is trained on (fresh draws each step) and tested on (fixed seeds, held-out digits)...
TRAIN_KINDS = ("noise", "gaussian", "smooth", "sparse", "blobs", "shuffled", "patches", "blurred", "partial",
               "overlay")
# ...and kinds it never sees in training, which show whether rejection generalises.
UNSEEN_KINDS = ("rectangles", "inverted", "checkerboard")


class DigitClassifier(nn.Module):
    """Conv(32)x2 - pool - Conv(64)x2 - pool - FC(128) - FC(11) on 28x28 digits in [-1, 1].

    Classes 0-9 are the digits, class 10 is "not a digit". `features(x)` is the 128-d penultimate layer used
    for Frechet distance, KID and precision/recall; `temperature` (fitted on held-out data after training,
    Guo et al. 2017) divides the logits in `probabilities`.
    """

    feature_dim = 128

    def __init__(self, num_classes: int = DIGITS + 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.register_buffer("temperature", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 128)."""
        if x.shape[-1] != 28 or x.shape[-2] != 28:
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes), before the temperature."""
        return self.head(self.dropout(self.features(x)))

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """p(digit | x) for the ten digits (B, 10), from `features`: softmax(logits / T) over every class, so
        a row sums to 1 - p(not a digit)."""
        return torch.softmax(self.head(features) / self.temperature, dim=1)[:, :DIGITS]


# -- image operations (torch only) -------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with one sigma (pixels) per example, zero padding."""
    b, c, h, w = x.shape
    r = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.to(x.dtype)[:, None].clamp_min(1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(y, k[:, None, None, :], padding=(0, r), groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], padding=(r, 0), groups=b * c)
    return y.reshape(b, c, h, w)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment_digits(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Digits as a generator may draw them: stroke thickness (a blend towards 3x3 dilation or erosion), then
    one warp of rotation (+-15 deg), scale (0.9-1.1), shear (+-0.15), shift (+-2.5 px) and an elastic
    distortion (Simard et al. 2003: uniform displacements smoothed by a Gaussian of sigma 4 px, times alpha
    up to 34 px), then ink of 0.7-1 times full contrast, a blur of up to 1 px (a third of them) and Gaussian
    noise of std up to 0.25, per pixel or in 2x2 blocks (half of them): a sampler's faint residual noise
    must not make a digit "not a digit"."""
    b = x.shape[0]
    dil = F.max_pool2d(x, 3, 1, 1)
    ero = -F.max_pool2d(-x, 3, 1, 1)
    which = torch.rand(b, generator=g)[:, None, None, None]
    amount = torch.rand(b, generator=g)[:, None, None, None]
    x = torch.where(which < 1 / 3, x + amount * (dil - x), torch.where(which > 2 / 3, x + amount * (ero - x), x))
    ang = _uniform(b, -math.pi / 12, math.pi / 12, g)
    scale = _uniform(b, 0.9, 1.1, g)
    shear = _uniform(b, -0.15, 0.15, g)
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * 2.5 * 2 / 28  # pixels -> normalised coordinates
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    disp = gaussian_blur(torch.rand(b, 2, 28, 28, generator=g) * 2 - 1, torch.full((b,), 4.0))
    alpha = _uniform(b, 0, 34, g)[:, None, None, None]
    grid = grid + (disp * alpha).permute(0, 2, 3, 1) * 2 / 28
    ink = F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros")
    ink = ink * _uniform(b, 0.7, 1.0, g)[:, None, None, None]
    ink = gaussian_blur(ink, _uniform(b, 0, 1, g) * (torch.rand(b, generator=g) < 1 / 3))
    noise = torch.randn(b, 1, 28, 28, generator=g)
    blocks = F.interpolate(torch.randn(b, 1, 14, 14, generator=g), scale_factor=2, mode="nearest")
    noise = torch.where((torch.rand(b, generator=g) < 0.5)[:, None, None, None], noise, blocks)
    std = _uniform(b, 0, 0.25, g) * (torch.rand(b, generator=g) < 0.5)
    return (ink - 1 + std[:, None, None, None] * noise).clamp(-1, 1)


def _blobs(n: int, g: torch.Generator) -> torch.Tensor:
    """1-4 Gaussian blobs (sigma 1.5-5 px, height 0.5-1) anywhere in the frame."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    img = torch.zeros(n, 28, 28)
    count = torch.randint(1, 5, (n,), generator=g)
    for k in range(4):
        c = torch.rand(n, 2, generator=g) * 24 + 2
        s = _uniform(n, 1.5, 5.0, g)[:, None, None]
        h = _uniform(n, 0.5, 1.0, g)[:, None, None] * (k < count)[:, None, None]
        img = img + h * torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / (2 * s ** 2))
    return (img.clamp(0, 1) * 2 - 1)[:, None]


def _rectangles(n: int, g: torch.Generator) -> torch.Tensor:
    """1-3 filled axis-aligned rectangles (4-20 px sides) of grey level 0.3-1."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    img = torch.zeros(n, 28, 28)
    count = torch.randint(1, 4, (n,), generator=g)
    for k in range(3):
        hw = torch.randint(4, 21, (n, 2), generator=g).float()
        top = (torch.rand(n, 2, generator=g) * (28 - hw)).floor()
        inside = ((yy >= top[:, 0, None, None]) & (yy < (top + hw)[:, 0, None, None])
                  & (xx >= top[:, 1, None, None]) & (xx < (top + hw)[:, 1, None, None]))
        level = _uniform(n, 0.3, 1.0, g)[:, None, None] * (k < count)[:, None, None]
        img = torch.maximum(img, inside * level)
    return (img * 2 - 1)[:, None]


def non_digits(kind: str, digits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """As many images that are not digits as `digits` holds (B, 1, 28, 28) in [-1, 1], of one kind:

    noise (uniform per pixel), gaussian (N(0, 1) clipped: a diffusion prior as an image), smooth (uniform noise
    at 4-14 px, upsampled), sparse (2-30% of pixels lit), blobs (1-4 Gaussian blobs), shuffled (a digit's pixels
    permuted), patches (a digit's 7x7 tiles permuted), blurred (a digit blurred with sigma 2.5-4 px), partial (a
    digit cut by a line through its centre of ink, one side kept), overlay (two digits, one shifted 4-8 px, their
    maximum); and, never used in training, rectangles, inverted (a digit in negative), checkerboard (2-7 px
    squares at a random phase)."""
    n = digits.shape[0]
    d = digits.float()
    if kind == "noise":
        return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    if kind == "gaussian":
        return torch.randn(n, 1, 28, 28, generator=g).clamp(-1, 1)
    if kind == "smooth":
        out = torch.empty(n, 1, 28, 28)
        sizes = torch.randint(4, 15, (n,), generator=g)
        for s in sizes.unique().tolist():
            sel = sizes == s
            low = torch.rand(int(sel.sum()), 1, s, s, generator=g) * 2 - 1
            out[sel] = F.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False)
        return out
    if kind == "sparse":
        p = _uniform(n, 0.02, 0.3, g)[:, None, None, None]
        return (torch.rand(n, 1, 28, 28, generator=g) < p).float() * 2 - 1
    if kind == "blobs":
        return _blobs(n, g)
    if kind == "shuffled":
        perm = torch.argsort(torch.rand(n, 28 * 28, generator=g), dim=1)
        return torch.gather(d.reshape(n, -1), 1, perm).reshape(n, 1, 28, 28)
    if kind == "patches":
        tiles = d.reshape(n, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(n, 16, 49)
        perm = torch.argsort(torch.rand(n, 16, generator=g), dim=1)
        tiles = torch.gather(tiles, 1, perm[:, :, None].expand(-1, -1, 49))
        return tiles.reshape(n, 4, 4, 7, 7).permute(0, 1, 3, 2, 4).reshape(n, 1, 28, 28)
    if kind == "blurred":
        return gaussian_blur(d + 1, _uniform(n, 2.5, 4.0, g)) - 1
    if kind == "partial":
        ink = d + 1
        yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        mass = ink.sum((1, 2, 3)).clamp_min(1e-6)
        cy, cx = (ink[:, 0] * yy).sum((1, 2)) / mass, (ink[:, 0] * xx).sum((1, 2)) / mass
        ang = _uniform(n, 0, 2 * math.pi, g)
        side = (yy - cy[:, None, None]) * torch.sin(ang)[:, None, None] \
            + (xx - cx[:, None, None]) * torch.cos(ang)[:, None, None]
        return ink * (side > 0)[:, None] - 1
    if kind == "overlay":
        other = d[torch.randperm(n, generator=g)]
        shift = torch.randint(4, 9, (n, 2), generator=g) * (torch.randint(0, 2, (n, 2), generator=g) * 2 - 1)
        moved = torch.stack([torch.roll(o, (int(s[0]), int(s[1])), dims=(1, 2))
                             for o, s in zip(other, shift, strict=True)])
        return torch.maximum(d, moved)
    if kind == "rectangles":
        return _rectangles(n, g)
    if kind == "inverted":
        return -d
    if kind == "checkerboard":
        size = torch.randint(2, 8, (n, 1, 1), generator=g)
        phase = torch.randint(0, 8, (n, 2, 1, 1), generator=g)
        yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
        cells = torch.div(yy + phase[:, 0], size, rounding_mode="floor") \
            + torch.div(xx + phase[:, 1], size, rounding_mode="floor")
        return (cells % 2).float()[:, None] * 2 - 1
    raise ValueError(f"unknown kind of non-digit {kind!r}; the kinds are {TRAIN_KINDS + UNSEEN_KINDS}")
