"""Train the digit classifier that diffusa's metrics use as feature network, on mnist5k's training split.

    python scripts/train_digit_classifier.py [--epochs 30] [--out src/diffusa/assets/digit_classifier.safetensors]

Only the 4,000 training digits are used; the 1,000 held-out digits measure its accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusa.checkpoint import save_json, save_tensors
from diffusa.data import load_dataset
from diffusa.nets.classifier import DigitClassifier


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and small rotations/scales, so generated digits off-centre still count."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) - 0.5) * 0.4
    scale = 1 + (torch.rand(b, generator=g) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=g) - 0.5) * 4 / 14
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    default_out = Path(__file__).resolve().parents[1] / "src/diffusa/assets/digit_classifier.safetensors"
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    net = DigitClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(train) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(train), generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * 64:(k + 1) * 64]
            loss = F.cross_entropy(net(augment(train.x[idx], g)), train.labels[idx], label_smoothing=0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = (net(test.x).argmax(1) == test.labels).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} held-out accuracy {acc:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    out = Path(args.out)
    save_tensors(out, net.state_dict())
    save_json(out.with_suffix(".json"), {"held_out_accuracy": acc, "epochs": args.epochs, "seed": args.seed,
                                         "train_split": "mnist5k train (4000)", "test_split": "mnist5k test (1000)",
                                         "command": "python scripts/train_digit_classifier.py"})
    print(json.dumps({"held_out_accuracy": acc, "out": str(out)}))


if __name__ == "__main__":
    main()
