"""How a diffusa process uses the CPU cores: OpenMP's wait policy and the number of torch threads (one place).

Why (issue 17): torch's intra-op threads are OpenMP (libgomp) threads, and libgomp's default lets a thread that
waits at a barrier spin for about 300,000 turns (milliseconds) before it sleeps. A process alone on the machine
gains a little from that; two processes on the same cores lose a lot, because each one's spinning threads burn
the time slices the other's working threads need (a 2-D training fell from 55 to 0.6 steps/s beside a second
diffusa command). So:

- `set_wait_policy()` sets OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once), unless the user has set
  OMP_WAIT_POLICY or GOMP_SPINCOUNT themselves. libgomp reads these when it is loaded, i.e. when torch is first
  imported: the call is effective only before that, which is why `diffusa/__init__.py` makes it before anything
  imports torch (and `diffusa.cli.main` again, for the processes it starts). In a process that imported torch
  before diffusa, the policy stays whatever it was.
- `use_threads(n, is_image)` picks torch's intra-op thread count for a command (`--threads`, default auto): one
  thread for point data (the MLP), torch's default (one per core) for images. A 2-D training step is a few dozen
  small ops (a 256 x 2 batch through a 256-wide MLP: tens of microseconds of arithmetic each) whose time is
  Python and dispatch, not arithmetic; splitting such an op over threads costs a wake-up and a barrier, more than
  the op (the test suite measured a 40k-element multiply at 0.1 ms on one thread, ~25 ms on two on a busy
  machine). Image networks' convolutions are large enough that every core pays.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"
USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either one set by the user: their choice stands
MAX_THREADS = 1024  # the most --threads (and train.threads) accepts


def set_wait_policy() -> bool:
    """Make OpenMP's waiting threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE), unless the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT. Returns whether it can still take effect in this process: libgomp reads the
    variables once, when torch is first imported (the processes this one starts read them anew either way)."""
    if not any(var in os.environ for var in USER_VARS):
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return "torch" not in sys.modules


def auto_threads(is_image: bool) -> int | None:
    """The thread count `--threads auto` picks: 1 for point data (small MLP ops, where threading costs more than
    it saves), None (torch's default, one per core) for images."""
    return None if is_image else 1


def use_threads(n: int | None, is_image: bool) -> int:
    """Set torch's intra-op threads for a command: `n` (from --threads), or with None or 0 (auto) the
    `auto_threads` rule. Returns the count in effect."""
    import torch

    n = n or auto_threads(is_image)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


__all__ = ["MAX_THREADS", "auto_threads", "set_wait_policy", "use_threads"]
