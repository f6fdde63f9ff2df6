"""Batch shards on CPU threads: one training step's batch split into `k` slices, each slice's loss and gradient
computed by its own Python thread with one torch thread, the gradients summed in a fixed order.

Why (issue 17): on a small CPU, torch's intra-op parallelism pays an OpenMP wake-up and barrier for every op, and a
U-Net step is hundreds of small ops. A passive wait policy (diffusa's default, so that two processes share the cores,
`diffusa.threads`) makes each wake-up a futex sleep: the default mnist5k recipe ran 4.9 steps/s on two cores with
two intra-op threads. Two threads that each run half the batch single-threaded never meet at a barrier inside an op
(torch releases the GIL in its kernels and in the backward pass): 6.5 steps/s on the same machine, more than the
spinning wait's 5.8, and with nothing spinning two processes still share the cores (docs/results/two_processes.md).

The step's mean loss is sum_i sum_{j in shard i} w_j l_j / n: each shard's gradient of its share of that sum, added,
is the full batch's gradient (the same maths as one pass; float rounding differs). Each shard draws its randomness
from its own generator, seeded by the step's seed and the shard's index, so a run is reproducible for a given shard
count (recorded in the checkpoint; a run resumed with another count continues correctly but not bit for bit). One
shard is the plain step, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from diffusa.engine.task import StepLoss
from diffusa.threads import worker_pool

MIN_SHARD = 8  # examples per shard: smaller slices leave each thread too little work per op


def auto_shards(cores: int, batch_size: int, *, cpu: bool, world: int, scaler: bool, model: nn.Module,
                shardable: bool) -> int:
    """How many shards a step runs with by default: one per core (`cores`, torch's thread count when training
    starts) for a task that allows it, on CPU, in a single process, without fp16's gradient scaler, when the batch
    gives each shard at least MIN_SHARD examples and no dropout is active (its draws come from torch's global
    generator, which threads would share); else 1."""
    if not (cpu and shardable and world == 1 and not scaler) or cores < 2:
        return 1
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return 1
    return max(1, min(cores, batch_size // MIN_SHARD))


def shard_seed(seed: int, shard: int) -> int:
    """The generator seed of shard `shard` of a sharded step seeded `seed`."""
    return (seed * 1_000_033 + shard * 15_485_863 + 1) % (2**63 - 1)


def merge(results: Sequence[StepLoss], sizes: Sequence[int]) -> StepLoss:
    """One StepLoss of the whole batch from its shards': losses, weights and tensor extras concatenated in shard
    order; each logged number the size-weighted mean of the shards'."""
    n = sum(sizes)
    weights = None if results[0].weights is None else torch.cat([r.weights for r in results])
    extra = results[0].extra
    if torch.is_tensor(extra):
        extra = torch.cat([r.extra for r in results])
    logs = {key: sum(r.logs[key] * (s / n) for r, s in zip(results, sizes, strict=True)) for key in results[0].logs}
    return StepLoss(torch.cat([r.losses for r in results]), weights, logs, extra)


class Shards:
    """Runs `loss_fn(idx, x, generator)` on k slices of a batch in k threads and returns (the batch's weighted mean
    loss, the merged StepLoss, one gradient per parameter: the sum over shards, None where no shard reached it)."""

    def __init__(self, k: int, params: Sequence[nn.Parameter], amp_dtype: torch.dtype | None) -> None:
        self.k, self.params, self.amp_dtype = k, list(params), amp_dtype
        # each worker runs its ops on one torch thread (a per-thread setting: the calling thread's keeps its count);
        # the process's pool, shared with sampling's batch slices (diffusa.threads), made anew after a fork
        self.pool = worker_pool(k)

    def close(self) -> None:
        """Nothing to stop: the workers are the process's (idle between calls), not this object's."""

    def __call__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], StepLoss], idx: torch.Tensor,
                 x: torch.Tensor, seed: int) -> tuple[torch.Tensor, StepLoss, list[torch.Tensor | None]]:
        n = x.shape[0]
        parts = list(zip(torch.tensor_split(idx, self.k), torch.tensor_split(x, self.k), strict=True))

        def work(i: int) -> tuple[StepLoss, torch.Tensor, Sequence[torch.Tensor | None]]:
            gen = torch.Generator().manual_seed(shard_seed(seed, i))
            with torch.autocast("cpu", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):  # thread-local
                result = loss_fn(parts[i][0], parts[i][1], gen)
            losses = result.losses.float()
            total = (losses * result.weights).sum() if result.weights is not None else losses.sum()
            grads = torch.autograd.grad(total / n, self.params, allow_unused=True)
            return result, total.detach(), grads

        done: list[Any] = list(self.pool.map(work, range(self.k)))
        loss = sum(d[1] for d in done) / n
        grads: list[torch.Tensor | None] = []
        for j in range(len(self.params)):
            parts_j = [d[2][j] for d in done if d[2][j] is not None]
            total_j = parts_j[0] if parts_j else None
            for g in parts_j[1:]:  # in shard order: the same sum every time
                total_j = total_j + g
            grads.append(total_j)
        return loss, merge([d[0] for d in done], [len(p[0]) for p in parts]), grads


__all__ = ["MIN_SHARD", "Shards", "auto_shards", "merge", "shard_seed"]
