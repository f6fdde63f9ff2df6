"""Resource limits: what a request would allocate is estimated before it is made, and refused above a limit
derived from the machine's memory, with the number and the limit in the message (issue 16).

One budget: half of the memory this process may use (physical memory, or the cgroup limit where lower; 8 GiB
where neither can be read). Counts with no memory behind them (a chain's length, sampling steps, an image's
pixels) have fixed ceilings far above any real use and far below a hang.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from diffusa.errors import DiffusaError

MEMORY_FRACTION = 0.5  # of the machine's memory one request may plan to use
UNKNOWN_MEMORY = 16 << 30  # assumed when neither /proc nor the cgroup says
MAX_CHAIN_STEPS = 100_000  # process.num_steps: IDDPM trains 4000; the schedule is built step by step
MAX_SAMPLING_STEPS = 100_000  # --steps: a 1000-step chain walked 100 times over
MAX_IMAGE_PIXELS = 1 << 26  # one image file (8192 x 8192): a decompression bomb's header claims far more
# Floats a network's training step holds per input value (activations kept for the backward pass): measured on
# the default U-Net (channels 32, 28x28: ~160), the MLP (hidden 256: ~10 per coordinate x hidden/2) — an
# estimate that errs low, so that a request it refuses could never have run.
ACTIVATION_FLOATS = 64

T = TypeVar("T")


def memory_bytes() -> int | None:
    """Memory this process may use: physical memory, or the cgroup (v2 or v1) limit where lower; None if unknown."""
    found = []
    try:
        found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            found.append(int(text))
    return min(found) if found else None


def budget() -> int:
    """Bytes one request may plan to allocate: MEMORY_FRACTION of memory_bytes()."""
    return int((memory_bytes() or UNKNOWN_MEMORY) * MEMORY_FRACTION)


def size(nbytes: float) -> str:
    """1.5 GiB, 3.0 TiB, ..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError


def check_bytes(what: str, nbytes: float, advice: str = "") -> None:
    """Refuse a request whose estimated allocation `nbytes` exceeds the budget, naming both."""
    limit = budget()
    if nbytes > limit:
        tail = f"; {advice}" if advice else ""
        raise DiffusaError(f"{what} would need about {size(nbytes)}, more than this machine allows one request "
                           f"({size(limit)}, half its memory){tail}")


def tensor_bytes(shape: Sequence[int], count: int = 1, itemsize: int = 4) -> int:
    """Bytes of `count` float32 tensors of `shape` (Python integers: no overflow)."""
    return count * math.prod(int(s) for s in shape) * itemsize


def check_count(what: str, value: int, ceiling: int) -> int:
    """A count with no memory behind it (steps, a chain's length) at most `ceiling`."""
    if value > ceiling:
        raise DiffusaError(f"{what} is {value}; at most {ceiling:,} is supported")
    return value


def check_pixels(where: object, width: int, height: int) -> None:
    """An image file's header, before decoding: at most MAX_IMAGE_PIXELS (a decompression bomb claims more)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DiffusaError(f"image {where} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels per "
                           "image are read (a decompression bomb claims more)")


def build_within_budget(build: Callable[[], T], what: str, copies: int = 1) -> T:
    """Build a module after building it on the meta device (no memory) and checking that `copies` of its
    parameters and buffers (weights; + EMA and Adam's two moments when training: 4) fit the budget."""
    import torch

    try:
        with torch.device("meta"):
            probe = build()
    except (RuntimeError, ValueError, OverflowError, NotImplementedError) as e:
        if isinstance(e, OverflowError) or "overflow" in str(e).lower():  # sizes beyond int64 bytes
            raise DiffusaError(f"{what} is far too large for any machine: {str(e).splitlines()[0]:.200}") from None
        probe = None  # a network that loads pretrained weights (the Hugging Face text encoder) has no meta build
    if isinstance(probe, torch.nn.Module):
        tensors = list(probe.parameters()) + list(probe.buffers())
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        params = sum(p.numel() for p in probe.parameters())
        check_bytes(f"{what} ({params:,} parameters{', x' + str(copies) if copies > 1 else ''})", nbytes * copies,
                    "make the network smaller")
    del probe
    return build()


__all__ = ["ACTIVATION_FLOATS", "MAX_CHAIN_STEPS", "MAX_IMAGE_PIXELS", "MAX_SAMPLING_STEPS", "budget",
           "build_within_budget", "check_bytes", "check_count", "check_pixels", "memory_bytes", "size",
           "tensor_bytes"]
