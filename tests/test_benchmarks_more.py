"""The benchmark scripts run in a quick mode, so they cannot rot (the other half: test_benchmarks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_quick import check_quick_mode

pytestmark = pytest.mark.benchmark  # make test-benchmarks, not make test (the Makefile)


@pytest.mark.parametrize("script", ["iddpm_repro.py", "nfe.py", "guidance.py", "ldm.py", "two_processes.py",
                                    "reflow_toy.py", "editing.py", "sketches.py", "inpaint_seeds.py",
                                    "autoguidance.py"])
def test_benchmark_quick_mode(script: str, tmp_path: Path) -> None:
    check_quick_mode(script, tmp_path)


def test_a_benchmark_stage_on_a_missing_run_says_so_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from benchmark_quick import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "guidance.py"), "prompts", "--text-run",
                           str(tmp_path / "nope"), "--raw", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: run folder {tmp_path / 'nope'} does not exist; the shipped "
                                                "models are mnist-pixel, mnist-text, mnist-sr, mnist-text-1step, "
                                                "mnist-inpaint"]


def test_inpaint_seeds_refuses_more_digits_than_the_split_holds(tmp_path: Path) -> None:
    """--n above the split's size (1,000 held-out digits) is one line and nothing written, not an IndexError."""
    import subprocess
    import sys

    from benchmark_quick import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inpaint_seeds.py"), "--n", "1001", "--raw",
                           str(tmp_path / "r.json"), "--out", str(tmp_path / "t.md")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "the test split holds 1000 digits" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())
