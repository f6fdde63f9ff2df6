"""Issue 17 item 5, two diffusa processes on two cores: OpenMP's threads wait passively (set by `import diffusa`
before torch loads, unless the user chose otherwise), and `--threads` (default auto: 1 for point data) sets torch's
intra-op threads of the command. The speed itself is benchmarks/two_processes.py's to measure."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from diffusa.cli_common import thread_count
from diffusa.threads import MAX_THREADS, auto_threads, use_threads

WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -c code` in a fresh process whose environment has no OpenMP wait settings but `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})


def test_import_sets_a_passive_wait_policy_before_torch_loads() -> None:
    code = "import diffusa, os; print(os.environ['OMP_WAIT_POLICY'], 'torch' in __import__('sys').modules)"
    proc = _python(code, OMP_DISPLAY_ENV="VERBOSE")  # libgomp prints the settings it read as torch loaded
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PASSIVE", "True"]
    if "GOMP_SPINCOUNT" not in proc.stderr:
        pytest.skip("this torch's OpenMP runtime is not libgomp: its settings cannot be read back")
    assert "GOMP_SPINCOUNT = '0'" in proc.stderr, proc.stderr  # took effect: waiting threads never spin


@pytest.mark.parametrize(("var", "value", "policy"), [("OMP_WAIT_POLICY", "ACTIVE", "ACTIVE"),
                                                      ("OMP_WAIT_POLICY", "passive", "passive"),
                                                      ("GOMP_SPINCOUNT", "300000", "unset")])
def test_a_users_own_setting_is_kept(var: str, value: str, policy: str) -> None:
    code = "import diffusa, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'), os.environ.get('GOMP_SPINCOUNT'))"
    proc = _python(code, **{var: value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [policy, value if var == "GOMP_SPINCOUNT" else "None"]


def test_the_policy_says_when_it_is_too_late(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusa.threads import set_wait_policy

    for var in WAIT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert set_wait_policy() is False  # torch is loaded in this process: OpenMP has read its settings
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # still set, for the processes this one starts


def test_the_thread_count_flag() -> None:
    assert thread_count("auto") == 0 and thread_count("1") == 1 and thread_count(str(MAX_THREADS)) == MAX_THREADS
    for bad in ("0", "-1", "abc", "", "1.5", "1e3", "٣", str(MAX_THREADS + 1), "100000", " 2"):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a number of threads"):
            thread_count(bad)


def test_the_auto_rule_and_use_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_threads(is_image=False) == 1  # point data: the MLP's ops are too small to split
    assert auto_threads(is_image=True) is None  # images: torch's default, one per core
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert use_threads(0, is_image=True) == 2 and use_threads(None, is_image=True) == 2
        assert use_threads(0, is_image=False) == 1
        assert use_threads(3, is_image=False) == 3
    finally:
        torch.set_num_threads(before)


def _spy(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> list[int]:
    """Record torch's thread count each time cls.name runs."""
    seen: list[int] = []
    original: Callable[..., Any] = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return seen


@pytest.mark.parametrize(("flag", "inside"), [([], 1), (["--threads", "auto"], 1), (["--threads", "3"], 3)])
def test_sample_threads_reach_torch(cli, moons_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    flag: list[str], inside: int) -> None:
    from diffusa.pipelines.pipeline import Pipeline

    seen = _spy(monkeypatch, Pipeline, "__call__")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        res = cli("sample", moons_run, "--n", "4", "--steps", "2", "--out", tmp_path / "s.npz", *flag)
        assert res.code == 0, res.err
        assert seen == [inside]
        assert torch.get_num_threads() == 2  # main() gives the caller its own count back
    finally:
        torch.set_num_threads(before)


def test_an_image_run_keeps_torchs_default(cli, digits_run: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusa.pipelines.pipeline import Pipeline

    seen = _spy(monkeypatch, Pipeline, "__call__")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli("sample", digits_run, "--n", "2", "--steps", "2", "--out", tmp_path / "s.png").code == 0
        assert cli("sample", digits_run, "--n", "2", "--steps", "2", "--out", tmp_path / "t.png",
                   "--threads", "1").code == 0
        assert seen == [2, 1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("flag", "inside", "saved"), [([], 1, 0), (["--threads", "2"], 2, 2)])
def test_train_threads_map_to_the_config(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str],
                                         inside: int, saved: int) -> None:
    from diffusa.engine import Engine

    seen = _spy(monkeypatch, Engine, "fit")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        res = cli("train", "--data", "moons", "--out", tmp_path / "r", "--quiet", "--steps", "2", "--set",
                  "train.sample_n=4", "--set", "train.sample_steps=2", "--set", "model.net.hidden=16", *flag)
        assert res.code == 0, res.err
        assert seen == [inside]
        assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["train"]["threads"] == saved
    finally:
        torch.set_num_threads(before)
