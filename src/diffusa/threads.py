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
- `batch_call(net, x, c_noise, cond)` is how a Denoiser calls its network when nothing needs a gradient: on CPU,
  the batch is cut into one slice per thread, each slice run by its own Python thread on one torch thread (torch
  releases the GIL in its kernels), so no op waits at an OpenMP barrier -- the same idea as training's batch shards
  (`diffusa.engine.shards`). Under the passive wait a barrier is a futex sleep and wake per op, and a U-Net forward
  is a few hundred ops: measured on the 2-core CPU (benchmarks/speed.py), a 28x28 U-Net at batch 64 ran 1.23x
  faster in two slices, and a batch of 1 ran 1.7x faster on one thread than on two. A single large example (an
  upscaler's tile) keeps torch's intra-op threads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


# the input elements one slice needs before splitting pays: 8 digits of 28 x 28 (smaller slices leave a thread too
# little work per op); a whole call below this runs on one thread, one that cannot be split into two such slices (a
# single 64 x 64 RGB image) keeps torch's intra-op threads
SLICE_ELEMENTS = 8 * 28 * 28
_slice = threading.local()  # .index: which slice of a batch_call this worker thread runs (unset: a whole call)


def counts_as_call() -> bool:
    """Whether a network's forward call on this thread is one network evaluation: a whole call, or the first slice
    of a `batch_call` (its other slices are the same evaluation). What NFE counters ask (`pipelines.sampling`)."""
    return getattr(_slice, "index", 0) == 0


_pools: dict[int, tuple[int, ThreadPoolExecutor]] = {}  # slice count -> (the pid that made it, its pool)
_pools_lock = threading.Lock()


def worker_pool(k: int) -> ThreadPoolExecutor:
    """The process's k worker threads (sampling's slices and training's batch shards share them), each with one
    torch thread, all started now (so their setting cannot leak into threads started later), made anew in a forked
    child (a fork keeps the pool object but not its threads)."""
    import torch

    with _pools_lock:
        pid, pool = _pools.get(k, (-1, None))
        if pool is None or pid != os.getpid():
            main_threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(k, thread_name_prefix="diffusa-slice", initializer=torch.set_num_threads,
                                      initargs=(1,))
            ready = threading.Barrier(k)
            list(pool.map(lambda _: ready.wait(), range(k)))  # every worker started and set to one thread
            torch.set_num_threads(main_threads)  # a worker's setting is also torch's default for threads started
            # later: put it back (the calling thread keeps its own count either way)
            _pools[k] = (os.getpid(), pool)
        return pool


def slice_count(x: Any, net: Any = None) -> int:
    """How many slices `batch_call` cuts x's batch into: 0 for a plain call (autograd on, not CPU, one torch thread,
    a network in training mode, autocast on, or work that does not split into two slices of SLICE_ELEMENTS: torch's
    intra-op threads share it), 1 for the whole call on one worker thread (under SLICE_ELEMENTS: small ops, where an
    OpenMP barrier costs more than a second core gains), else min(threads, batch, elements / SLICE_ELEMENTS)."""
    import torch

    threads = torch.get_num_threads()
    if (threads < 2 or not torch.is_tensor(x) or x.device.type != "cpu" or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu") or getattr(net, "training", False)):
        return 0
    work = x.numel() // SLICE_ELEMENTS
    if work == 0:
        return 1
    k = min(threads, x.shape[0], work)
    return k if k >= 2 else 0


def _sliceable(value: Any, n: int) -> bool:
    """Whether `_rows` can cut `value` by example: None, a tensor, or a diffusa.Cond (whose fields are per example
    by definition). Anything else (a user's dict or object) goes to a plain call: which of its tensors are per
    example cannot be told from their shapes."""
    import torch

    from diffusa.cond import Cond

    return value is None or (isinstance(value, Cond) and len(value) in (0, n)) or torch.is_tensor(value)


def _rows(value: Any, n: int, lo: int, hi: int) -> Any:
    """Examples lo..hi of a per-example value, its type kept; a tensor without the batch as its first dimension (a
    shared scalar) is passed whole."""
    import torch

    from diffusa.cond import Cond

    if isinstance(value, Cond):
        return value[lo:hi] if len(value) else value
    if torch.is_tensor(value) and value.ndim and value.shape[0] == n:
        return value[lo:hi]
    return value


def batch_call(net: Callable[..., Any], x: Any, c_noise: Any, cond: Any) -> Any:
    """net(x, c_noise, cond), its batch cut into `slice_count` slices run on worker threads with one torch thread
    each (module docstring), the outputs concatenated in order; a plain call where slicing does not apply. The
    result equals the plain call's up to float rounding, and is the same on every call with the same slice count."""
    import torch

    k = slice_count(x, net)
    n = x.shape[0] if k else 0
    if k == 0 or not (_sliceable(c_noise, n) and _sliceable(cond, n)):
        return net(x, c_noise, cond)
    inference = torch.is_inference_mode_enabled()
    bounds = [int(b) for b in torch.linspace(0, n, k + 1).round()]

    def part(i: int) -> Any:
        lo, hi = bounds[i], bounds[i + 1]
        _slice.index = i
        try:
            with torch.inference_mode() if inference else torch.no_grad():  # grad mode is per thread
                return net(x[lo:hi], _rows(c_noise, n, lo, hi), _rows(cond, n, lo, hi))
        finally:
            _slice.index = 0  # the worker thread runs other calls later

    outs = list(worker_pool(k).map(part, range(k)))
    return outs[0] if k == 1 else torch.cat(outs)


__all__ = ["MAX_THREADS", "SLICE_ELEMENTS", "auto_threads", "batch_call", "counts_as_call", "set_wait_policy",
           "slice_count", "use_threads", "worker_pool"]
