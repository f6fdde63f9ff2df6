"""Train the digit judge that diffusa's metrics use (feature network and "is it a digit?"), on mnist5k's train split.

    python scripts/train_digit_classifier.py [--rejection class|oe|none] [--calibration 0] [--epochs 40]
                                             [--seed 1] [--out src/diffusa/assets/digit_classifier.safetensors]

The defaults are the shipped judge's (about 7 minutes on one core of the project's CPU).

Digits are augmented (shifts, rotations, shear, scale, elastic distortion, stroke thickness: see
`diffusa.nets.classifier.augment_digits`). Non-digits (noise, blobs, blurred, partial, overlaid and shuffled
digits: `non_digits`) teach it to reject, by one of:

- class: an 11th class, "not a digit", trained with cross-entropy like the others;
- oe: outlier exposure (Hendrycks et al. 2019): cross-entropy to the uniform posterior on the non-digits;
- none: digits only (temperature scaling alone is then the only rejection signal).

`--calibration N` holds N training digits out of training; the temperature (Guo et al. 2017) is fitted on them
(and on as many fixed non-digits under `class`) by minimum NLL. The shipped judge trains on all 4,000 digits
instead: with the extra class the fitted temperature was 1.06 and changed the ECE by 0.003 (docs/judge.md).

The 1,000 held-out test digits and the fixed non-digit sets of `diffusa.metrics.judge_report` measure the result;
the output's .json records the command, the seconds and those numbers, without and with the temperature
(docs/judge.md compares the three methods).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusa.checkpoint import save_json, save_tensors
from diffusa.data import load_dataset
from diffusa.metrics import fit_temperature, judge_report
from diffusa.nets.classifier import DIGITS, NOT_A_DIGIT, TRAIN_KINDS, DigitClassifier, augment_digits, non_digits


def mixed_non_digits(digits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One non-digit per image of `digits`, each of a kind drawn uniformly from TRAIN_KINDS."""
    kinds = torch.randint(len(TRAIN_KINDS), (len(digits),), generator=g)
    out = torch.empty_like(digits)
    for k, kind in enumerate(TRAIN_KINDS):
        sel = kinds == k
        if sel.any():
            out[sel] = non_digits(kind, digits[sel], g)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rejection", choices=("class", "oe", "none"), default="class")
    ap.add_argument("--calibration", type=int, default=0, help="training digits held out to fit the temperature")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64, help="digits per step (and half as many non-digits)")
    ap.add_argument("--oe-weight", type=float, default=0.5, help="weight of the outlier-exposure term (--rejection oe)")
    ap.add_argument("--seed", type=int, default=1)
    default_out = Path(__file__).resolve().parents[1] / "src/diffusa/assets/digit_classifier.safetensors"
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args()
    command = shlex.join(["python", "scripts/train_digit_classifier.py", *sys.argv[1:]])
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))  # splits are by class
    fit, cal = order[args.calibration:], order[:args.calibration]
    net = DigitClassifier(DIGITS + 1 if args.rejection == "class" else DIGITS)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(fit) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = fit[torch.randperm(len(fit), generator=g)]
        for k in range(steps_per_epoch):
            idx = perm[k * args.batch:(k + 1) * args.batch]
            x, y = augment_digits(train.x[idx], g), train.labels[idx]
            if args.rejection == "none":
                loss = F.cross_entropy(net(x), y)
            else:
                src = train.x[fit[torch.randint(len(fit), (args.batch // 2,), generator=g)]]
                neg = mixed_non_digits(augment_digits(src, g), g)
                logits = net(torch.cat([x, neg]))
                if args.rejection == "class":
                    loss = F.cross_entropy(logits, torch.cat([y, torch.full((len(neg),), NOT_A_DIGIT)]))
                else:  # cross-entropy to the uniform distribution = mean of -log p over the classes
                    loss = F.cross_entropy(logits[:len(x)], y) \
                        - args.oe_weight * F.log_softmax(logits[len(x):], dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            acc = (net(test.x)[:, :DIGITS].argmax(1) == test.labels).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} held-out accuracy {acc:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)
    seconds = time.time() - start
    net.eval()
    raw = judge_report(net)
    temperature = 1.0
    if args.calibration:
        with torch.no_grad():
            x, y = train.x[cal], train.labels[cal]
            if args.rejection == "class":  # the held-out digits' non-digits, fixed draws of every kind
                x = torch.cat([x, mixed_non_digits(x, torch.Generator().manual_seed(args.seed + 1))])
                y = torch.cat([y, torch.full((len(cal),), NOT_A_DIGIT)])
            temperature = fit_temperature(net(x), y)
        net.temperature.fill_(temperature)
    calibrated = judge_report(net)
    out = Path(args.out)
    save_tensors(out, net.state_dict())
    record = {"command": command, "train_seconds": round(seconds, 1), "epochs": args.epochs, "seed": args.seed,
              "rejection": args.rejection, "temperature": temperature,
              "train_split": f"mnist5k train ({len(fit)} digits"
                             + (f"; {len(cal)} more held out to fit the temperature)" if len(cal) else ")"),
              "test_split": "mnist5k test (1000)", "held_out_accuracy": calibrated["accuracy"],
              "report": calibrated, "report_before_temperature": raw,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    save_json(out.with_suffix(".json"), record)
    print(json.dumps({k: record[k] for k in ("held_out_accuracy", "temperature", "train_seconds")}
                     | {"ece": calibrated["ece"], "ece_before_temperature": raw["ece"], "out": str(out)}))


if __name__ == "__main__":
    main()
