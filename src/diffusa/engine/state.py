"""A run folder's checkpoint as one atomic unit, and the checks on an output folder before training starts.

The checkpoint is ONE file, `train_state.safetensors`: the weights, the EMA weights, the optimizer's tensors, the
task's tensors, and — in its metadata — the JSON state (step, optimizer settings, gradient scaler, the log's
running window, training seconds, the task's values). It is written to a temporary file and renamed into place,
so a kill at any moment leaves either the previous checkpoint or the new one, whole. What is derived from it is
written after the rename and rewritten on resume: `model.safetensors` (the EMA weights that sampling reads) and
`train_state.json` (a readable copy of the state). On resume the log keeps the records up to the checkpoint's step
(a torn last line is dropped with a warning), and temporaries of killed saves are removed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from diffusa.checkpoint import (
    check_parents,
    load_json,
    load_tensors,
    load_tensors_and_metadata,
    save_json,
    save_tensors,
    write_text,
)
from diffusa.errors import DiffusaError

STATE = "train_state.safetensors"  # the checkpoint
STATE_JSON = "train_state.json"  # its readable copy (the authority of runs saved before checkpoints were one file)
WEIGHTS = "model.safetensors"  # the averaged weights sampling reads
EMA_PREFIX = "ema."
WEIGHT_FILES = (STATE, WEIGHTS, "autoencoder.safetensors", "classifier.safetensors")


def never_checkpointed(out: Path) -> bool:
    """A folder training started in and was stopped before its first checkpoint: config.json and no weights."""
    return (out / "config.json").exists() and not any((out / name).exists() for name in WEIGHT_FILES)


def check_out(out: str | Path, resume: bool = False, init: str | Path | None = None, what: str = "a run") -> None:
    """Refuse an output folder before any work is done: a file, a run with weights without --resume, a --resume
    with nothing to resume, --init with --resume. A run stopped before its first checkpoint may start again, with
    or without --resume."""
    out = Path(out)
    if init is not None and resume:
        raise DiffusaError("--init starts a new run from another's weights; --resume continues this one: pick one")
    try:
        if out.exists() and not out.is_dir():
            raise DiffusaError(f"--out {out} exists and is not a folder")
        check_parents(out)
    except OSError as e:
        raise DiffusaError(f"--out {out}: {e.strerror or e}") from None
    if (out / "config.json").exists() and not resume and not never_checkpointed(out):
        raise DiffusaError(f"{out} already holds {what}; pass --resume to continue it or choose another --out")
    if resume and not (out / STATE).exists() and not never_checkpointed(out):
        raise DiffusaError(f"cannot resume: {out} has no checkpoint ({STATE})")


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     averaged: dict[str, torch.Tensor] | None, weights: dict[str, torch.Tensor]) -> None:
    """Commit one checkpoint (the rename of `train_state.safetensors`), then write what derives from it.
    `averaged`: the EMA weights (None without EMA); `weights`: the weights sampling reads."""
    everything = dict(tensors)
    if averaged is not None:
        everything.update({EMA_PREFIX + k: v for k, v in averaged.items()})
    save_tensors(out / STATE, everything, {"state": json.dumps(state)})
    publish(out, state, weights)


def publish(out: Path, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """model.safetensors and train_state.json from a committed checkpoint (each written atomically)."""
    save_tensors(out / WEIGHTS, weights, {"step": str(state["step"])})
    save_json(out / STATE_JSON, state)


def read_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
    """(tensors, state, EMA weights or None) of the folder's checkpoint. A run saved before checkpoints were one
    file keeps its state in train_state.json and its EMA weights in model.safetensors; both must agree on the
    step."""
    tensors, metadata = load_tensors_and_metadata(out / STATE)
    if "state" in metadata:
        try:
            state = json.loads(metadata["state"])
        except json.JSONDecodeError:
            raise DiffusaError(f"{out / STATE}: its state is not valid JSON; the checkpoint is damaged") from None
        ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)} or None
        tensors = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    else:
        state = load_json(out / STATE_JSON)
        ema = load_tensors(out / WEIGHTS)
    if not isinstance(state, dict) or tensors.get("step", torch.tensor(-1)).item() != state.get("step") \
            or "optimizer" not in state:
        raise DiffusaError(f"{out}: the checkpoint's state and tensors disagree; the checkpoint is damaged")
    return tensors, state, ema


def trim_log(out: Path, step: int) -> None:
    """Keep the log's records up to `step` (those after it came from steps the resumed run repeats); a torn line,
    left by a kill mid-write, is dropped with a warning."""
    path = out / "log.jsonl"
    if not path.exists():
        return
    kept, torn = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        at = record.get("step") if isinstance(record, dict) else None
        if isinstance(at, int) and not isinstance(at, bool) and at <= step:
            kept.append(line)
        elif not isinstance(at, int) or isinstance(at, bool):
            torn += 1  # not a record this engine wrote: dropped like a torn line
    if torn:
        print(f"warning: {path}: dropped {torn} torn or foreign line(s) (a run killed while writing its log?)",
              file=sys.stderr)
    write_text(path, "".join(line + "\n" for line in kept))


__all__ = ["STATE", "STATE_JSON", "WEIGHTS", "check_out", "never_checkpointed", "publish",
           "read_checkpoint", "trim_log", "write_checkpoint"]
