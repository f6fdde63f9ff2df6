"""`diffusa train-classifier`: a noise-aware classifier for classifier guidance. (The guidance flags of sample and
eval, --label, --prompt, --guidance-scale, --classifier, go straight to the pipeline: diffusa.pipelines.)"""

from __future__ import annotations

import argparse


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from diffusa.tasks.classifier import train_classifier

    out = train_classifier(args.run, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, progress=not args.quiet, resume=args.resume)
    from diffusa.checkpoint import load_json

    acc = load_json(out / "config.json")["held_out_accuracy"]
    print(f"done: {out}/model.safetensors; held-out accuracy by noise level: "
          + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    return 0
