"""Editing an image with any trained model and any sampler, no retraining: SDEdit (img2img) and RePaint
(inpainting). Written against the one currency (noise levels, a Denoiser, stateless samplers), so every process,
sampler and guidance works; `diffusa.pipelines.edit` turns user requests into these calls.

Strength. `strength` s in (0, 1] names a noise level the same way on every process: the one where time s sits on
the continuous cosine schedule (Nichol & Dhariwal 2021), i.e. the noised image is, up to scale,
cos(pi s / 2) x0 + sin(pi s / 2) eps: log-SNR lambda = 2 log cot(pi s / 2). On the shipped models (cosine DDPM)
this is the time axis itself, as SDEdit's t0 (Meng et al. 2022) and diffusers' strength are; on VE, EDM, VP or flow
it is the same signal-to-noise ratio. s = 1 is the noisiest level, the start of the sampler's grid.

The grid. SDEdit runs the sampler's own grid for `steps` from t_start down: t_start, then the grid's points below
it (Meng et al. 2022, Alg. 1 on a sub-grid), so strength s costs about s x steps network evaluations and
strength 1 is exactly the grid of plain sampling. It never rounds to zero steps: t_start is at least the grid's
least positive time, so there is always one step.

RePaint (Lugmayr et al. 2022, Alg. 1). Before every reverse step t -> s the known pixels are replaced by the
original noised to t with fresh noise; with resampling, after reaching certain steps the state is noised back
`jump_length` steps with the forward process q(x_t' | x_t) and denoised again, `jump_n_sample - 1` times
(`repaint_schedule`, the official `get_schedule_jump`). Each reverse step is the sampler's own step over the
two-point grid [t, s], so every sampler works (rk45 integrates the interval adaptively); a multistep solver
(dpmpp_2m, dpmpp_3m, dpmpp_2m_sde) then takes its first-order step (DDIM, DPM-Solver++(1)-SDE) every time:
replacement and jumps change x_t between steps, so past x0 estimates belong to another trajectory and its
history would be stale.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import Process, as_time, expand_as
from diffusa.samplers.common import randn_like

# a first step shorter than this fraction of the next one is merged into it (t_start just above a grid point)
MERGE_FRACTION = 0.25

StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], Any]


def check_strength(strength: Any) -> float:
    """strength: a finite number in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < float(strength) <= 1:
        raise DiffusaError(f"strength must be a number in (0, 1] (0: the image unchanged is not an edit; 1: from "
                           f"pure noise), got {strength!r}")
    return float(strength)


def strength_log_snr(strength: float) -> float:
    """lambda = 2 log cot(pi s / 2): the log-SNR of time s on the continuous cosine schedule (Nichol & Dhariwal
    2021, eq. 17 without the offset), -inf at s = 1."""
    s = check_strength(strength)
    if s == 1:
        return -math.inf
    return 2 * (math.log(math.cos(math.pi * s / 2)) - math.log(math.sin(math.pi * s / 2)))


def strength_time(process: Process, strength: float, grid: torch.Tensor) -> float:
    """t_start for `strength` on `process`: the time whose log-SNR is `strength_log_snr(strength)`, kept within
    the sampler's grid: at most grid[0] (a process whose prior is less noisy than that level, or a grid that
    starts below t = 1, starts there) and at least the grid's least positive time (one step always runs)."""
    lam = strength_log_snr(strength)
    top = float(grid[0])
    if math.isinf(lam):
        return top
    t = float(process.t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))
    if not math.isfinite(t):  # a process whose inverse overflows at the extremes
        t = top if lam < 0 else 0.0
    least = float(grid[grid > 0].min())
    return min(max(t, least), top)


def start_grid(grid: torch.Tensor, t_start: float) -> torch.Tensor:
    """t_start followed by the grid's points below it; a point closer to t_start than MERGE_FRACTION of the step
    after it is dropped (the first step would be a sliver that spends a network evaluation for nothing)."""
    below = grid[grid < t_start]
    if len(below) >= 2 and t_start - float(below[0]) < MERGE_FRACTION * float(below[0] - below[1]):
        below = below[1:]
    return torch.cat([torch.tensor([t_start], dtype=grid.dtype), below])


def noise_to(process: Process, x0: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
    """x_t = alpha(t) x0 + sigma(t) noise (the forward process, Ho et al. 2020, eq. 4, in noise levels)."""
    return process.q_sample(x0, as_time(t, x0.shape[0], x0.device), noise)


# -- RePaint ---------------------------------------------------------------------------------------------------
def check_jumps(jump_length: Any, jump_n_sample: Any, steps: int) -> tuple[int, int]:
    """Positive integers; with resampling (jump_n_sample > 1) a jump must fit below the grid's steps."""
    for name, v in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DiffusaError(f"{name} must be a positive integer, got {v!r}")
    if jump_n_sample > 1 and jump_length >= steps:
        raise DiffusaError(f"jump_length {jump_length} leaves no room for a jump on a grid of {steps} steps: use a "
                           "jump_length below steps (or jump_n_sample=1 for replacement without jumps)")
    from diffusa.limits import MAX_SAMPLING_STEPS, check_count

    check_count("RePaint's reverse steps (steps + jumps)", repaint_steps(steps, jump_length, jump_n_sample),
                MAX_SAMPLING_STEPS)
    return jump_length, jump_n_sample


def repaint_steps(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """The reverse steps RePaint takes on a grid of `steps` steps (`reverse_steps` of `repaint_schedule`, counted
    without walking it): steps, plus jump_length repeated jump_n_sample - 1 times at each jump; `steps` alone for
    jump_n_sample <= 1 (no jumps)."""
    jumps = len(range(0, steps - jump_length, jump_length)) if jump_n_sample > 1 else 0
    return steps + (jump_n_sample - 1) * jump_length * jumps


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The positions 0..steps on a grid of `steps` steps that RePaint visits, in order (Lugmayr et al. 2022, Sec.
    4.2, Fig. 3; the official `get_schedule_jump` without its second and third jump levels).

    In RePaint's indices (t_T = steps; the state at t in steps-1 .. -1, t = -1 clean) the walk goes down one
    step at a time; on arriving at t in {0, j, 2j, ...} below steps - j, it goes back up j steps, at most
    n - 1 times for each such t. Position = steps - 1 - t, so 0 is grid[0] (the noise) and `steps` is t = 0.
    A move +1 is a reverse step, -1 a forward noising step. With n = 1 it is 0, 1, ..., steps.
    """
    check_jumps(jump_length, jump_n_sample, steps)
    jumps = {t: jump_n_sample - 1 for t in range(0, steps - jump_length, jump_length)}
    t = steps
    ts = []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return [steps - 1 - t for t in ts]


def reverse_steps(schedule: list[int]) -> int:
    """How many reverse (denoising) steps a schedule takes."""
    return sum(b > a for a, b in pairwise(schedule))


class _StepDone(Exception):  # noqa: N818 (control flow)
    def __init__(self, x: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.x, self.x0 = x, x0


def sampler_step(fn: Callable[..., torch.Tensor], denoiser: Denoiser, x: torch.Tensor, t: float, s: float, *,
                 cond: Any = None, generator: torch.Generator | None = None,
                 options: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step t -> s of any sampler: (x_s, the step's x0 prediction).

    It runs over the grid [t, s, 0] and stops after its first step (the samplers' callback reports x_s), so a
    sampler that ends its grid with a denoising step (rk45) still integrates to s; a step to s = 0 runs [t, 0]."""
    found: dict[str, torch.Tensor] = {}

    def hook(info: dict[str, Any]) -> None:
        found["x"], found["x0"] = info["x"], info["x0"]
        if s > 0:
            raise _StepDone(info["x"], info["x0"])

    grid = torch.tensor([t, s, 0.0] if s > 0 else [t, 0.0], dtype=torch.float64)
    try:
        with torch.no_grad():
            fn(denoiser, x, grid, cond=cond, generator=generator, callback=hook, **(options or {}))
    except _StepDone as done:
        return done.x, done.x0
    return found["x"], found["x0"]


def repaint(denoiser: Denoiser, known: torch.Tensor, keep: torch.Tensor, x_T: torch.Tensor, grid: torch.Tensor,
            schedule: list[int], fn: Callable[..., torch.Tensor], *, cond: Any = None,
            generator: torch.Generator | None = None, options: dict[str, Any] | None = None,
            callback: StepCallback | None = None) -> tuple[torch.Tensor, int | None]:
    """RePaint (Lugmayr et al. 2022, Alg. 1) over `schedule` (positions on `grid`, `repaint_schedule`).

    known: the clean data x0 whose `keep` part (bool, broadcast to it: True = known) is kept; x_T: the start at
    grid[0]. Before each reverse step t -> s the known part becomes alpha_t x0 + sigma_t z (eq. 8, fresh z), then
    the sampler's step (`sampler_step`) moves the whole state to s; a forward move s -> t draws
    x_t ~ q(x_t | x_s) = N(alpha_ts x_s, sigma2_ts I) (eq. 9, the "jump"). The result's known part is x0 exactly.
    callback(k, s, x_s, x0) after reverse step k (0-based, counting repeats); returning True stops there, and the
    result is that step's x0 prediction (composited). Returns (x0, the step stopped at or None).
    """
    proc = denoiser.process
    x = x_T
    k = 0
    for a, b in pairwise(schedule):
        t, s = float(grid[a]), float(grid[b])
        if b == a + 1:
            x = torch.where(keep, noise_to(proc, known, t, randn_like(known, generator)), x)
            x, x0 = sampler_step(fn, denoiser, x, t, s, cond=cond, generator=generator, options=options)
            if callback is not None and callback(k, s, x, x0):
                return torch.where(keep, known, x0), k
            k += 1
        elif b == a - 1:  # t < s: back up to the noisier s
            alpha_st, sigma2_st = proc.transition(as_time(s, 1), as_time(t, 1))
            x = expand_as(alpha_st[0], x) * x + expand_as(sigma2_st[0].sqrt(), x) * randn_like(x, generator)
        else:
            raise ValueError(f"a RePaint schedule moves one step at a time, got {a} -> {b}")
    return torch.where(keep, known, x), None


__all__ = ["MERGE_FRACTION", "check_jumps", "check_strength", "noise_to", "repaint", "repaint_schedule",
           "repaint_steps", "reverse_steps", "sampler_step", "start_grid", "strength_log_snr", "strength_time"]
