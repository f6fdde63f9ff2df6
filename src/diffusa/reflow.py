"""Rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast"): the maths of reflow and of straightness, for
a Denoiser of any process. The task that trains a reflowed flow is `diffusa.tasks.reflow`.

**Time.** diffusa's flow process (`process.Flow`) runs the paper's path backwards: x_t = (1 - t) x_data + t z, t = 0
the data and t = 1 the prior N(0, I), and its network predicts the velocity dx/dt = z - x_data. The paper writes
X_s = s X_1 + (1 - s) X_0 with X_0 ~ N(0, I) the noise, X_1 the data, s = 1 - t, and regresses X_1 - X_0 = -dx/dt
(its eq. 1). The two are one ODE read in opposite directions, so a diffusa flow trained on a coupling (z, x_data)
is the paper's rectified flow of the coupling (X_0, X_1) = (z, x_data), and straightness is the same number in
either direction.

**Any process as a flow.** In EDM's scaled variables x_hat = x / alpha, sigma_hat = sigma / alpha every process's
probability-flow ODE is dx_hat / dsigma_hat = (x_hat - D) / sigma_hat (Karras et al. 2022, eq. 4), D the denoiser.
The flow's state at the same log-SNR is x_f = alpha_f x_hat with t_f = sigma_hat / (1 + sigma_hat), so the ODE of
any run, written in the flow's time, is dx_f / dt_f = (x_f - D) / t_f (the flow's own velocity eps - x0). `FlowView`
asks the base Denoiser at its own time of the same log-SNR; past the ends of the base's range (t_f near 1 for a
process whose prior is not pure noise) it asks at the base's end time with x scaled by
sqrt((alpha_p^2 + sigma_p^2) / (alpha_f^2 + sigma_f^2)), which is alpha_p / alpha_f = sigma_p / sigma_f wherever the
log-SNRs agree.

**Reflow** (the paper's reflow procedure): draw z ~ N(0, I), solve the teacher's probability-flow ODE
from x_T = sigma_T z (its prior's scale) with any deterministic diffusa sampler, and keep the pair (z, x) — a
deterministic coupling with the teacher's marginals. A new flow trained on the fixed pairs is the next rectified
flow (`reflow_pairs`).

**Straightness** (the paper's S(Z)): S(Z) = int_0^1 E ||(Z_1 - Z_0) - v(Z_s, s)||^2 ds, zero exactly when
every path is a straight line walked at constant speed (then one Euler step is exact). Estimated by Monte Carlo
along Euler paths of the flow's ODE from the prior (`straightness`), with Z_1 - Z_0 each path's own end minus start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffusa.cond import Cond
from diffusa.errors import DiffusaError
from diffusa.prediction import KEEP, Denoiser, RawFn
from diffusa.process import Flow, as_time, expand_as
from diffusa.samplers import make_grid, sample
from diffusa.schedules import uniform_grid

STRAIGHTNESS_STEPS = 100  # Euler steps of the paths S is measured along
PATH_FLOATS = 1 << 25  # float64 numbers of the paths `straightness` holds at once (256 MiB)
# deterministic samplers that solve the teacher's probability-flow ODE from x_T (no fresh noise along the way)
ODE_SOLVERS = ("rk4", "rk45", "heun", "euler", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ode_euler", "ode_heun")


class FlowView(Denoiser):
    """A Denoiser of any process read on the flow's time axis (module docstring): at flow time t_f it answers the
    base's x0 at the base's time of the same log-SNR, x scaled to the base's level. Its process is `Flow`, its
    parameterization "x0", so its probability-flow velocity is (x - D) / t_f, the base's ODE in the flow's time."""

    def __init__(self, base: Denoiser) -> None:
        self.base = base
        super().__init__(self.ask, Flow(), "x0", clip_x0=None, sigma_data=base.sigma_data, net=base.net)

    def ask(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The base's x0 at the flow's (x, t)."""
        t = as_time(t, x.shape[0], x.device)
        proc = self.base.process
        t_p = proc.t_of_log_snr(self.process.log_snr(t)).clamp(0, 1)
        a_p, s_p = proc.alpha_sigma(t_p)
        a_f, s_f = self.process.alpha_sigma(t)
        scale = ((a_p**2 + s_p**2) / (a_f**2 + s_f**2)).sqrt()
        return self.base(x * expand_as(scale, x), t_p, cond).x0

    def derive(self, raw: RawFn | None = None, *, learned_variance: bool = KEEP, clip_x0: float | None = KEEP,
               sigma_data: float = KEEP) -> Denoiser:
        """The same view of `self.base.derive(...)` (see `Denoiser.derive`)."""
        return FlowView(self.base.derive(raw, learned_variance=learned_variance, clip_x0=clip_x0,
                                         sigma_data=sigma_data))


def flow_view(denoiser: Denoiser) -> Denoiser:
    """`denoiser` on the flow's time axis: itself for a flow run (its network's velocity, directly), else a
    `FlowView`. A consistency model is refused: its x0 is the consistency function, not a denoiser, so it has no
    probability-flow velocity."""
    from diffusa.consistency import consistency_of

    if consistency_of(denoiser) is not None:
        raise DiffusaError("a consistency model maps noise to data in one jump: it has no probability-flow ODE whose "
                           "straightness could be measured")
    return denoiser if isinstance(denoiser.process, Flow) else FlowView(denoiser)


def straightness(denoiser: Denoiser, shape: tuple[int, ...], n: int = 2000, steps: int = STRAIGHTNESS_STEPS, *,
                 generator: torch.Generator | None = None, label: int | None = None, batch_size: int = 2000,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """S = int_0^1 E ||(Z_1 - Z_0) - v(Z_s, s)||^2 ds (Liu et al. 2022, the straightness S(Z); squared Euclidean norm
    over all coordinates of one example) of `denoiser`'s probability-flow ODE in the flow's time (`flow_view`), by Monte
    Carlo: n paths of `steps` Euler steps from the prior z ~ N(0, I) at t = 1 to t = 0 (uniform grid; the
    `ode_euler` sampler, whose last step to t = 0 is the same Euler step), v_i each step's velocity
    (x_i - x_{i+1}) / h, Z_1 - Z_0 the path's end minus start, S = mean over paths and steps of ||(Z_1 - Z_0) -
    v_i||^2. Clipping of x0 (images) is off: this is the network's ODE. `shape`: one example's; `label`: the class
    of every path (a class-conditional run; None: unconditional). 0 for straight paths at constant speed
    (tests/test_reflow.py)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DiffusaError(f"straightness needs a positive number of paths, got {n!r}")
    view = flow_view(denoiser.derive(clip_x0=None))
    grid = uniform_grid(steps)
    # the whole path of a batch is kept in float64: at most PATH_FLOATS numbers at once
    batch_size = max(1, min(batch_size, PATH_FLOATS // ((steps + 1) * math.prod(shape))))
    total = 0.0
    for start in range(0, n, batch_size):
        z = torch.randn((min(batch_size, n - start), *shape), generator=generator, dtype=dtype).to(device)
        cond = None if label is None else Cond(labels=torch.full((z.shape[0],), int(label), device=device))
        path = euler_path(view, z, grid, cond)
        v = (path[:-1] - path[1:]) * steps  # (steps, m, ...): each Euler step's velocity, in the paper's direction
        chord = path[0] - path[-1]  # Z_1 - Z_0 (the paper's time runs from the prior to the data)
        total += float((chord - v).pow(2).flatten(2).sum(2).mean(0).sum())
    return total / n


def euler_path(denoiser: Denoiser, z: torch.Tensor, grid: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """The states (len(grid), *z.shape), float64, of the `ode_euler` sampler from x = z at grid[0] (the samplers'
    own Euler step, through their callback)."""
    states = [z.double()]
    sample(denoiser, tuple(z.shape), "ode_euler", grid=grid, x_T=z, cond=cond, device=z.device,
           callback=lambda info: states.append(info["x"].double()))
    return torch.stack(states)


def prior_scale(denoiser: Denoiser) -> float:
    """sigma(1) of the denoiser's process: x_T = sigma(1) z is its prior draw from standard noise z."""
    _, s = denoiser.process.alpha_sigma(torch.ones((), dtype=torch.float64))
    return float(s)


def reflow_pairs(teacher: Denoiser, shape: tuple[int, ...], n: int, solver: str = "rk4", steps: int = 25, *,
                 generator: torch.Generator | None = None, num_classes: int = 0, batch_size: int = 1000,
                 device: torch.device | str = "cpu",
                 progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """n pairs (noise z ~ N(0, I), the end of the teacher's probability-flow ODE from x_T = sigma(1) z), solved by
    the deterministic sampler `solver` in `steps` steps on its default grid: the reflow coupling (Liu et al. 2022,
    with X_0 = z and X_1 the sample). A class-conditional teacher (`num_classes` > 0) is asked for a
    uniformly drawn class per pair, unguided, and the labels are kept. Returns {"noise", "sample"[, "labels"]},
    float32 on the CPU. `progress(k)` is called with the pairs made so far."""
    if solver not in ODE_SOLVERS:
        raise DiffusaError(f"--solver {solver!r} does not solve the probability-flow ODE deterministically; known: "
                           f"{', '.join(ODE_SOLVERS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DiffusaError(f"--pairs must be a positive integer, got {n!r}")
    grid = make_grid(teacher, steps, None, solver)  # refuses steps a chain cannot take, before any work
    s1 = prior_scale(teacher)
    noise, ends, labels = [], [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        z = torch.randn((m, *shape), generator=generator)
        cond = None
        if num_classes > 0:
            y = torch.randint(0, num_classes, (m,), generator=generator)
            labels.append(y)
            cond = Cond(labels=y.to(device))
        x = sample(teacher, (m, *shape), solver, grid=grid, x_T=(z * s1).to(device), cond=cond, device=device,
                   generator=generator)
        noise.append(z)
        ends.append(x.detach().float().cpu())
        if progress is not None:
            progress(start + m)
    out = {"noise": torch.cat(noise), "sample": torch.cat(ends)}
    if labels:
        out["labels"] = torch.cat(labels)
    return out


__all__ = ["ODE_SOLVERS", "STRAIGHTNESS_STEPS", "FlowView", "euler_path", "flow_view", "prior_scale", "reflow_pairs",
           "straightness"]
