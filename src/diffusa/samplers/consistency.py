"""Multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 1), on noise levels so it runs
on every process.

x0 = f(x_T, T); then at each later time tau of the grid the sample is noised again, in EDM's scaled variables
x_hat_tau = x0 + sqrt(sh_tau^2 - sh_min^2) z (x_tau = alpha_tau x_hat_tau), and x0 = f(x_tau, tau). One network
evaluation per step; the grid's last time (0) ends the chain with the last x0. On a `ConsistencyDenoiser` sh_min is
its boundary level; on any other Denoiser it is 0, and the sampler is "denoise, then noise again".
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusa.consistency import consistency_of
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser
from diffusa.process import expand_as
from diffusa.samplers.common import Callback, randn_like, step_times
from diffusa.schedules import check_steps


def consistency_grid(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """The consistency sampler's default grid: `steps` times, then 0.

    For a consistency model, among its training levels (as Song et al. sample at levels of their grid): evenly
    spaced indices from the top, T first; at most N - 1 steps for N levels (the boundary level itself would be a
    step that changes nothing), more is refused. For any other Denoiser, the first `steps` levels of Karras's
    rho = 7 grid of steps + 1 levels inside the process's noise levels (its last level, the least, dropped for
    the same reason)."""
    check_steps(steps)
    cm = consistency_of(denoiser)
    zero = torch.zeros(1, dtype=torch.float64)
    if cm is None:
        from diffusa.samplers import default_karras_grid

        grid = default_karras_grid(denoiser, steps + 1)
        return torch.cat([grid[:-2], zero])
    if steps > cm.num_levels - 1:
        raise DiffusaError(f"--steps {steps} exceeds the {cm.num_levels - 1} steps of this consistency model: it was "
                           f"trained on {cm.num_levels} noise levels (other times: pass a spacing, e.g. karras)")
    times = cm.level_times().flip(0)  # decreasing, from T to t_min
    idx = torch.linspace(0, cm.num_levels - 1, steps + 1, dtype=torch.float64).round().long()[:-1]
    return torch.cat([times[idx], zero])


def sample_consistency(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                       generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Algorithm 1 of Song et al. 2023 over a decreasing grid ending at 0: x0 = f(x, t), then x_s =
    alpha_s (x0 + sqrt(sh_s^2 - sh_min^2) z) for the next time s > 0; the last x0 is returned."""
    proc = denoiser.process
    cm = consistency_of(denoiser)
    sh_min = cm.sigma_min if cm is not None else 0.0
    for i in range(len(grid) - 1):
        t, _ = step_times(grid, i, x.shape[0], x.device)
        x0 = denoiser(x, t, cond).x0
        a_s, s_s = proc.alpha_sigma(grid[i + 1].to(torch.float64))
        if float(s_s) > 0:
            sh_s = float(s_s / a_s)
            z = randn_like(x, generator)
            x = expand_as(a_s, x) * (x0 + math.sqrt(max(sh_s**2 - sh_min**2, 0.0)) * z)
        else:
            x = x0
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": x0})
    return x
