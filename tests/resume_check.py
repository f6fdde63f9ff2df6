"""Exact-resume checks shared by the engine's tests (tests/test_train.py, tests/test_engine.py): a run interrupted
and resumed must leave the same checkpoint and the same log as the uninterrupted run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffusa.checkpoint import load_json, load_tensors

TIMES = ("seconds", "elapsed_s", "steps_per_s")  # wall-clock figures: the only things allowed to differ


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMES}


def log_records(run: Path) -> list[dict[str, Any]]:
    return [_untimed(json.loads(line)) for line in (run / "log.jsonl").read_text().splitlines()]


def same_checkpoint(a: Path, b: Path) -> None:
    """Identical weights, optimizer and task state, train_state.json and log records (times aside)."""
    for name in ("model.safetensors", "train_state.safetensors"):
        ta, tb = load_tensors(a / name), load_tensors(b / name)
        assert set(ta) == set(tb), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs"
    assert _untimed(load_json(a / "train_state.json")) == _untimed(load_json(b / "train_state.json"))
    assert log_records(a) == log_records(b)


def interrupt_then_resume(make: Callable[[bool], Any], at: int) -> None:
    """Ctrl-C after `at` steps of make(False), then make(True).fit() to the end."""
    first = make(False)
    step = first.train_step

    def interrupt() -> tuple:
        if first.step == at:
            raise KeyboardInterrupt
        return step()

    first.train_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert load_json(first.out / "train_state.json")["step"] == at
    make(True).fit()
