"""`diffusa distill --teacher RUN --method cd --out DIR`: consistency distillation (Song et al. 2023) of any run into
a student run folder that `diffusa sample DIR --steps 1` draws from. Flags and printing only: the task is
`diffusa.tasks.consistency`, the loop the engine's."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from diffusa.cli_common import non_negative_float, positive_int, threads_flag
from diffusa.errors import DiffusaError
from diffusa.threads import use_threads

# flags that set how a student is distilled: fixed once it has started (--resume takes them from its config.json)
DISTILL_FLAGS = ("method", "levels", "levels_start", "mu", "solver", "distance", "batch_size", "lr", "seed")


def cmd_distill(args: argparse.Namespace) -> int:
    from diffusa.engine import leave_distributed
    from diffusa.tasks.consistency import DistillConfig, distill_engine, distill_settings, resumed_settings

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in DISTILL_FLAGS if getattr(args, k) is not None]
        if given:
            raise DiffusaError(f"--resume continues {args.out} with the settings it started with: drop "
                               f"{', '.join(given)}")
        teacher, config, settings = resumed_settings(args.out)
        if args.teacher is not None:
            teacher = args.teacher  # the task refuses one other than the recorded teacher
        if args.steps is not None:
            settings.steps = args.steps
        if args.minutes is not None:
            settings.max_minutes = args.minutes
    else:
        if args.teacher is None:
            raise DiffusaError("--teacher RUN is needed: the run folder (or shipped model) to distil")
        config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)
                                  if getattr(args, f.name) is not None})
        kw: dict[str, Any] = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed")
                              if getattr(args, k) is not None}
        settings = distill_settings(mu=config.mu, max_minutes=args.minutes or 0.0, **kw)
        teacher = args.teacher
    if args.threads is not None:
        settings.threads = args.threads  # 0 = auto
    engine = distill_engine(teacher, args.out, settings, config, resume=args.resume, progress=not args.quiet)
    task = engine.task
    if engine.cfg.threads == 0:  # auto (the engine sets any other count itself)
        use_threads(None, task.data.kind == "image")
    if engine.dist.main:
        print(f"distilling {teacher} ({task.kind}, {sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M "
              f"parameters) into a consistency model: {config.levels} levels, {config.solver} steps of the teacher, "
              f"on {task.data.name} {list(task.data.shape)} x {len(task.data)} -> {args.out}", flush=True)
    try:
        out = engine.fit()
    finally:
        leave_distributed()
    if engine.dist.main:
        print(f"done: {out}/model.safetensors; sample it in 1 to {config.levels - 1} steps: "
              f"diffusa sample {out} --steps 1 --out samples.png")
    return 0


def add_parser(sub: Any) -> None:
    """Register `distill` on the CLI's sub-parsers."""
    from diffusa.tasks.consistency import DISTANCES, METHODS, SOLVERS, DistillConfig

    d = DistillConfig()
    p = sub.add_parser("distill", help="distil a run into a one-step consistency model",
                       description="Consistency distillation (Song et al. 2023, Algorithm 2): a student started "
                                   "from the teacher's weights learns to map every point of the teacher's "
                                   "probability-flow ODE to its end, so `diffusa sample OUT --steps 1` draws in "
                                   "one network evaluation (2 to N-1 steps: multistep consistency sampling). Any "
                                   "run is a teacher (any process, prediction, conditioning). Ctrl-C saves a "
                                   "checkpoint that --resume continues.")
    p.add_argument("--teacher", metavar="RUN", help="the run folder (or shipped model) to distil")
    p.add_argument("--method", choices=list(METHODS), help="cd: consistency distillation (the only one so far)")
    p.add_argument("--out", required=True, help="the student's run folder to write")
    p.add_argument("--steps", type=positive_int, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: 256 for points, 64 for images)")
    p.add_argument("--lr", type=non_negative_float, help="learning rate, constant after a short warm-up "
                                                          "(default 4e-4)")
    p.add_argument("--levels", type=positive_int,
                   help=f"N, the noise levels of the Karras grid the student learns (default {d.levels}); it then "
                        "samples in at most N-1 steps")
    p.add_argument("--levels-start", type=positive_int,
                   help="grow N from this many levels to --levels over training (Song et al.'s N(k)); default: "
                        "N fixed")
    p.add_argument("--mu", type=non_negative_float, help=f"EMA rate of the target network (default {d.mu})")
    p.add_argument("--solver", choices=list(SOLVERS), help=f"the teacher's ODE step (default {d.solver})")
    p.add_argument("--distance", choices=list(DISTANCES), help=f"the consistency loss's distance (default "
                                                              f"{d.distance})")
    p.add_argument("--seed", type=int)
    p.add_argument("--minutes", type=non_negative_float, help="stop (and checkpoint) after this much training time")
    p.add_argument("--resume", action="store_true",
                   help="continue the student in --out from its checkpoint, with its teacher and settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    threads_flag(p)
    p.set_defaults(func=cmd_distill)
