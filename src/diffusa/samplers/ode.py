"""Probability-flow ODE samplers (Song et al. 2021, eq. 13): generic Runge-Kutta solvers in t.

The ODE dx/dt = f x - g^2 score / 2 is written as dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat
(process.velocity), finite for every process at every t, including flow at t = 1 where f is singular.
Fixed-step Euler, Heun and classical RK4 run on the given grid; "rk45" is adaptive Dormand-Prince with error
control (scipy.integrate.RK45, score_sde's choice of solver, with its rtol = atol = 1e-5 defaults) and reports
its network evaluations in the callback's "nfe". As for every sampler here, the last step (to t = 0) is the
denoising step x = x0_hat(x, t): the ODE's end point at sigma = 0, without integrating into the kink at t = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.integrate import RK45

from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, Prediction
from diffusa.samplers.common import Callback

Field = Callable[[torch.Tensor, float], tuple[torch.Tensor, Prediction]]


def probability_flow(denoiser: Denoiser, cond: Any = None) -> Field:
    """The ODE's right-hand side (x, t) -> (dx/dt, Prediction) (Song et al. 2021, eq. 13, in alpha/sigma)."""

    def field(x: torch.Tensor, t: float) -> tuple[torch.Tensor, Prediction]:
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        pred = denoiser(x, tt, cond)
        # one time for the whole batch: the coefficients alpha', sigma' are computed once and broadcast
        return denoiser.process.velocity(pred.x0, pred.eps, tt[:1]).to(x.dtype), pred

    return field


def _euler(field: Field, x: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, Prediction, int]:
    v, pred = field(x, t)
    return x + (s - t) * v, pred, 1


def _heun(field: Field, x: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, Prediction, int]:
    """Heun's method (explicit trapezoid): second order, 2 evaluations."""
    h = s - t
    v1, pred = field(x, t)
    v2, _ = field(x + h * v1, s)
    return x + h / 2 * (v1 + v2), pred, 2


def _rk4(field: Field, x: torch.Tensor, t: float, s: float) -> tuple[torch.Tensor, Prediction, int]:
    """The classical fourth-order Runge-Kutta method, 4 evaluations."""
    h = s - t
    k1, pred = field(x, t)
    k2, _ = field(x + h / 2 * k1, t + h / 2)
    k3, _ = field(x + h / 2 * k2, t + h / 2)
    k4, _ = field(x + h * k3, s)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), pred, 4


def _fixed_step(method: Callable[..., tuple[torch.Tensor, Prediction, int]], denoiser: Denoiser, x: torch.Tensor,
                grid: torch.Tensor, cond: Any, callback: Callback | None) -> torch.Tensor:
    field = probability_flow(denoiser, cond)
    nfe = 0
    for i in range(len(grid) - 1):
        t, s = float(grid[i]), float(grid[i + 1])
        if s <= 0:
            _, pred = field(x, t)
            x, n = pred.x0, 1
        else:
            x, pred, n = method(field, x, t, s)
        nfe += n
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x, "x0": pred.x0, "nfe": nfe})
    return x


def sample_ode_euler(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                     generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in t (1 evaluation per step). Unlike "euler" (Karras et al.
    2022's Euler in sigma/alpha, which is DDIM) this steps x itself in t."""
    return _fixed_step(_euler, denoiser, x, grid, cond, callback)


def sample_ode_heun(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's method on the probability-flow ODE in t (2 evaluations per step, 1 on the final denoising step)."""
    return _fixed_step(_heun, denoiser, x, grid, cond, callback)


def sample_rk4(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
               generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Classical RK4 on the probability-flow ODE in t (4 evaluations per step, 1 on the final denoising step)."""
    return _fixed_step(_rk4, denoiser, x, grid, cond, callback)


def sample_rk45(denoiser: Denoiser, x: torch.Tensor, grid: torch.Tensor, *, cond: Any = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """Adaptive Dormand-Prince RK5(4) on the probability-flow ODE (Song et al. 2021, Sec. 4.3: scipy's RK45 at
    rtol = atol = 1e-5), from grid[0] to the last positive grid time, then the denoising step to t = 0.

    The grid sets the end points and where the callback reports (x there is the solver's dense output); the
    solver picks its own steps. The callback's "nfe" counts network evaluations so far; its last value is the
    total. The error norm is scipy's RMS over the whole batch in float64.
    """
    if not (rtol > 0 and atol > 0):
        raise DiffusaError(f"rk45 needs positive tolerances, got rtol={rtol}, atol={atol}")
    field = probability_flow(denoiser, cond)
    shape, dtype, device = x.shape, x.dtype, x.device
    n = len(grid) - 1
    last_pred: list[Prediction] = []

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        v, pred = field(torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype), t)
        last_pred[:] = [pred]
        return v.detach().double().cpu().numpy().ravel()

    def report(i: int, x_s: torch.Tensor, nfe: int) -> None:
        if callback is not None:
            callback({"i": i, "t": grid[i], "s": grid[i + 1], "x": x_s, "x0": last_pred[0].x0, "nfe": nfe})

    nfe = 0
    if n > 1:
        solver = RK45(rhs, float(grid[0]), x.detach().double().cpu().numpy().ravel(), float(grid[n - 1]),
                      rtol=rtol, atol=atol)
        i = 0
        while i < n - 1:
            message = solver.step()
            if solver.status == "failed":
                raise DiffusaError(f"rk45 failed at t = {solver.t:.4g}: {message}; loosen rtol/atol or use rk4")
            dense = solver.dense_output() if solver.t_old is not None else None
            while i < n - 1 and (float(grid[i + 1]) >= solver.t or solver.status == "finished"):
                y = solver.y if float(grid[i + 1]) == solver.t or dense is None else dense(float(grid[i + 1]))
                x = torch.from_numpy(np.ascontiguousarray(y)).reshape(shape).to(device=device, dtype=dtype)
                report(i, x, solver.nfev)
                i += 1
        nfe = solver.nfev
    pred = denoiser(x, torch.full((shape[0],), float(grid[n - 1]), dtype=torch.float64, device=device), cond)
    last_pred[:] = [pred]
    x = pred.x0
    report(n - 1, x, nfe + 1)
    return x
