"""The benchmark scripts run in a quick mode, so they cannot rot (the other half: test_benchmarks_more.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_quick import check_quick_mode

pytestmark = pytest.mark.benchmark  # make test-benchmarks, not make test (the Makefile)


@pytest.mark.parametrize("script", ["toys.py", "speed.py", "memory.py", "time_to_quality.py", "streaming.py",
                                    "serve_load.py", "distill_mnist.py", "inpaint_posterior.py"])
def test_benchmark_quick_mode(script: str, tmp_path: Path) -> None:
    check_quick_mode(script, tmp_path)
