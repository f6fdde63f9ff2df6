"""The guidance side of the command line: --label, --prompt, --guidance-scale, --classifier (sample and eval),
and `diffusa train-classifier`."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from diffusa.errors import DiffusaError


def requested_labels(text: str | None, n: int, num_classes: int) -> torch.Tensor | None:
    """--label: one class for every sample, or "all" for 0, 1, ..., K-1 over and over."""
    if text is None:
        return None
    if text == "all":
        return torch.arange(n) % num_classes
    if not text.isdigit() or int(text) >= num_classes:
        raise DiffusaError(f"--label must be 'all' or a class in 0..{num_classes - 1}, got {text!r}")
    return torch.full((n,), int(text), dtype=torch.long)


def classifier_scale(args: argparse.Namespace) -> float:
    """--classifier-scale, 1 when not given (None by default, so that it can be refused without --classifier)."""
    return 1.0 if args.classifier_scale is None else args.classifier_scale


def guided(run: Any, args: argparse.Namespace, n: int) -> tuple[Any, torch.Tensor | None]:
    """The run's denoiser with the guidance the flags ask for, and the labels to condition on."""
    from diffusa.guidance import ClassifierGuided, classifier_free, null_labels

    den, label = run.denoiser, getattr(args, "label", None)
    classifier = getattr(args, "classifier", None)
    scale = getattr(args, "guidance_scale", None)
    prompt = getattr(args, "prompt", None)
    if getattr(args, "classifier_scale", None) is not None and not classifier:
        raise DiffusaError("--classifier-scale scales classifier guidance: add --classifier DIR")
    if prompt is not None or run.is_text:
        return text_guided(run, args, n)
    if label is None and (classifier or scale is not None):
        raise DiffusaError("guidance needs a class to guide towards: add --label K (or --label all)")
    if label is None:
        return den, None
    if classifier:
        from diffusa.classifier import guidance_log_prob

        log_prob, k = guidance_log_prob(classifier, den.process)
        y = requested_labels(label, n, k)
        if run.num_classes and scale is not None:
            den = classifier_free(den, scale, lambda c: null_labels(c, run.num_classes))
        return ClassifierGuided(den, log_prob, classifier_scale(args), model_cond=run.num_classes > 0), y
    if not run.num_classes:
        raise DiffusaError(f"{run.path} is unconditional: --label needs a model trained with --class-conditional, "
                           "or a noise-aware classifier (--classifier DIR from `diffusa train-classifier`)")
    y = requested_labels(label, n, run.num_classes)
    if scale is not None:
        den = classifier_free(den, scale, lambda c: null_labels(c, run.num_classes))
    return den, y


def text_guided(run: Any, args: argparse.Namespace, n: int) -> tuple[Any, Any]:
    """A text-conditional run: --prompt (or --label K / all, captioned "a handwritten K"), classifier-free
    guided against the empty caption."""
    from diffusa.guidance import classifier_free, null_captions
    from diffusa.text import digit_caption

    if not run.is_text:
        raise DiffusaError(f"{run.path} is not text-conditional: --prompt needs a model trained with "
                           "--set model.conditioning=\"text\"")
    if getattr(args, "classifier", None):
        raise DiffusaError("--classifier guides class labels; a text model is guided by --guidance-scale")
    if args.prompt is not None:
        prompts = [args.prompt] * n
    elif args.label is not None:
        labels = requested_labels(args.label, n, 10)
        prompts = [digit_caption(int(y), "a handwritten {d}") for y in labels.tolist()]
    else:
        raise DiffusaError("this model is text-conditional: give --prompt \"a handwritten 7\" (or --label K)")
    den = run.denoiser
    if args.guidance_scale is not None:  # against the empty caption
        den = classifier_free(den, args.guidance_scale, null_captions(run.net))
    return den, run.net.tokenize(prompts)


def slice_cond(cond: Any, lo: int, hi: int) -> Any:
    """Examples lo..hi of a conditioning: a tensor, or a dict of tensors (text)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: v[lo:hi] for k, v in cond.items()}
    return cond[lo:hi]


def conditional_metrics(x: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Conditional accuracy: the digit classifier's argmax on the samples against the requested labels."""
    from diffusa.metrics import classify

    _, probs = classify(x)
    return {"label": args.label, "guidance_scale": args.guidance_scale, "classifier": args.classifier,
            "classifier_scale": classifier_scale(args) if args.classifier else None,
            "conditional_accuracy": float((probs.argmax(1) == labels).float().mean())}


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from diffusa.classifier import train_classifier

    out = train_classifier(args.run, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, progress=not args.quiet)
    from diffusa.checkpoint import load_json

    acc = load_json(out / "config.json")["held_out_accuracy"]
    print(f"done: {out}/classifier.safetensors; held-out accuracy by noise level: "
          + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    return 0
