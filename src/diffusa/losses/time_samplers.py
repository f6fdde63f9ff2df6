"""Time samplers: draw t (and importance weights) for a training batch; may be told the losses back."""

from __future__ import annotations

import torch

from diffusa.process import DiscreteDDPM, Process


class UniformTimeSampler:
    """t uniform: over the chain's steps i/T for a discrete process (Ho et al. 2020, Alg. 1), else U(t_min, 1)."""

    def __init__(self, process: Process, t_min: float = 1e-3) -> None:
        self.process = process
        self.t_min = t_min

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
