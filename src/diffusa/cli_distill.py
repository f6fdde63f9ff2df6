"""`diffusa distill --teacher RUN --method cd|reflow --out DIR`: consistency distillation (Song et al. 2023) or
reflow (Liu et al. 2022) of any run into a run folder that `diffusa sample DIR --steps 1` draws from; and
`diffusa straightness RUN`, the straightness of a run's probability-flow ODE (Liu et al. 2022). Flags and printing
only: the tasks are `diffusa.tasks.consistency` and `diffusa.tasks.reflow`, the loop the engine's."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from diffusa.cli_common import non_negative_float, non_negative_int, positive_int, print_json, threads_flag
from diffusa.errors import DiffusaError
from diffusa.threads import use_threads

METHODS = ("cd", "reflow")
# flags that set how a student is made: fixed once it has started (--resume takes them from its config.json)
CD_FLAGS = ("levels", "levels_start", "mu", "distance", "guidance_range")
REFLOW_FLAGS = ("pairs", "ode_steps", "fresh", "distill_steps")
DISTILL_FLAGS = ("method", *CD_FLAGS, *REFLOW_FLAGS, "solver", "batch_size", "lr", "seed")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [_flag(k) for k in names if getattr(args, k) not in (None, False)]


def scale_range(text: str) -> tuple[float, float]:
    """argparse type of --guidance-range: W_MIN,W_MAX, two numbers (their range is checked by GuidanceRange)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two guidance scales W_MIN,W_MAX (e.g. 1,5), got {text!r}") \
            from None


def resumed(out: str) -> tuple[str, str, Any, Any]:
    """(method, teacher, the method's config, training settings) a student folder was started with."""
    from diffusa.engine.state import check_out
    from diffusa.runs import read_run_meta
    from diffusa.tasks.consistency import resumed_settings
    from diffusa.tasks.reflow import METHOD, resumed_reflow

    check_out(out, resume=True)  # a folder with nothing to resume is refused as `train --resume` refuses it
    meta = read_run_meta(Path(out))
    table = meta.get("distill")
    if isinstance(table, dict) and table.get("method") == METHOD and isinstance(table.get("teacher"), str):
        return (METHOD, *resumed_reflow(table, meta))
    return ("cd", *resumed_settings(out))


def settings_for(method: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """(the method's config, training settings) of a new student from the flags."""
    kw: dict[str, Any] = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed") if getattr(args, k)
                          is not None}
    if method == "reflow":
        from diffusa.tasks.reflow import ReflowConfig, reflow_settings

        config = ReflowConfig(**{k: getattr(args, k) for k in ("pairs", "solver", "ode_steps", "distill_steps")
                                 if getattr(args, k) is not None}, init="fresh" if args.fresh else "auto")
        return config, reflow_settings(max_minutes=args.minutes or 0.0, **kw)
    from diffusa.tasks.consistency import DistillConfig, distill_settings

    config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)
                              if getattr(args, f.name, None) is not None})
    return config, distill_settings(mu=config.mu, max_minutes=args.minutes or 0.0, **kw)


def reflow_what(k: int, distill_steps: int) -> str:
    """What a reflow task makes, in words: a k-rectified flow, or a K-step distillation of one."""
    if distill_steps:
        return f"a {distill_steps}-step distillation of the {k}-rectified flow (Liu et al. 2022, Sec. 2.3)"
    return f"a {k}-rectified flow"


def cmd_distill(args: argparse.Namespace) -> int:
    from diffusa.engine import leave_distributed
    from diffusa.tasks.consistency import distill_engine
    from diffusa.tasks.reflow import reflow_engine

    if args.resume:
        given = _given(args, DISTILL_FLAGS)
        if given:
            raise DiffusaError(f"--resume continues {args.out} with the settings it started with: drop "
                               f"{', '.join(given)}")
        method, teacher, config, settings = resumed(args.out)
        if args.teacher is not None:
            teacher = args.teacher  # the task refuses one other than the recorded teacher
        if args.steps is not None:
            settings.steps = args.steps
        if args.minutes is not None:
            settings.max_minutes = args.minutes
    else:
        if args.teacher is None:
            raise DiffusaError("--teacher RUN is needed: the run folder (or shipped model) to distil")
        method = args.method or "cd"
        other = _given(args, REFLOW_FLAGS if method == "cd" else CD_FLAGS)
        if other:
            raise DiffusaError(f"{', '.join(other)} {'does' if len(other) == 1 else 'do'} not apply to --method "
                               f"{method}")
        config, settings = settings_for(method, args)
        teacher = args.teacher
    if args.threads is not None:
        settings.threads = args.threads  # 0 = auto
    make = reflow_engine if method == "reflow" else distill_engine
    engine = make(teacher, args.out, settings, config, resume=args.resume, progress=not args.quiet)
    task = engine.task
    if engine.cfg.threads == 0:  # auto (the engine sets any other count itself)
        use_threads(None, task.data.kind == "image")
    if engine.dist.main:
        what = (f"{reflow_what(task.k, config.distill_steps)} on {config.pairs} pairs of its ODE ({config.solver}, "
                f"{config.ode_steps} steps), from {'its' if task.start == 'teacher' else 'fresh'} weights"
                if method == "reflow" else
                f"a consistency model: {config.levels} levels, {config.solver} steps of the teacher"
                + ("" if config.guidance is None else f", guided at w in {config.guidance.low:g}.."
                                                      f"{config.guidance.high:g} (an input of the student)"))
        print(f"distilling {teacher} ({task.kind}, {sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M "
              f"parameters) into {what}, on {task.data.name} {list(task.data.shape)} -> {args.out}", flush=True)
    try:
        out = engine.fit()
    finally:
        leave_distributed()
    if engine.dist.main:
        if method == "reflow":
            steps = config.distill_steps or 1
            print(f"done: {out}/model.safetensors; sample it in {steps} Euler step{'s' * (steps > 1)}: diffusa sample "
                  f"{out} --sampler euler --steps {steps} --out samples.png; its straightness: diffusa straightness "
                  f"{out}")
        else:
            scale = "" if config.guidance is None else f" --guidance-scale {config.guidance.default:g}"
            print(f"done: {out}/model.safetensors; sample it in 1 to {config.levels - 1} steps: "
                  f"diffusa sample {out} --steps 1{scale} --out samples.png")
    return 0


def cmd_straightness(args: argparse.Namespace) -> int:
    import torch

    from diffusa.reflow import straightness
    from diffusa.runs import load_run
    from diffusa.shipped import run_path
    from diffusa.tasks.reflow import teacher_k

    run = load_run(run_path(args.run))
    use_threads(args.threads, run.is_image)
    if args.label is not None and not 0 <= args.label < max(run.num_classes, 1):
        raise DiffusaError(f"--label {args.label} needs a class-conditional run with that class; this run has "
                           f"{run.num_classes} classes")
    s = straightness(run.denoiser, run.data_shape, args.n, args.steps, label=args.label,
                     generator=torch.Generator().manual_seed(args.seed))
    print_json({"run": str(args.run), "straightness": s, "per_dimension": s / math.prod(run.data_shape), "process":
                run.meta.get("process", {}).get("name"), "reflow_k": teacher_k(run.meta), "n": args.n,
                "euler_steps": args.steps, "label": args.label, "seed": args.seed}, args.out)
    return 0


def add_parser(sub: Any) -> None:
    """Register `distill` and `straightness` on the CLI's sub-parsers."""
    from diffusa.reflow import ODE_SOLVERS, STRAIGHTNESS_STEPS
    from diffusa.tasks.consistency import DISTANCES, SOLVERS, DistillConfig
    from diffusa.tasks.reflow import ReflowConfig

    d, r = DistillConfig(), ReflowConfig()
    p = sub.add_parser("distill", help="distil a run into a one-step model (consistency model, or reflowed flow)",
                       description="--method cd, consistency distillation (Song et al. 2023, Algorithm 2): a student "
                                   "started from the teacher's weights learns to map every point of the teacher's "
                                   "probability-flow ODE to its end, so `diffusa sample OUT --steps 1` draws in "
                                   "one network evaluation (2 to N-1 steps: multistep consistency sampling). "
                                   "--method reflow (Liu et al. 2022): (noise, sample) pairs of the teacher's ODE, "
                                   "then a new flow trained on them, straighter than the teacher, sampled in one "
                                   "Euler step (`--sampler euler --steps 1`); reflow a reflowed flow for k > 2. Any "
                                   "run is a teacher (any process, prediction; cd also text conditioning). Ctrl-C "
                                   "saves a checkpoint that --resume continues.")
    p.add_argument("--teacher", metavar="RUN", help="the run folder (or shipped model) to distil")
    p.add_argument("--method", choices=list(METHODS), help="cd: consistency distillation (default); reflow: "
                                                           "rectified flow")
    p.add_argument("--out", required=True, help="the student's run folder to write")
    p.add_argument("--steps", type=positive_int, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: 256 for points, 64 for images)")
    p.add_argument("--lr", type=non_negative_float, help="learning rate (cd: 4e-4, constant after a short warm-up; "
                                                          "reflow: the data's default, 2e-3 for points, 1e-3 for "
                                                          "images, cosine)")
    p.add_argument("--solver", choices=sorted(set(SOLVERS) | set(ODE_SOLVERS)),
                   help=f"the teacher's ODE solver (cd: one step of it, default {d.solver}; reflow: the whole "
                        f"ODE, default {r.solver})")
    cd = p.add_argument_group("consistency distillation (--method cd)")
    cd.add_argument("--levels", type=positive_int,
                    help=f"N, the noise levels of the Karras grid the student learns (default {d.levels}); it then "
                         "samples in at most N-1 steps")
    cd.add_argument("--levels-start", type=positive_int,
                    help="grow N from this many levels to --levels over training (Song et al.'s N(k)); default: "
                         "N fixed")
    cd.add_argument("--mu", type=non_negative_float, help=f"EMA rate of the target network (default {d.mu})")
    cd.add_argument("--distance", choices=list(DISTANCES), help=f"the consistency loss's distance (default "
                                                               f"{d.distance})")
    cd.add_argument("--guidance-range", type=scale_range, metavar="W_MIN,W_MAX",
                    help="guided distillation of a class- or text-conditional teacher (Luo et al. 2023): each "
                         "example draws w in [W_MIN, W_MAX], the teacher steps with classifier-free guidance at w, "
                         "and the student takes w as an input, so it draws guided in one network call per step "
                         "(--guidance-scale inside the range; default 3 clamped into it); default: unguided")
    rf = p.add_argument_group("reflow (--method reflow)")
    rf.add_argument("--pairs", type=positive_int, help=f"(noise, sample) pairs drawn from the teacher's ODE once, "
                                                        f"kept in OUT/pairs.safetensors (default {r.pairs})")
    rf.add_argument("--ode-steps", type=positive_int, help=f"the solver's steps for each pair (default "
                                                           f"{r.ode_steps})")
    rf.add_argument("--fresh", action="store_true",
                    help="train the new flow from fresh weights (default: from the teacher's when it is a "
                         "velocity-predicting flow of the same network, as the paper fine-tunes)")
    rf.add_argument("--distill-steps", type=non_negative_int, metavar="K",
                    help="K >= 1: distil the teacher flow to K Euler steps (Liu et al. 2022, Sec. 2.3): its own "
                         "pairs, trained only at the times of K-step Euler's grid (1 for one step); default 0: "
                         "reflow, t ~ U(0, 1)")
    p.add_argument("--seed", type=int, help="training seed (reflow: also the pairs')")
    p.add_argument("--minutes", type=non_negative_float,
                     help="stop (and checkpoint) after this much training time in this invocation "
                          "(a --resume gets as many more)")
    p.add_argument("--resume", action="store_true",
                   help="continue the student in --out from its checkpoint, with its teacher and settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    threads_flag(p)
    p.set_defaults(func=cmd_distill)

    s = sub.add_parser("straightness", help="the straightness of a run's probability-flow ODE; prints JSON",
                       description="S = int_0^1 E||(Z_1 - Z_0) - v(Z_t, t)||^2 dt (Liu et al. 2022), the mean "
                                   "squared deviation of the ODE's velocity from each path's straight chord, "
                                   "estimated along Euler paths from the prior; the ODE of any process is read in "
                                   "the flow's time. 0: every path straight, one Euler step exact.")
    s.add_argument("run", help="a run folder or shipped model")
    s.add_argument("--n", type=positive_int, default=2000, help="paths (default 2000)")
    s.add_argument("--steps", type=positive_int, default=STRAIGHTNESS_STEPS,
                   help=f"Euler steps of each path (default {STRAIGHTNESS_STEPS})")
    s.add_argument("--label", type=int, help="a class-conditional run: the class of every path (default: "
                                             "unconditional)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="also write the JSON here")
    threads_flag(s)
    s.set_defaults(func=cmd_straightness)
