"""Speed, side by side with diffusers on equal work: forward, training step, sampling, memory, GFLOP/s.

    python benchmarks/speed.py [--repeats 5] [--quick] [--out docs/results/speed.md]

The peer is diffusers' UNet2DModel for 28x28 digits (block channels 32/64/64, one layer per block,
attention at 14x14 and in the 7x7 middle block: 1.11M parameters). diffusa's U-Net is configured to the
same work: full resolution (no patch folding), width 30, channel multipliers 1/2/2, attention at 14x14 and
7x7 -- parameters within 5% and forward FLOPs per image within 10% of the peer, counted with
torch.utils.flop_counter (the script checks both and refuses to print ratios otherwise). A second
diffusa row shows the default mnist5k network (2x2 patches folded into channels: a quarter of the FLOPs).

Each library runs as its users get it by default. diffusa calls its network as a Denoiser does
(`diffusa.threads.batch_call`: on CPU without autograd the batch is cut into one slice per thread, each on one
torch thread; a small batch runs on one thread) and trains with the engine's batch shards
(`diffusa.engine.shards`); diffusers calls its UNet2DModel whole with torch's intra-op threads. A fifth column,
for honesty, runs the peer's network through diffusa's threading (the same slices and shards), so the share of
the speed-up that is threading and the share that is the network can be told apart.

Rows, each a median over `--repeats` rounds after a warm-up, the models alternating round by round:
forward at batch 1, 16 and 64 (inference mode); a training step at batch 64 (forward, MSE, backward,
AdamW, EMA); 64 images with 50 DDIM steps end to end (diffusers: DDIMScheduler's loop as DDIMPipeline
runs it; diffusa: `diffusa.sample`); peak resident memory of a training process and of a sampling
process (each in a fresh process). GFLOP/s is the counted forward FLOPs (x3 for a training step)
over the time; the CPU's fp32 peak is cores x clock x 32 FLOP/cycle (two 8-wide FMA units, AVX2).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _tables import emit
from torch.utils.flop_counter import FlopCounterMode

from diffusa.config import RunConfig, TrainConfig
from diffusa.engine.loop import ema_update, make_optimizer
from diffusa.engine.shards import Shards, auto_shards
from diffusa.engine.task import StepLoss
from diffusa.nets import build_network
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM
from diffusa.runs import network_spec
from diffusa.samplers import sample
from diffusa.threads import batch_call

# the peer's channels (32/64/64) at full resolution; attention at 7x7 (and in the middle block); a 96-wide noise
# embedding: 1.03x the peer's parameters and 0.97x its FLOPs
EQUAL_WORK = {"patch_size": 1, "channels": 32, "channel_mult": [1, 2, 2], "attention_resolutions": [7],
              "emb_mult": 3}
# the same with attention at 14x14 as well, where the peer has it (1.03x parameters, 1.08x FLOPs)
EQUAL_WORK_ATTN14 = {**EQUAL_WORK, "attention_resolutions": [14]}
MODELS = ("diffusers", "diffusa", "diffusa attn14", "diffusa default", "diffusers threaded")
MEMORY_MODELS = MODELS[:4]  # the threaded peer is a speed reference only


def build(name: str) -> torch.nn.Module:
    """One of MODELS, with fixed initial weights."""
    torch.manual_seed(0)
    if name.startswith("diffusers"):
        from diffusers import UNet2DModel

        return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(32, 64, 64),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    spec = network_spec(RunConfig(), (1, 28, 28))[1]
    if name == "diffusa":
        spec.update(EQUAL_WORK)
    elif name == "diffusa attn14":
        spec.update(EQUAL_WORK_ATTN14)
    return build_network("unet", spec)


def forward_fn(name: str, net: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """net(x, integer timesteps) -> output tensor, whichever library, called as that library calls it (module
    docstring): diffusa's, and the threaded peer's, through `batch_call`."""
    if name == "diffusers":
        return lambda x, t: net(x, t).sample
    if name == "diffusers threaded":
        return lambda x, t: batch_call(lambda xs, ts, _: net(xs, ts).sample, x, t, None)
    return lambda x, t: batch_call(net, x, t.float(), None)


def params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def flops_per_image(name: str, net: torch.nn.Module) -> int:
    """The network's forward FLOPs for one image, counted in this thread (a counting mode is per thread, so not
    through `batch_call`'s workers)."""
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([500])
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(x, t) if name.startswith("diffusers") else net(x, t.float(), None)
    return fc.get_total_flops()


class Bench:
    """Every timed task for one model."""

    def __init__(self, name: str, sample_steps: int, train_batch: int, sample_batch: int) -> None:
        self.name = name
        self.net = build(name).eval()
        self.fwd = forward_fn(name, self.net)
        self.sample_steps, self.sample_batch = sample_steps, sample_batch
        self.train_net = build(name).train()
        self.train_fwd = forward_fn(name, self.train_net)
        # each library as its users train: diffusers' example uses torch's AdamW defaults and its EMAModel;
        # diffusa the engine's optimizer (fused AdamW) and foreach EMA
        if name.startswith("diffusers"):
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.train_net.parameters(), decay=0.999)
            self.opt = torch.optim.AdamW(self.train_net.parameters(), lr=1e-4)
        else:
            self.ema = copy.deepcopy(self.train_net).requires_grad_(False)
            self.opt = make_optimizer(self.train_net.parameters(), TrainConfig(lr=1e-4), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        self.xb = torch.randn(train_batch, 1, 28, 28, generator=g)
        self.tb = torch.randint(0, 1000, (train_batch,), generator=g)
        self.target = torch.randn(train_batch, 1, 28, 28, generator=g)
        k = 1 if name == "diffusers" else auto_shards(torch.get_num_threads(), train_batch, cpu=True, world=1,
                                                       scaler=False, model=self.train_net, shardable=True)
        self.shards = Shards(k, list(self.train_net.parameters()), None) if k > 1 else None

    def _losses(self, idx: torch.Tensor, x: torch.Tensor, _: torch.Generator) -> StepLoss:
        """Per-example MSE of examples idx (a shard's share of the step)."""
        out = self.train_fwd(x, self.tb[idx])
        return StepLoss(((out - self.target[idx]) ** 2).flatten(1).mean(1))

    def forward(self, batch: int) -> None:
        with torch.inference_mode():
            self.fwd(self.xb[:batch], self.tb[:batch])

    def train_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.shards is not None:  # as the engine steps: the batch in threads, gradients summed in order
            _, _, grads = self.shards(self._losses, torch.arange(self.xb.shape[0]), self.xb, 0)
            for p, grad in zip(self.shards.params, grads, strict=True):
                p.grad = grad
        else:
            torch.nn.functional.mse_loss(self.train_fwd(self.xb, self.tb), self.target).backward()
        self.opt.step()
        if self.name.startswith("diffusers"):
            self.ema.step(self.train_net.parameters())
        else:
            ema_update(self.ema, self.train_net, 0.999)

    def sample(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        shape = (self.sample_batch, 1, 28, 28)
        if self.name.startswith("diffusers"):
            from diffusers import DDIMScheduler

            sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
            with torch.inference_mode():
                x = torch.randn(shape, generator=g)
                sched.set_timesteps(self.sample_steps)
                for t in sched.timesteps:
                    x = sched.step(self.fwd(x, t.expand(x.shape[0])), t, x).prev_sample
            return x
        den = Denoiser.from_network(self.net, DiscreteDDPM("linear", 1000), "eps", clip_x0=1.0)
        return sample(den, shape, "ddim", self.sample_steps, generator=g, spacing="leading")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(name: str, task: str, args: argparse.Namespace) -> None:
    """Run one task in this fresh process and print its peak resident memory as JSON."""
    b = Bench(name, args.sample_steps, args.train_batch, args.sample_batch)
    base_mib = _status_mib("VmRSS")
    for _ in range(2 if task == "train" else 1):
        b.train_step() if task == "train" else b.sample()
    print(json.dumps({"peak_mib": _status_mib("VmHWM"), "base_mib": base_mib}))


def _status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM is the peak resident set). Not
    getrusage's ru_maxrss: a child forked from this big parent would inherit the parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} missing from /proc/self/status")


def peak_memory(name: str, task: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", name, task, "--sample-steps", str(args.sample_steps),
           "--train-batch", str(args.train_batch), "--sample-batch", str(args.sample_batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_peak_gflops() -> float:
    """cores x clock x 32 fp32 FLOP/cycle (two 8-wide FMA pipes) -- the AVX2 ceiling of this CPU."""
    mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
    return torch.get_num_threads() * statistics.mean(mhz) * 1e6 * 32 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="a seconds-long check that the script runs")
    ap.add_argument("--out")
    ap.add_argument("--json", help="also write the raw medians here")
    ap.add_argument("--tasks", default="forward,train,sample,memory",
                    help="comma-separated subset of forward, train, sample, memory")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args)
        return
    if args.quick:
        args.repeats, args.sample_steps, args.train_batch, args.sample_batch = 1, 2, 4, 4
    benches = {m: Bench(m, args.sample_steps, args.train_batch, args.sample_batch) for m in MODELS}
    info = {m: {"params": params(b.net), "flops": flops_per_image(m, b.net)} for m, b in benches.items()}
    ratios = {m: (info[m]["params"] / info["diffusers"]["params"], info[m]["flops"] / info["diffusers"]["flops"])
              for m in ("diffusa", "diffusa attn14")}
    for m, (pr, fr) in ratios.items():
        if not (abs(pr - 1) <= 0.05 and abs(fr - 1) <= 0.10):
            raise SystemExit(f"{m}: not equal work: parameters {pr:.3f}x, FLOPs {fr:.3f}x the peer's")
    fwd_batches = [1, 16, 64] if not args.quick else [1, 4]
    chosen = args.tasks.split(",")
    tasks: dict[str, tuple[Callable[[Bench], object], int]] = {}
    if "forward" in chosen:
        tasks.update({f"forward, batch {b}": ((lambda bench, b=b: bench.forward(b)), b) for b in fwd_batches})
    if "train" in chosen:
        tasks[f"training step, batch {args.train_batch}"] = (Bench.train_step, 3 * args.train_batch)
    if "sample" in chosen:
        tasks[f"sampling {args.sample_batch} images, DDIM {args.sample_steps} steps"] = (
            Bench.sample, args.sample_batch * args.sample_steps)
    times: dict[str, dict[str, list[float]]] = {t: {m: [] for m in MODELS} for t in tasks}
    for task, (fn, _) in tasks.items():
        reps = 20 if task.startswith("forward, batch 1") and not args.quick else 1
        for b in benches.values():
            fn(b)  # warm-up
        for _ in range(args.repeats):
            for m, b in benches.items():  # alternate so drift hits all alike
                times[task][m].append(timed(lambda fn=fn, b=b, reps=reps: [fn(b) for _ in range(reps)]) / reps)
    med = {t: {m: statistics.median(v) for m, v in d.items()} for t, d in times.items()}
    mem_tasks = ("train",) if args.quick else ("train", "sample")  # quick: one child per model, same code path
    mem = ({m: {task: peak_memory(m, task, args) for task in mem_tasks} for m in MEMORY_MODELS}
           if "memory" in chosen else {})
    peak = cpu_peak_gflops()

    threads = torch.get_num_threads()

    def shape(m: str) -> str:
        pr, fr = info[m]["params"] / info["diffusers"]["params"], info[m]["flops"] / info["diffusers"]["flops"]
        return (f"{info[m]['params'] / 1e6:.3f}M parameters ({pr:.3f}x), {info[m]['flops'] / 1e6:.0f} MFLOP/image "
                f"({fr:.3f}x)")

    lines = [f"{threads} threads; this CPU's fp32 peak {peak:.0f} GFLOP/s (cores x clock x 32); medians of "
             f"{args.repeats} alternating rounds after a warm-up. diffusers: "
             f"{info['diffusers']['params'] / 1e6:.3f}M parameters, {info['diffusers']['flops'] / 1e6:.0f} "
             f"MFLOP/image. diffusa at equal work: {shape('diffusa')}; with attention at 14x14 as the peer: "
             f"{shape('diffusa attn14')}; diffusa's default network: {shape('diffusa default')}.", "",
             "| task | diffusers (s) | diffusa (s) | speed-up at equal work | target 1.3x | diffusers GFLOP/s "
             "(% peak) | diffusa GFLOP/s (% peak) | diffusa, attention at 14x14 (s) | its speed-up "
             "| diffusa default (s) | default speed-up | diffusers on diffusa's threading (s) | attention at 14x14 "
             "over it |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def rate(m: str, task: str, images: int) -> str:
        g = info[m]["flops"] * images / med[task][m] / 1e9
        return f"{g:.1f} ({g / peak:.0%})"

    for task, (_, images) in tasks.items():
        d, a, a14, dd, dt = (med[task][m] for m in MODELS)
        lines.append(f"| {task} | {d:.4f} | {a:.4f} | {d / a:.2f}x | {'met' if d / a >= 1.3 else 'missed'} | "
                     f"{rate('diffusers', task, images)} | {rate('diffusa', task, images)} | {a14:.4f} | "
                     f"{d / a14:.2f}x | {dd:.4f} | {d / dd:.2f}x | {dt:.4f} | {dt / a14:.2f}x |")
    for task, label in (("train", f"training, batch {args.train_batch}"),
                        ("sample", f"sampling {args.sample_batch} images")) if mem else ():
        if task not in mem_tasks:
            continue
        d, a, a14, dd = (mem[m][task]["peak_mib"] for m in MEMORY_MODELS)
        lines.append(f"| peak RSS (MiB), {label} | {d:.0f} | {a:.0f} | {d / a:.2f}x less | "
                     f"{'met' if a <= d else 'missed'} (no higher) | | | {a14:.0f} | {d / a14:.2f}x less | "
                     f"{dd:.0f} | {d / dd:.2f}x less | | |")
    emit(lines, args.out)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "median_s": med, "memory": mem, "peak_gflops": peak},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
