"""Training for a time budget instead of a step count (`diffusa train --budget MINUTES`, `train.budget_minutes`).

The step count is fitted once, at the end of the learning rate's warm-up: the speed is measured over the warm-up's
last three quarters, one checkpoint and one preview are timed, and the largest number of steps whose estimated time
(steps, the periodic checkpoints and previews, the final save) fits the budget is chosen. Before that point nothing
depends on the total (the warm-up's rate does not, the cosine decay starts after it), so the run is exactly the
run `--steps N` would train with the N it chose, which config.json records as `train.steps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffusa.config import TrainConfig
from diffusa.errors import DiffusaError

FIT_STEP_MAX = 100  # fit no later than this (or the end of the warm-up, if earlier)
FIT_STEP_MIN = 10  # a warm-up shorter than this leaves too few steps to time
UNFITTED_STEPS = 10**9  # train.steps until the fit: larger than any run, so no periodic rule fires on it


def fit_step(tc: TrainConfig) -> int:
    """The step after which the budget's step count is fixed: the end of the warm-up, at most FIT_STEP_MAX steps
    (a constant learning rate does not depend on the total at all). Refused in one line where the warm-up is too
    short to time."""
    if tc.lr_decay == "constant":
        return FIT_STEP_MAX
    if tc.warmup < FIT_STEP_MIN:
        raise DiffusaError(f"train.budget_minutes needs train.warmup >= {FIT_STEP_MIN} (got {tc.warmup}): the steps "
                           "are counted during the warm-up, before the learning-rate decay depends on them")
    return min(tc.warmup, FIT_STEP_MAX)


def multiples(every: int, after: int, upto: int) -> int:
    """How many multiples of `every` lie in (after, upto]; 0 when `every` is 0 (never)."""
    return upto // every - after // every if every > 0 and upto > after else 0


@dataclass(frozen=True)
class Fit:
    """What the fit measured and chose."""

    steps: int
    steps_per_s: float
    checkpoint_s: float
    preview_s: float
    estimated_s: float  # the whole training, estimated, for `steps`

    def record(self, tc: TrainConfig, fitted_at: int) -> dict[str, float | int]:
        """What config.json's "budget" and the checkpoint keep of the fit."""
        return {"minutes": tc.budget_minutes, "fitted_at_step": fitted_at, "steps_per_s": round(self.steps_per_s, 3),
                "checkpoint_s": round(self.checkpoint_s, 3), "preview_s": round(self.preview_s, 3),
                "steps": self.steps}

    def message(self, tc: TrainConfig, fitted_at: int) -> str:
        text = (f"budget {tc.budget_minutes:g} min: {self.steps_per_s:.2f} steps/s over the warm-up, a checkpoint "
                f"{self.checkpoint_s:.1f} s, a preview {self.preview_s:.1f} s -> {self.steps} steps (about "
                f"{self.estimated_s / 60:.1f} min; config.json records train.steps = {self.steps}, the run "
                f"`--steps {self.steps}` trains; fitted at step {fitted_at})")
        if tc.guide_at > 0 and max(1, round(tc.guide_at * self.steps)) <= fitted_at:
            text += f"; too short to keep the autoguidance snapshot (train.guide_at {tc.guide_at:g} of the steps)"
        return text


def estimate(tc: TrainConfig, steps: int, *, step: int, elapsed_s: float, rate: float, checkpoint_s: float,
             preview_s: float) -> float:
    """Seconds the whole run takes with `steps` steps, from `step` done in `elapsed_s`: the remaining steps at
    `rate`, a checkpoint every `checkpoint_every` steps, a preview every `sample_every` steps before the last,
    the autoguidance snapshot, and the final checkpoint and preview."""
    previews = multiples(tc.sample_every, step, steps - 1) + 1
    snapshot = tc.guide_at > 0 and round(tc.guide_at * steps) > step
    saves = multiples(tc.checkpoint_every, step, steps) + 1 + int(snapshot)
    return elapsed_s + (steps - step) / rate + previews * preview_s + saves * checkpoint_s


def fit_steps(tc: TrainConfig, *, step: int, elapsed_s: float, rate: float, checkpoint_s: float,
              preview_s: float) -> Fit:
    """The largest step count whose estimated time fits `tc.budget_minutes`, at least one past the fit."""
    if not (rate > 0 and math.isfinite(rate)):
        raise DiffusaError(f"cannot fit the steps to the budget: measured speed {rate} steps/s")
    budget = tc.budget_minutes * 60.0
    kw = dict(step=step, elapsed_s=elapsed_s, rate=rate, checkpoint_s=checkpoint_s, preview_s=preview_s)
    lo = step + 1
    hi = max(lo, step + math.ceil(rate * budget) + 1)
    if estimate(tc, lo, **kw) > budget:
        hi = lo
    while lo < hi:  # estimate() grows with the steps: the largest that fits
        mid = (lo + hi + 1) // 2
        if estimate(tc, mid, **kw) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return Fit(lo, rate, checkpoint_s, preview_s, estimate(tc, lo, **kw))


def fitted_steps(record: object, source: str) -> int:
    """The step count a checkpoint's budget record holds; a damaged record is one line naming the file."""
    steps = record.get("steps") if isinstance(record, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps < UNFITTED_STEPS:
        raise DiffusaError(f"{source}: its budget record holds no step count (steps {steps!r:.40}); the checkpoint is "
                           "damaged")
    return steps


__all__ = ["FIT_STEP_MAX", "UNFITTED_STEPS", "Fit", "estimate", "fit_step", "fit_steps", "fitted_steps", "multiples"]
