"""Training steps per second: diffusa's U-Net against diffusers' UNet2DModel, same parameter count
(within 10%), same batch, same data, same process (one script, alternating the two so drift cancels).

    python benchmarks/train_speed.py [--batch 64] [--repeats 5] [--quick] [--out docs/results/train_speed.md]

diffusers' model is its MNIST example shape (block channels 32/64/64, two layers per block, attention in
the lower blocks). diffusa's is its default mnist5k network, widened or narrowed until the parameter counts
match (nearest even base width), and also as shipped by default. Parameter counts are matched;
FLOPs are not: diffusa's default network folds 2x2 patches into channels, so at equal parameters
it does about a quarter of the arithmetic — that is the point of its design, and the table shows both.
Each training step is forward + backward + AdamW + EMA.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _tables import emit
from torch.utils.flop_counter import FlopCounterMode

from diffusa.config import RunConfig
from diffusa.nets import build_network
from diffusa.runs import network_spec
from diffusa.train import ema_update

PEERS = {
    # Hugging Face's diffusion course MNIST model: two layers per block, attention in the lower blocks (1.71M)
    "diffusers UNet2DModel 32/64/64, 2 layers": dict(
        layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    # the same channels with one layer per block and attention in the middle block only (1.11M)
    "diffusers UNet2DModel 32/64/64, 1 layer": dict(
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


def diffusers_unet(name: str) -> torch.nn.Module:
    """A peer: diffusers' UNet2DModel for 28x28 digits with block channels 32/64/64."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       **PEERS[name])


def diffusa_unet(channels: int | None = None, num_res_blocks: int | None = None) -> torch.nn.Module:
    """diffusa's default mnist5k U-Net, optionally with another base width or depth."""
    kind, spec = network_spec(RunConfig(), (1, 28, 28))
    if channels is not None:
        spec["channels"] = channels
    if num_res_blocks is not None:
        spec["num_res_blocks"] = num_res_blocks
    return build_network(kind, spec)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def matched_diffusa(target: int) -> torch.nn.Module:
    """diffusa's default U-Net with the base width (even) whose parameter count is nearest the target."""
    best = min(range(8, 97, 2), key=lambda c: abs(n_params(diffusa_unet(c)) - target))
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
    models: dict[str, Stepper] = {}
    pairs: dict[str, str] = {}
    for i, name in enumerate(PEERS):
        peer = diffusers_unet(name)
        mine = matched_diffusa(n_params(peer))
        models[name] = Stepper(peer, True, args.batch)
        models[f"diffusa U-Net, width {mine.cfg.channels} (matched to {i + 1})"] = Stepper(mine, False, args.batch)
        pairs[f"diffusa U-Net, width {mine.cfg.channels} (matched to {i + 1})"] = name
        if args.quick:
            break
    models["diffusa U-Net, default (width 32)"] = Stepper(diffusa_unet(), False, args.batch)
    pairs["diffusa U-Net, default (width 32)"] = next(iter(PEERS))
    if not args.quick:
        # no patching: full-resolution levels 28/14/7, width 32, attention at 7x7 -- within 7% of peer (2)
        # in parameters and 3% in FLOPs, so this row compares the implementations on equal work
        full = build_network("unet", {**network_spec(RunConfig(), (1, 28, 28))[1], "patch_size": 1,
                                      "attention_resolutions": [7]})
        models["diffusa U-Net, full resolution (patch 1)"] = Stepper(full, False, args.batch)
        pairs["diffusa U-Net, full resolution (patch 1)"] = list(PEERS)[1]
    for s in models.values():
        s.step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, s in models.items():  # alternate so drift hits all alike
            times[name].append(time_steps(s, args.steps))
    lines = [f"batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats} rounds of "
             f"{args.steps} steps; ratios against the diffusers model named in the last column", "",
             "| model | parameters | MFLOP/image (fwd) | s/step | steps/s | speed vs diffusers | against |",
             "|---|---|---|---|---|---|---|"]
    peer_index = {name: i + 1 for i, name in enumerate(PEERS)}
    for name, s in models.items():
        med = statistics.median(times[name])
        peer = pairs.get(name, name)
        ratio = statistics.median(times[peer]) / med
        lines.append(f"| {name} | {n_params(s.net) / 1e6:.3f}M | {s.flops() / args.batch / 1e6:.0f} | {med:.3f} | "
                     f"{1 / med:.2f} | {ratio:.2f}x | ({peer_index[peer]}) |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
