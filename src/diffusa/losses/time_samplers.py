"""Time samplers: draw t (and importance weights) for a training batch; may be told the losses back."""

from __future__ import annotations

import torch

from diffusa.process import DiscreteDDPM, Flow, Process


class UniformTimeSampler:
    """t uniform: over the chain's steps i/T for a discrete process (Ho et al. 2020, Alg. 1), else U(t_min, 1).

    t_min defaults to 1e-3, and to 0 for flow, whose velocity target is finite at t = 0 (t ~ U(0, 1),
    Lipman et al. 2023, eq. 9 / Liu et al. 2022).
    """

    def __init__(self, process: Process, t_min: float | None = None) -> None:
        self.process = process
        self.t_min = (0.0 if isinstance(process, Flow) else 1e-3) if t_min is None else t_min

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight): times of shape (batch,) in float64 and unit importance weights."""
        if isinstance(self.process, DiscreteDDPM):
            T = self.process.num_steps
            i = torch.randint(1, T + 1, (batch,), generator=generator)
            t = i.to(torch.float64) / T
        else:
            t = self.t_min + (1 - self.t_min) * torch.rand(batch, generator=generator, dtype=torch.float64)
        return t.to(device), torch.ones(batch, dtype=torch.float32, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""


class LogNormalTimeSampler:
    """EDM's training noise levels (Karras et al. 2022, Table 1, "EDM" column): ln sigma_hat ~ N(P_mean, P_std^2),
    sigma_hat = sigma / alpha, mapped to t through the process's log-SNR lambda = -2 ln sigma_hat.

    Levels outside the process's noise range are clamped to its ends: t in [t_min, 1] (VE / EDM already map
    noise below sigma_min to sigma_min). Weights are 1: the density is EDM's p_train, not importance sampling.
    """

    def __init__(self, process: Process, p_mean: float = -1.2, p_std: float = 1.2, t_min: float = 1e-5) -> None:
        self.process = process
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.t_min = t_min

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight): times of shape (batch,) in float64 and unit weights."""
        ln_sigma = self.p_mean + self.p_std * torch.randn(batch, generator=generator, dtype=torch.float64)
        t = self.process.t_of_log_snr(-2 * ln_sigma).clamp(self.t_min, 1.0)
        return t.to(device), torch.ones(batch, dtype=torch.float32, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """A fixed density learns nothing from the losses."""
