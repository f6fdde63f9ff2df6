"""Training steps per second: diffusa's U-Net against diffusers' UNet2DModel, same parameter count
(within 10%), same batch, same data, same process (one script, alternating the two so drift cancels).

    python benchmarks/train_speed.py [--batch 64] [--repeats 5] [--quick] [--out docs/results/train_speed.md]

diffusers' model is its MNIST example shape (block channels 32/64/64, two layers per block, attention in
the lower blocks). diffusa's is its default mnist5k network, widened or narrowed until the parameter counts
match, and also as shipped by default. Each training step is forward + backward + AdamW + EMA.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusa.config import RunConfig
from diffusa.nets import build_network
from diffusa.runs import network_spec
from diffusa.train import ema_update


def diffusers_unet() -> torch.nn.Module:
    """The peer: diffusers' UNet2DModel in its MNIST-example shape (about 1.1M parameters)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def diffusa_unet(channels: int | None = None) -> torch.nn.Module:
    """diffusa's default mnist5k U-Net, optionally with another base width."""
    kind, spec = network_spec(RunConfig(), (1, 28, 28))
    if channels is not None:
        spec["channels"] = channels
    return build_network(kind, spec)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def matched_diffusa(target: int) -> torch.nn.Module:
    """diffusa's U-Net with the base width whose parameter count is nearest the target."""
    best = min(range(8, 129, 4), key=lambda c: abs(n_params(diffusa_unet(c)) - target))
    return diffusa_unet(best)


class Stepper:
    """One model's training step on fixed data: forward, MSE, backward, AdamW, EMA."""

    def __init__(self, net: torch.nn.Module, is_diffusers: bool, batch: int) -> None:
        self.net, self.is_diffusers = net, is_diffusers
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, 28, 28, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        self.target = torch.randn(batch, 1, 28, 28, generator=g)

    def forward(self) -> torch.Tensor:
        if self.is_diffusers:
            return self.net(self.x, self.t).sample
        return self.net(self.x, self.t.float(), None)

    def step(self) -> None:
        loss = torch.nn.functional.mse_loss(self.forward(), self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.ema, self.net, 0.999)

    def flops(self) -> int:
        with FlopCounterMode(display=False) as fc:
            self.forward()
        return fc.get_total_flops()


def time_steps(s: Stepper, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        s.step()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per model (medians reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    ap.add_argument("--quick", action="store_true", help="one tiny round: checks the script runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats, args.steps = 4, 1, 1
    torch.manual_seed(0)
    peer = diffusers_unet()
    models = {"diffusers UNet2DModel": Stepper(peer, True, args.batch),
              "diffusa U-Net, matched params": Stepper(matched_diffusa(n_params(peer)), False, args.batch),
              "diffusa U-Net, default": Stepper(diffusa_unet(), False, args.batch)}
    for s in models.values():
        s.step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, s in models.items():  # alternate so drift hits all alike
            times[name].append(time_steps(s, args.steps))
    base = statistics.median(times["diffusers UNet2DModel"])
    lines = [f"batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats} rounds of "
             f"{args.steps} steps", "",
             "| model | parameters | MFLOP/image (fwd) | s/step | steps/s | speed vs diffusers |",
             "|---|---|---|---|---|---|"]
    for name, s in models.items():
        med = statistics.median(times[name])
        lines.append(f"| {name} | {n_params(s.net) / 1e6:.3f}M | {s.flops() / args.batch / 1e6:.0f} | {med:.3f} | "
                     f"{1 / med:.2f} | {base / med:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
