"""What every way a pipeline draws shares (`Pipeline.__call__`, img2img, inpaint, upscale): the defaults and the
one place they are applied (`resolve_sampling`), the refusals of sampling arguments, the device check, the grid,
the count of network calls. A module of its own, so that pipelines/edit.py and pipelines/upscale.py import it
rather than pipeline.py (no import circle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.pipelines.request import check_seed
from diffusa.runs import few_steps_sampling, recommended_sampling

DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp_2m", 20  # DPM-Solver++(2M): the best at 10-20 NFE (docs/benchmarks.md)
DEFAULT_N, DEFAULT_BATCH = 16, 250
CONSISTENCY_STEPS = 1  # a consistency model's (`diffusa distill`) default: one network evaluation
# the rule of `resolve_sampling` in words, for help texts (the command line, the API's schema)
SAMPLER_DEFAULT_TEXT = (f"the model's recommended sampler (config.json \"sampling\"; at few steps its \"few_steps\" "
                        f"one), else {DEFAULT_SAMPLER}")
STEPS_DEFAULT_TEXT = f"the model's recommended steps (config.json \"sampling\"), else {DEFAULT_STEPS}"
ETA_DEFAULT_TEXT = ("stochasticity of ddim, euler_ancestral, dpmpp_2m_sde (0 = deterministic; default: the model's "
                    "recommended eta with its recommended sampler, config.json \"sampling\" (or its \"few_steps\" "
                    "table's, at few steps), else the sampler's own: "
                    "ddim 0, the others 1)")

# callback(step, t, x_t, x0) after each step: `step` 0-based, x_t the state at time t, x0 the step's prediction
StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], Any]


class _StopSampling(Exception):  # noqa: N818 (control flow, not an error)
    """Raised through a sampler by the step hook when the callback asks to stop; carries the latest x0."""

    def __init__(self, step: int, x0: torch.Tensor) -> None:
        super().__init__(step)
        self.step, self.x0 = step, x0


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DiffusaError(f"{name} must be a positive integer, got {value!r}")
    return value


def _config_of(model: Any) -> tuple[Mapping[str, Any] | None, str | Path]:
    """(config.json's content, its path for messages) of a Pipeline, a Run or a config dict; (None, ...) for None."""
    run = getattr(model, "run", model)  # a Pipeline's Run
    meta = getattr(run, "meta", run)  # a Run's config.json
    path = getattr(run, "path", None)
    return (meta if isinstance(meta, Mapping) else None,
            "config.json" if path is None else Path(path) / "config.json")


def model_defaults(model: Any) -> tuple[str, int]:
    """(sampler, steps) a model draws with where it is not told: its recommendation (config.json's "sampling",
    `runs.recommended_sampling`), else the kind's: ("consistency", CONSISTENCY_STEPS) for a consistency model
    (`diffusa distill`; its grid has fewer steps than it has levels), (DEFAULT_SAMPLER, DEFAULT_STEPS) for any other.
    `model`: a Pipeline, a Run, a config.json's content (a dict: the server reads it before loading anything), or
    None (the global defaults)."""
    meta, cfg_file = _config_of(model)
    if meta is None:
        return DEFAULT_SAMPLER, DEFAULT_STEPS
    rec = recommended_sampling(meta, cfg_file)
    if rec is not None:
        return rec
    return ("consistency", CONSISTENCY_STEPS) if "consistency" in meta else (DEFAULT_SAMPLER, DEFAULT_STEPS)


def resolve_sampling(model: Any, sampler: Any = None, steps: Any = None, batch_size: Any = None, *,
                     task_sampler: str | None = None) -> tuple[Any, Any, Any]:
    """The one place where None becomes a default, for every way a pipeline draws (`__call__`, img2img, inpaint,
    upscale, cascade), the command line and the server: (sampler, steps, batch_size), each as given unless None.
    sampler: `task_sampler` (a task's own default: inpainting's ancestral, measured for RePaint), else the
    model's recommended sampler (config.json "sampling"; its "few_steps" sampler where the draw's steps are at most
    that table's max_steps, `runs.few_steps_sampling`), else DEFAULT_SAMPLER ("consistency" for a consistency
    model: `model_defaults`). steps: the model's recommended steps, else DEFAULT_STEPS (a consistency model's: 1),
    whichever sampler is used (a recommendation's steps are a budget for the model, not a property of one sampler).
    batch_size: DEFAULT_BATCH. `model` as `model_defaults`. What is given passes through unchecked
    (`check_sampling` refuses it)."""
    if sampler is None or steps is None:
        default_sampler, default_steps = model_defaults(model)
        if steps is None:
            steps = default_steps
        if sampler is None:
            few = _few_steps(model, steps)
            sampler = task_sampler or (default_sampler if few is None else few["sampler"])
    return sampler, steps, DEFAULT_BATCH if batch_size is None else batch_size


def _few_steps(model: Any, steps: Any) -> dict[str, Any] | None:
    """The model's "few_steps" recommendation where it applies at `steps` (`runs.few_steps_sampling`), else None.
    Both callers have checked the entry (`recommended_sampling`, through `model_defaults` or directly) first."""
    meta, _ = _config_of(model)
    if meta is None or isinstance(steps, bool) or not isinstance(steps, int):
        return None  # steps that are not a count are check_sampling's to refuse
    return few_steps_sampling(meta, steps)


def resolve_recommended(model: Any, sampler: str, spacing: str | None, eta: float | None,
                        steps: Any = None) -> tuple[str | None, float | None]:
    """(spacing, eta) a draw of `steps` uses: each as given; else the model's recommendation for `sampler` at those
    steps: the "few_steps" table's "spacing" and "eta" when it applies and names `sampler`, else the "sampling"
    entry's when `sampler` is its recommended sampler (a grid and a stochasticity are measured with their sampler:
    point runs draw with DPM-Solver++(2M) SDE on the logsnr-unit grid, and at 10 steps or fewer with UniPC on it,
    docs/results/toys.md; the shipped mnist-pixel with the SDE solver at eta 3, docs/demo.md); else None, the
    sampler's own default. `model` as `model_defaults`."""
    if spacing is not None and eta is not None:
        return spacing, eta
    meta, cfg_file = _config_of(model)
    rec = None if meta is None else recommended_sampling(meta, cfg_file)  # checked, as model_defaults reads it
    few = _few_steps(model, steps)
    if few is not None and few["sampler"] == sampler:
        entry = few
    else:
        entry = meta["sampling"] if rec is not None and rec[0] == sampler else {}
    return (entry.get("spacing") if spacing is None else spacing,
            entry.get("eta") if eta is None else eta)


def check_sampling(sampler: Any, steps: Any, batch_size: Any, seed: Any, eta: Any, callback: Any) -> int:
    """The refusals of sampling arguments shared by every way a pipeline draws (`__call__`, img2img, inpaint),
    before anything is drawn; the checked seed."""
    from diffusa.samplers import SAMPLERS
    from diffusa.samplers.common import check_eta

    if not isinstance(sampler, str):
        raise DiffusaError(f"sampler must be a sampler's name (a string), got {type(sampler).__name__}")
    if sampler not in SAMPLERS:
        raise DiffusaError(f"unknown sampler {sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
    _positive_int(steps, "steps")
    _positive_int(batch_size, "batch_size")
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise DiffusaError(f"eta must be a number, got {eta!r}")
        check_eta(float(eta))  # the samplers' own rule
    if callback is not None and not callable(callback):
        raise DiffusaError(f"callback must be a function (step, t, x_t, x0), got {type(callback).__name__}")
    return check_seed(seed)


@contextmanager
def network_calls(*nets: torch.nn.Module) -> Iterator[list[int]]:
    """Count the networks' forward calls (the NFE a sampler spent; an autoguided draw asks two) in `counter[0]`
    while the block runs; the slices of one call run on worker threads count once."""
    from diffusa.threads import counts_as_call

    counter = [0]

    def count(*_: Any) -> None:
        if counts_as_call():  # a call sliced over threads (`threads.batch_call`) is one evaluation
            counter[0] += 1

    handles = [net.register_forward_hook(count) for net in nets]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def sampler_kwargs(eta: float | None, variance: str | None) -> dict[str, Any]:
    """The sampler-specific options that were given."""
    return {k: v for k, v in (("eta", eta), ("variance", variance)) if v is not None}


def check_device(device: Any) -> torch.device:
    """A device this machine has: "cpu", "cuda" / "cuda:N" (with CUDA), "mps" (on Apple silicon), or another that
    torch reports available; one DiffusaError naming `device` otherwise, before anything loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DiffusaError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffusaError(f"device {device!r}: this machine has no CUDA device available (use device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DiffusaError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return dev
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:  # xpu and the like: torch.<type>.is_available(); meta and backends without one are refused
        available = getattr(getattr(torch, dev.type, None), "is_available", lambda: False)()
    if not available:
        raise DiffusaError(f"device {device!r}: not available on this machine (use device='cpu')")
    return dev


def sampling_grid(den: Any, steps: int, spacing: str | None, sampler: str) -> torch.Tensor:
    """The sampling grid (samplers.make_grid), its steps refusal naming the argument `steps` rather than the
    command line's --steps (a discrete chain's grid has at most its training steps)."""
    from diffusa.samplers import make_grid

    try:
        return make_grid(den, steps, spacing, sampler)
    except DiffusaError as e:
        if str(e).startswith("--steps "):
            raise DiffusaError(str(e).removeprefix("--")) from None
        raise


__all__ = [
    "CONSISTENCY_STEPS",
    "DEFAULT_BATCH",
    "DEFAULT_N",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "ETA_DEFAULT_TEXT",
    "SAMPLER_DEFAULT_TEXT",
    "STEPS_DEFAULT_TEXT",
    "StepCallback",
    "check_device",
    "check_sampling",
    "model_defaults",
    "network_calls",
    "resolve_recommended",
    "resolve_sampling",
    "sampler_kwargs",
    "sampling_grid",
]
