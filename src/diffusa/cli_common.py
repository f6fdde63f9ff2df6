"""Argument types, output checks and the JSON result printer shared by the command-line modules."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from diffusa.checkpoint import guard_output, write_text
from diffusa.errors import DiffusaError
from diffusa.threads import MAX_THREADS


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


__all__ = ["non_negative_float", "positive_float", "positive_int"]


def force_flag(parser: argparse.ArgumentParser) -> None:
    """--force: outputs may replace existing files diffusa did not write (never a trained folder's own files)."""
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output file that diffusa did not write")


def png_out(path: str, flag: str, force: bool = False) -> Path:
    """A picture a flag names: a .png file that is no trained folder's own file (nor, without `force`, a file
    diffusa did not write)."""
    out = guard_output(path, flag, force)
    if out.suffix.lower() != ".png":
        raise DiffusaError(f"{flag} writes a PNG picture: name a .png file, got {out.name!r}")
    return out


def thread_count(text: str) -> int:
    """argparse type of --threads: 'auto' (0, as train.threads spells it) or an integer 1..MAX_THREADS (0 itself
    is refused: zero threads cannot run anything, and 'auto' says what it means)."""
    if text == "auto":
        return 0
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_THREADS:  # no sign, '1e3', '٣'
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads 1..{MAX_THREADS}, got {text!r}")
    return int(text)


AUTO_HELP = "1 for point data, one per core for images"


def autoguidance_flags(parser: argparse.ArgumentParser) -> None:
    """Add --autoguidance W and --guide to a command that draws samples (`Pipeline.__call__`'s keywords)."""
    parser.add_argument("--autoguidance", type=float, metavar="W",
                        help="autoguidance (Karras et al. 2024): D_guide + W (D - D_guide), two network calls per "
                             "step; W = 1.5 for a ten-minute mnist run (docs/demo.md); default: the model's "
                             "recommended W with its recommended sampler (config.json \"sampling\": mnist-pixel's "
                             "1.5), else none; 1 draws without")
    parser.add_argument("--guide", metavar="SNAPSHOT|RUN",
                        help="autoguidance's weaker model: step_N (a snapshot the run kept), a .safetensors file of "
                             "the run's network, or another run (default: the model's own guide, config.json "
                             "\"sampling\" \"guide\", else the snapshot at train.guide_at)")


def threads_flag(parser: argparse.ArgumentParser, default_help: str = AUTO_HELP) -> None:
    """Add --threads to a command's parser (every command that runs a network takes it)."""
    parser.add_argument("--threads", type=thread_count, default=None, metavar="N|auto",
                        help=f"torch threads (default auto: {default_help}); fewer leave cores to other work")


def print_json(obj: dict[str, Any], out: str | None) -> None:
    """Print a result as JSON, and write it to `out` too when given."""
    from diffusa._version import __version__

    text = json.dumps({**obj, "diffusa_version": __version__}, indent=2)  # the mark of a file diffusa wrote
    print(text)
    if out:
        write_text(Path(out), text + "\n")
