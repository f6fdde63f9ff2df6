"""Beta schedules for discrete chains and decreasing time grids for samplers.

Times live in [0, 1]; a discrete chain with T steps puts step i (1-based) at t = i / T, and
t = 0 is clean data. A grid is a decreasing 1-D tensor of times that ends at 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusa.errors import DiffusaError
from diffusa.limits import MAX_SAMPLING_STEPS, check_count


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 max_beta: float = 0.999) -> torch.Tensor:
    """Ho et al. 2020, Sec. 4: betas linear from 1e-4 to 0.02 (scaled for T != 1000).

    The scaling puts beta >= 1 for T <= 20 (a NaN chain); such betas are capped at 0.999 like cosine's.
    """
    scale = 1000.0 / num_steps
    return torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alphabar(t) = cos^2((t/T + s) / (1 + s) * pi / 2), beta <= 0.999."""

    def alphabar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alphabar((i + 1) / num_steps) / alphabar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Rombach et al. 2022 (latent diffusion): sqrt(beta) linear in the step."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def sigmoid_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Jabri et al. 2022 (RIN): betas following a sigmoid from beta_start to beta_end."""
    x = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "scaled_linear": scaled_linear_betas,
    "sigmoid": sigmoid_betas,
}


def make_betas(name: str, num_steps: int) -> torch.Tensor:
    """Look a beta schedule up by name."""
    if name not in BETA_SCHEDULES:
        raise DiffusaError(f"unknown beta schedule {name!r}; known: {', '.join(sorted(BETA_SCHEDULES))}")
    if num_steps < 1:
        raise DiffusaError(f"a discrete chain needs at least 1 step, got {num_steps}")
    return BETA_SCHEDULES[name](num_steps)


def check_steps(steps: int) -> int:
    """Validate a user-given number of sampling steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiffusaError(f"--steps must be a positive integer, got {steps}")
    return check_count("--steps", steps, MAX_SAMPLING_STEPS)


def discrete_indices(num_train_steps: int, steps: int, spacing: str = "leading") -> list[int]:
    """Pick `steps` of the chain's 1-based step indices, decreasing.

    - "leading" (DDIM; diffusers' default): k * (T // steps) + 1 for k = steps-1 .. 0.
    - "trailing": T, T - T/steps, ... (always starts at the last step; Lin et al. 2024).
    - "even": IDDPM's respacing (`space_timesteps(T, [steps])`): 0-based k (T - 1) / (steps - 1), accumulated
      and rounded as IDDPM does, so the steps are IDDPM's exactly; both ends kept (one step: T).
    - "ddim": IDDPM's "ddimK": range(0, T, stride) 0-based, with the smallest stride giving exactly `steps`
      steps (equal to "leading" when steps divides T).
    """
    check_steps(steps)
    T = num_train_steps
    if steps > T:
        raise DiffusaError(f"--steps {steps} exceeds the model's {T} training steps")
    if spacing == "leading":
        stride = T // steps
        idx = [k * stride + 1 for k in range(steps)]
    elif spacing == "trailing":
        idx = [round(T - k * T / steps) for k in range(steps)][::-1]
    elif spacing == "even":
        idx = [T] if steps == 1 else _iddpm_even(T, steps)
    elif spacing == "ddim":
        idx = _ddim_stride(T, steps)
    else:
        raise DiffusaError(f"unknown spacing {spacing!r}; known: leading, trailing, even, ddim")
    return sorted(set(idx), reverse=True)


def _iddpm_even(T: int, steps: int) -> list[int]:
    """IDDPM's even spacing, 1-based: the float stride is accumulated, then each 0-based index rounded."""
    stride, cur, idx = (T - 1) / (steps - 1), 0.0, []
    for _ in range(steps):
        idx.append(round(cur) + 1)
        cur += stride
    return idx


def _ddim_stride(T: int, steps: int) -> list[int]:
    """IDDPM's "ddimK" spacing, 1-based: k * stride + 1 for the smallest stride with ceil(T / stride) = steps."""
    for stride in range(1, T + 1):
        if len(range(0, T, stride)) == steps:
            return [i + 1 for i in range(0, T, stride)]
    possible = sorted({len(range(0, T, k)) for k in range(1, T + 1)})
    near = [k for k in possible if abs(k - steps) == min(abs(p - steps) for p in possible)]
    raise DiffusaError(f"ddim spacing cannot take exactly {steps} of {T} steps with an integer stride; "
                       f"nearest possible: {', '.join(map(str, near))}")


def discrete_grid(num_train_steps: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """A decreasing time grid on a discrete chain's steps, ending at t = 0 (clean data)."""
    idx = discrete_indices(num_train_steps, steps, spacing)
    return torch.tensor([i / num_train_steps for i in idx] + [0.0], dtype=torch.float64)


def uniform_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """steps + 1 times uniform in t from t_max down to t_min, then 0 if t_min > 0."""
    check_steps(steps)
    grid = torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if t_min > 0:
        grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    return grid


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: steps noise levels from sigma_max down to sigma_min, spaced by rho.

    sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    No trailing 0 here; `karras_grid` adds t = 0.
    """
    check_steps(steps)
    if not (0 < sigma_min < sigma_max):
        raise DiffusaError(f"a Karras grid needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def times_of_log_snr(process: Any, lam: torch.Tensor, what: str) -> torch.Tensor:
    """Map log-SNRs to the process's times, check they are reachable, and append t = 0."""
    t = process.t_of_log_snr(lam)
    back = process.log_snr(t)
    if not torch.allclose(back, lam, rtol=1e-6, atol=1e-6) or not bool((t > 0).all()):
        lo, hi = process.log_snr(torch.tensor([1.0, 1e-9], dtype=torch.float64)).tolist()
        raise DiffusaError(f"{what} leaves the noise levels of process {process.to_dict()} (log-SNR from "
                           f"{lo:.4g} to {hi:.4g}); narrow the range")
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    if not bool((t[1:] < t[:-1]).all()):
        raise DiffusaError(f"{what} gives repeated times on process {process.to_dict()}; use fewer steps")
    return t


def karras_grid(process: Any, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022's rho-spaced noise levels as times of `process`, decreasing, ending at 0.

    sigma here is the scaled noise level sigma(t) / alpha(t) = exp(-lambda / 2) (EDM's sigma for alpha = 1
    processes), so each level maps to t = process.t_of_log_snr(-2 log sigma). Raises DiffusaError if
    [sigma_min, sigma_max] is not inside the process's range.
    """
    sig = karras_sigmas(sigma_min, sigma_max, steps, rho)
    return times_of_log_snr(process, -2 * torch.log(sig), f"Karras grid [{sigma_min}, {sigma_max}]")


def log_snr_uniform_grid(process: Any, steps: int, t_min: float = 1e-3, t_max: float = 1.0) -> torch.Tensor:
    """steps times with log-SNR uniform from lambda(t_max) to lambda(t_min) (Lu et al. 2022's "logSNR"
    spacing for DPM-Solver), then 0; decreasing float64."""
    check_steps(steps)
    if not (0 < t_min < t_max <= 1):
        raise DiffusaError(f"a log-SNR grid needs 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    ends = process.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), steps, dtype=torch.float64)
    return times_of_log_snr(process, lam, f"log-SNR grid on [{t_min}, {t_max}]")
