"""Quality against training time for one mnist5k recipe, the time budget fixed: the sweep behind the demo's defaults.

    python benchmarks/demo_sweep.py NAME [--minutes 10] [--base KEY=VALUE ...] [--set KEY=VALUE ...] [--points 4]
                                         [--n 1000] [--curve SAMPLER:STEPS[:ETA]] [--samplers SPEC,...]
                                         [--steps N] [--emas D1,D2] [--reference S] [--keep DIR]
    python benchmarks/demo_sweep.py NAME [NAME ...] --plot PNG [--curve SPEC]   # the recorded curves, one figure

Trains with the given overrides for a fixed wall-clock budget, not a fixed step count: the run's length is set before
training from the time of one step (so the learning-rate schedule ends at the budget) and recorded. On a quiet machine
the first 30 steps are timed; with `--reference S` (seconds per step of the default recipe measured alone) the recipe's
steps are timed against the default's (with the `--base` overrides), interleaved, and the ratio scales S — robust to
whatever else runs. At `--points` evenly spaced moments of the budget it draws `--n` EMA samples with `--curve`'s
sampler (default DPM-Solver++(2M), 20 steps; seed 0; a conditional recipe draws the sample grid's conditions, labels 0,
1, ..., 9 in turn as `diffusa eval --label all` does, unguided) and scores them with the digit judge exactly as `diffusa
eval` does (FD, KID, precision/recall beside their real-vs-real floors, the share recognised with p >= 0.9, the classes
present). At the end it also scores the samplers of `--samplers` (each `SAMPLER:STEPS` or `SAMPLER:STEPS:ETA`, checked
before training), and with `--emas D1,D2,...` the same training's weights averaged with other EMA decays (tracked beside
the run's own from the first step, with the same warm-up; the choice of EMA length after training that Karras et al.
2024 make post hoc, here for a few exponential lengths), each scored with the last sampler of `--samplers` (or
`--curve`'s). `--steps N` fixes the step count instead of timing: for a recipe on the same network as one already
measured (a different process or loss costs the same per step), equal steps are equal time whatever else the machine is
doing; the training time is still recorded. `--base` overrides are the recipe's own and the reference's alike (e.g. the
demo's `model.conditioning='class'`); `--set` overrides are the candidate's. Sampling and scoring are not counted in the
budget. One JSON line per point to stdout and to docs/results/raw/demo_sweep/NAME.jsonl; `--plot` draws the recorded
curves of the NAMEs (FD over its floor against training minutes, `--curve`'s sampler) as one PNG. Run one at a time on a
quiet machine: the budget is wall-clock.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _tables import line_figure

from diffusa.config import load_config
from diffusa.data import examples, load_dataset
from diffusa.engine import Engine
from diffusa.engine.loop import ema_update
from diffusa.errors import DiffusaError
from diffusa.metrics import image_metrics
from diffusa.runs import make_denoiser
from diffusa.samplers import SAMPLERS, sample, sampler_options
from diffusa.samplers.common import check_eta
from diffusa.train import diffusion_engine

RAW = Path(__file__).resolve().parents[1] / "docs" / "results" / "raw" / "demo_sweep"
CALIBRATION = 30  # steps timed to set the run's length
KEEP = ("fd", "fd_floor", "kid", "kid_floor", "precision", "precision_floor", "recall", "recall_floor",
        "confident_share", "confident_share_floor", "classes_present")


def parse_spec(spec: str) -> tuple[str, int, dict[str, float]]:
    """`SAMPLER:STEPS` or `SAMPLER:STEPS:ETA` -> (sampler, steps, its options); ValueError naming the problem."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in SAMPLERS:
        raise ValueError(f"{spec!r}: give SAMPLER:STEPS or SAMPLER:STEPS:ETA with a sampler of {', '.join(SAMPLERS)}")
    try:
        steps, options = int(parts[1]), ({"eta": float(parts[2])} if len(parts) == 3 else {})
    except ValueError:
        raise ValueError(f"{spec!r}: STEPS must be an integer and ETA a number") from None
    if steps < 1 or (options and "eta" not in sampler_options(parts[0])):
        raise ValueError(f"{spec!r}: steps must be >= 1, and an eta needs a stochastic sampler")
    try:
        if options:
            check_eta(options["eta"])  # the samplers' own rule: finite, >= 0
    except DiffusaError as e:
        raise ValueError(f"{spec!r}: {e}") from None
    return parts[0], steps, options


def score(tr: Engine, spec: str, n: int, denoiser: object = None) -> dict[str, object]:
    """The judge's numbers for `n` EMA samples (of `denoiser`, else the run's EMA) drawn with the sampler `spec`,
    against the held-out split and a floor of n training digits (as `diffusa eval` picks them); a class-conditional
    recipe draws the labels 0, 1, ..., K-1 in turn, unguided."""
    sampler, steps, options = parse_spec(spec)
    test = examples(load_dataset("mnist5k", "test"), 10_000)
    train = load_dataset("mnist5k", "train")
    floor = train.get(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n])
    g = torch.Generator().manual_seed(0)
    conditioner = getattr(tr.task, "conditioner", None)
    cond = conditioner.grid(n, tr.device) if conditioner is not None else None
    cond = cond if cond is not None and cond.present() else None
    x = sample(denoiser or tr.task.ema_denoiser, (n, *test.shape[1:]), sampler, steps, generator=g, device=tr.device,
               cond=cond, **options)
    m = image_metrics(x.cpu(), test, floor)
    return {k: (round(m[k], 4) if isinstance(m[k], float) else m[k]) for k in KEEP}


def relative_cost(tr: Engine, default: list[str], rounds: int = 3, steps: int = 10) -> float:
    """Seconds per step of `tr` over those of the default recipe, timed in alternating rounds (median); the
    default's engine trains in a scratch folder and is thrown away. `tr` keeps the steps it takes here."""
    scratch = Path(tempfile.mkdtemp(prefix="sweep-ref-"))
    ref = diffusion_engine(load_config(overrides=default), scratch / "run", progress=False)
    ref.start_data()
    times: dict[str, list[float]] = {"tr": [], "ref": []}
    for r in range(rounds + 1):
        for key, eng in (("tr", tr), ("ref", ref)):
            t0 = time.perf_counter()
            for _ in range(steps):
                eng.train_step()
            if r:  # the first round warms up
                times[key].append(time.perf_counter() - t0)
    shutil.rmtree(scratch, ignore_errors=True)
    return statistics.median(times["tr"]) / statistics.median(times["ref"])


def plot(names: list[str], curve: str, path: Path) -> None:
    """The recorded time-quality curves of `names` (RAW/NAME.jsonl): FD over its floor against training minutes."""
    series = []
    for name in names:
        file = RAW / f"{name}.jsonl"
        if not file.exists():
            raise SystemExit(f"error: no record {file} (run the candidate first)")
        rows = [r for r in map(json.loads, filter(str.strip, file.read_text().splitlines())) if curve in r]
        if not rows:
            raise SystemExit(f"error: {file} has no {curve!r} points (give the --curve it was recorded with)")
        series.append((f"{name} ({rows[-1]['steps']:,} steps)",
                       [r["train_s"] / 60 for r in rows], [r[curve]["fd"] / r[curve]["fd_floor"] for r in rows],
                       {"marker": "o"}))
    line_figure(series, path, xlabel="training minutes", ylabel="FD / real-vs-real floor",
                title=f"time-quality, {curve}", hline=(1.0, "floor"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="+", help="the candidate (several only with --plot)")
    ap.add_argument("--plot", type=Path, help="draw the recorded curves of the NAMEs into this PNG and stop")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    ap.add_argument("--base", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of the recipe and of the reference alike")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the candidate's override")
    ap.add_argument("--points", type=int, default=4, help="moments of the budget at which to score")
    ap.add_argument("--n", type=int, default=1000, help="samples per score")
    ap.add_argument("--curve", default="dpmpp_2m:20", help="SAMPLER:STEPS[:ETA] scored at every point")
    ap.add_argument("--samplers", default="dpmpp_2m:20,unipc:20,ddim:20,ancestral:20,dpmpp_2m_sde:20",
                    help="SAMPLER:STEPS[:ETA],... also scored at the end ('' for none)")
    ap.add_argument("--reference", type=float,
                    help="seconds per step of the default recipe (with the --base overrides), measured alone")
    ap.add_argument("--steps", type=int, help="train this many steps instead of sizing them from the budget")
    ap.add_argument("--emas", default="", help="other EMA decays to track and score at the end, e.g. 0.995,0.9995")
    ap.add_argument("--keep", help="save the trained run here (a folder `diffusa sample/eval` reads)")
    args = ap.parse_args()
    if args.plot:
        plot(args.name, args.curve, args.plot)
        return
    if len(args.name) > 1:
        ap.error("one NAME to train (several only with --plot)")
    args.name = args.name[0]
    specs = [spec for spec in args.samplers.split(",") if spec]
    try:  # a bad spec is refused now, not after the budget
        curve, *others = [parse_spec(spec) for spec in (args.curve, *specs)]
    except ValueError as e:
        ap.error(str(e))
    extra = [spec for spec, parsed in zip(specs, others, strict=True) if parsed != curve]  # the curve's is scored
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=f"sweep-{args.name}-")) / "run"
    reference = ["data.name='mnist5k'", "train.steps=1000000", "train.sample_every=0", "train.checkpoint_every=0",
                 *args.base]
    overrides = [*reference, *args.set]
    tr = diffusion_engine(load_config(overrides=overrides), out, progress=False)
    tr.start_data()
    budget = args.minutes * 60
    start = time.perf_counter()
    if args.steps:
        per_step = budget / args.steps
    elif args.reference:
        per_step = args.reference * relative_cost(tr, reference)
    else:
        for _ in range(CALIBRATION):
            tr.train_step()
        per_step = (time.perf_counter() - start) / CALIBRATION
    tr.cfg.steps = total = max(CALIBRATION + 1, round(budget / per_step))
    points = [round(total * (i + 1) / args.points) for i in range(args.points)]
    RAW.mkdir(parents=True, exist_ok=True)
    log = (RAW / f"{args.name}.jsonl").open("w")
    trained = time.perf_counter() - start
    decays = [float(d) for d in args.emas.split(",") if d]
    emas = {d: copy.deepcopy(tr.model).requires_grad_(False).eval() for d in decays}
    while tr.step < total:
        t0 = time.perf_counter()
        loss, _, _ = tr.train_step()
        trained += time.perf_counter() - t0  # the extra averages are the sweep's, not the recipe's: not counted
        for d, ema in emas.items():  # the engine's warm-up rule, at the step just taken
            ema_update(ema, tr.model, min(d, tr.step / (9 + tr.step)) if tr.cfg.ema_warmup else d)
        if tr.step in points:
            rec: dict[str, object] = {"exp": args.name, "base": args.base, "set": args.set,
                                      "step": tr.step, "steps": total,
                                      "train_s": round(trained, 1), "calibrated_s_per_step": round(per_step, 4),
                                      "loss": round(float(loss), 4), args.curve: score(tr, args.curve, args.n)}
            if tr.step == total:
                for spec in extra:
                    rec[spec] = score(tr, spec, args.n)
                last = specs[-1] if specs else args.curve
                for d, ema in emas.items():
                    den = make_denoiser(ema, tr.task.process, tr.task.cfg, True)
                    rec[f"ema {d} {last}"] = score(tr, last, args.n, den)
                if args.keep:
                    tr.save()
            line = json.dumps(rec)
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
    if not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
