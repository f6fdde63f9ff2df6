"""Loss-aware importance sampling of timesteps (Nichol & Dhariwal 2021, Sec. 3.3, eq. 18)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from diffusa.errors import DiffusaError
from diffusa.losses.vlb import require_discrete
from diffusa.process import Process


def _gather(t: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (t, losses), in rank order, under torch.distributed; the inputs themselves otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t, losses
    world = dist.get_world_size()
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    m = int(max(int(k) for k in sizes))
    packed = torch.zeros(2, m, dtype=torch.float64, device=t.device)
    packed[0, :t.numel()] = t.double()
    packed[1, :t.numel()] = losses.double()
    parts = [torch.zeros_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed)
    kept = [p[:, :int(k)] for p, k in zip(parts, sizes, strict=True)]
    both = torch.cat(kept, dim=1)
    return both[0], both[1]


class ImportanceTimeSampler:
    """p_t proportional to sqrt(E[L_t^2]) over each step's last `history` losses (IDDPM eq. 18).

    Uniform until every step has `history` losses; then a share `uniform_prob` of uniform sampling is mixed in
    (1e-3, IDDPM's code) so no step starves. The weights 1 / (T p_t) keep mean(weight * loss) an unbiased
    estimate of the uniform-t loss. Under torchrun the per-example losses of all ranks are gathered in `update`
    (as IDDPM does), so every rank keeps the same history and rank 0's checkpoint resumes them all exactly.
    Discrete chains only.
    """

    def __init__(self, process: Process, history: int = 10, uniform_prob: float = 1e-3) -> None:
        proc = require_discrete(process, "loss.time_sampler=importance")
        if history < 1 or not 0 <= uniform_prob <= 1:
            raise DiffusaError(f"importance sampling needs history >= 1 and uniform_prob in [0, 1], got {history}, "
                               f"{uniform_prob}")
        self.num_steps = proc.num_steps
        self.uniform_prob = float(uniform_prob)
        self.history = torch.zeros(self.num_steps, history, dtype=torch.float64)
        self.counts = torch.zeros(self.num_steps, dtype=torch.int64)

    def warmed_up(self) -> bool:
        """Whether every step has a full history."""
        return bool((self.counts == self.history.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        """p over the steps 1..T (float64, shape (T,))."""
        T = self.num_steps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if not self.warmed_up():
            return uniform
        w = self.history.square().mean(dim=1).sqrt()
        if not bool(w.sum() > 0) or not bool(torch.isfinite(w).all()):
            return uniform
        return (1 - self.uniform_prob) * w / w.sum() + self.uniform_prob * uniform

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight): t = i/T with i ~ p (float64), weight = 1 / (T p_i) (float32)."""
        p = self.probabilities()
        i = torch.multinomial(p, batch, replacement=True, generator=generator)
        weight = 1.0 / (self.num_steps * p[i])
        t = (i + 1).to(torch.float64) / self.num_steps
        return t.to(device), weight.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record each example's loss in its step's history (the oldest falls out once it is full)."""
        t, losses = _gather(t.detach(), losses.detach())
        idx = (torch.round(t.double().cpu() * self.num_steps).long() - 1).tolist()
        size = self.history.shape[1]
        for i, loss in zip(idx, losses.double().cpu().tolist(), strict=True):
            if not 0 <= i < self.num_steps:
                raise DiffusaError(f"importance sampling got t = {(i + 1) / self.num_steps} off the chain's steps")
            c = int(self.counts[i])
            if c == size:
                self.history[i, :-1] = self.history[i, 1:].clone()
                self.history[i, -1] = loss
            else:
                self.history[i, c] = loss
                self.counts[i] = c + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss history as tensors (for exact resume)."""
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()`; a DiffusaError if it belongs to a different chain or history length."""
        h, c = state.get("history"), state.get("counts")
        if h is None or c is None or h.shape != self.history.shape or c.shape != self.counts.shape:
            raise DiffusaError(f"the checkpoint's importance-sampler state does not fit this run ({self.num_steps} "
                               f"steps x {self.history.shape[1]} losses); was process.num_steps changed?")
        self.history = h.to(torch.float64).clone()
        self.counts = c.to(torch.int64).clone()
