"""2-D points: every process's default training and every fast sampler at 10 network evaluations, on the built-in
toys and on user-like arrays (other scales, narrow and wide modes, far from the origin), against the real-vs-real
energy-distance floor.

    python benchmarks/toys.py [--sets moons,...,ring8] [--processes ddpm,vp,...] [--workers 2] [--steps N]
                              [--out docs/results/toys.md] [--raw docs/results/raw/toys.json] [--quick]
                              [--seeds K [--bar-only]] [--set KEY=VALUE ...] [--runs DIR]

Each (set, process) cell trains `diffusa train --data SET --process P` with the default config (3,000 steps, batch
256, lr 2e-3; the user-like sets go through an .npz file, as a user's would, so "auto" standardisation applies),
then draws 2,000 samples with each sampler at 10 network evaluations (counted by a hook on the network: Heun spends
two per step) and with RK45 (the probability-flow ODE solved to 1e-3, the limit a deterministic sampler tends to),
and compares them with 2,000 held-out points; the candidates for a recommendation (DPM-Solver++(2M), (3M),
UniPC, DPM-Solver++(2M) SDE) also at 20 steps, each on the process's default grid, on the grid uniform in
log-SNR over the process's range (`--spacing logsnr`; keys "SAMPLER@logsnr", at 10 NFE too) and on the one uniform
in log-SNR over the levels of unit-scale data (`--spacing logsnr-unit`). A process's recommended sampler and grid
(`recommend`, written into each point run's config.json as "sampling" through diffusa.config.POINT_SAMPLING) is the
candidate with the best geometric mean of energy distance / floor over the sets at 20 steps; where two are within
5%, the one with the smaller worst case. `--from-raw FILE` rebuilds the tables from a raw
file without training.
The floor is 2,000 other real points against the same held-out set.
Energy distances are taken after standardising every coordinate by the held-out set's mean and std, so a set in
metres and one in degrees are scored alike and a narrow coordinate counts as much as a wide one.

The user-like sets (written by this script, seed 0):
  ring8   8 modes on a circle of radius 2, std 0.1 (issue 17's report: scale ~2, narrow modes; unit scale for
          "auto", so not standardised)
  metres  3 modes in the hundreds: a wide one (std 40) and two narrow ones (std 8), weights 1/2, 1/4, 1/4
  aniso   x in hundredths (two modes at +-0.03, std 0.005), y in tens (mode +-40, std 10, sign tied to x)
  offset  two narrow modes (std 0.05, 0.5 apart) around (1000, -500)

One draw of 2,000 points is a noisy judge: fresh real points, scored the same way, range from 0.3x to 6x the floor
over 20 draws (the mixtures' weights vary from draw to draw). `--seeds K` (K > 1) therefore also scores the samplers
the bar names (SEEDED: the 10-step recommendation, the 20-step one, RK45) over K seeds (RK45 over RK45_SEEDS): seed
k draws the samples from noise seed k, a fresh reference set and a fresh real set (never the training points); the
score is the mean energy distance of the samples to the references over the mean of the real sets' (the floor): the
expected ratio at 2,000 points, with its standard error. The references must be fresh too: against one fixed
held-out set a sampler's error and that set's own deviation add or cancel, and no number of seeds averages it out
(the exact denoiser on `metres`: 2.5x against one set, 1.2x over fresh ones). `--bar-only` skips the one-draw sweep.

Workers train one cell each on one thread (point networks are small; diffusa's passive OpenMP wait lets two share
two cores, docs/results/two_processes.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _tables import emit

N = 2000
TRAIN_N = 20000
PROCESSES = ("ddpm", "vp", "subvp", "ve", "edm", "flow")
BUILTIN = ("moons", "swissroll", "8gaussians", "checkerboard")
USER = ("ring8", "metres", "aniso", "offset")
SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "euler_ancestral", "ancestral", "dpmpp_2m_sde")
NFE = 10
CANDIDATES = ("dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde")  # also at STEPS: the choice of a recommendation
STEPS = 20
CLOSE = 1.05  # geometric means within 5% are a tie, broken by the worst set
# the process's default grid, uniform in log-SNR over its own range, and over the levels of unit-scale data
# (samplers.make_grid)
GRIDS = (None, "logsnr", "logsnr-unit")
# scored over --seeds sample seeds: (sampler, steps, spacing); the 10-step recommendation (docs/benchmarks.md), the
# alternative at 10, the 20-step recommendation (config.POINT_SAMPLING), and the ODE's limit (RK45, fewer seeds: slow)
SEEDED = (("unipc", NFE, "logsnr-unit"), ("dpmpp_3m", NFE, "logsnr-unit"), ("dpmpp_2m_sde", STEPS, "logsnr-unit"),
          ("rk45", 0, None))
RK45_SEEDS = 3


def key(sampler: str, spacing: str | None) -> str:
    """A (sampler, grid) cell's name in the raw rows: "dpmpp_3m" on the default grid, "dpmpp_3m@logsnr"."""
    return sampler if spacing is None else f"{sampler}@{spacing}"


def split_key(name: str) -> tuple[str, str | None]:
    """`key`'s inverse: (sampler, spacing or None)."""
    sampler, _, spacing = name.partition("@")
    return sampler, spacing or None


def _ring8() -> tuple[list[float], list[list[float]], list[list[float]]]:
    k = torch.arange(8, dtype=torch.float64)
    centres = 2 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return [1 / 8] * 8, centres.tolist(), [[0.1, 0.1]] * 8


# The user-like sets as 2-D Gaussian mixtures with diagonal covariance: (weights, means, per-coordinate stds) in
# the data's units (the module docstring); the exact denoiser of each is the oracle of tests/test_mixture_oracle.py
USER_MIXTURES: dict[str, tuple[list[float], list[list[float]], list[list[float]]]] = {
    "ring8": _ring8(),
    "metres": ([0.5, 0.25, 0.25], [[0.0, 0.0], [300.0, 100.0], [-200.0, 250.0]],
               [[40.0, 40.0], [8.0, 8.0], [8.0, 8.0]]),
    "aniso": ([0.5, 0.5], [[-0.03, -40.0], [0.03, 40.0]], [[0.005, 10.0], [0.005, 10.0]]),
    "offset": ([0.5, 0.5], [[999.75, -500.0], [1000.25, -500.0]], [[0.05, 0.05], [0.05, 0.05]]),
}


def user_set(name: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points of a user-like set (USER_MIXTURES), float32 (n, 2): a component by inverting the weights' cumulative
    sum at a uniform draw, then its mean plus its stds times a standard normal draw."""
    weights, means, stds = (torch.tensor(v, dtype=torch.float64) for v in USER_MIXTURES[name])
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    k = torch.searchsorted(weights.cumsum(0), u, right=True).clamp(max=len(weights) - 1)
    return (means[k] + stds[k] * z).float()


def seeded_key(sampler: str, steps: int, spacing: str | None) -> str:
    """'SAMPLER[@GRID]/STEPS', or 'rk45' (adaptive steps)."""
    return sampler if sampler == "rk45" else f"{key(sampler, spacing)}/{steps}"


def fresh_draw(name: str, seed: int) -> torch.Tensor:
    """N new points of a set (seed >= 100: never the training or held-out draws): from its mixture for a user-like
    set, from its generator (diffusa.data.builtin.TOYS) for a built-in toy."""
    if name in USER_MIXTURES:
        return user_set(name, N, torch.Generator().manual_seed(seed))
    from diffusa.data.builtin import TOYS

    # N of 20N points: scikit-learn's moons lie at evenly spaced angles (only their noise is random), so two draws
    # of N alone nearly coincide and their energy distance is a tenth of a random sample's
    x = TOYS[name](20 * N, np.random.default_rng(seed))
    return torch.from_numpy(x[np.random.default_rng(seed).permutation(len(x))[:N]].astype(np.float32))


def real_splits(name: str, work: Path) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(what to train on: a toy's name or an .npz path, held-out points, other real points for the floor)."""
    from diffusa.data import load_dataset

    if name in BUILTIN:
        train = load_dataset(name, "train").x
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:N]
        return name, load_dataset(name, "test").x[:N], train[pick]
    gen = torch.Generator().manual_seed(0)
    train, test = user_set(name, TRAIN_N, gen), user_set(name, N, gen)
    path = work / f"{name}.npz"
    if not path.exists():
        np.savez(path, x=train.numpy())
    return str(path), test, train[:N]


def finished(out: Path, steps: int) -> bool:
    """Whether out holds a run trained to `steps` steps (for --runs)."""
    try:
        return json.loads((out / "train_state.json").read_text())["step"] == steps
    except (OSError, ValueError, KeyError):
        return False


def cell(name: str, process: str, steps: int | None, work: str, seeds: int = 1, sweep: bool = True,
         extra: tuple[str, ...] = (), runs: str | None = None) -> dict[str, Any]:
    """Train one (set, process) (with the config overrides `extra`; into `runs` when given, reusing a run trained
    there already) and score every sampler (sweep), and the SEEDED ones over `seeds` seeds when seeds > 1; runs in a
    worker process on one thread."""
    torch.set_num_threads(1)
    from diffusa.config import load_config
    from diffusa.metrics import energy_distance
    from diffusa.pipelines.sampling import network_calls
    from diffusa.runs import load_run
    from diffusa.samplers import UNIT_SIGMA_MAX, sample
    from diffusa.train import diffusion_engine

    data, test, real = real_splits(name, Path(work))
    mean, std = test.mean(0), test.std(0)

    def ed(x: torch.Tensor) -> float:
        return energy_distance((x - mean) / std, (test - mean) / std)

    overrides = [f"data.name={data!r}", f"process.name={process!r}", "train.sample_every=0", *extra]
    if steps:
        overrides.append(f"train.steps={steps}")
    cfg = load_config(overrides=overrides)
    out = Path(runs or work) / f"{name}-{process}"
    start, train_s = time.time(), None
    from diffusa.config import DATA_DEFAULTS

    if not (runs and finished(out, cfg.train.steps or DATA_DEFAULTS["points"]["steps"])):
        shutil.rmtree(out, ignore_errors=True)
        diffusion_engine(cfg, out, progress=False).fit()
        train_s = time.time() - start
    row: dict[str, Any] = {"set": name, "process": process, "train_steps": cfg.train.steps, "overrides": list(extra),
                           "train_s": train_s, "floor": ed(real), "ed": {}, "nfe": {}}
    run = load_run(out)
    row["standardized"] = "standardize" in run.meta
    if seeds > 1:
        refs = [(fresh_draw(name, 200 + j) - mean) / std for j in range(seeds)]
        row["floors"] = [energy_distance((fresh_draw(name, 100 + j) - mean) / std, refs[j]) for j in range(seeds)]
        row["seeded"] = {}
        row["unit_sigma_max"] = UNIT_SIGMA_MAX  # the logsnr-unit grid's top these scores were drawn on
        for sampler, k, spacing in SEEDED:
            row["seeded"][seeded_key(sampler, k, spacing)] = [
                energy_distance((run.to_data(sample(run.denoiser, (N, 2), sampler, k or NFE, spacing=spacing,
                                                    generator=torch.Generator().manual_seed(j))) - mean) / std,
                                refs[j])
                for j in range(min(seeds, RK45_SEEDS) if sampler == "rk45" else seeds)]
    if not sweep:
        return row
    for sampler in (*SAMPLERS, "rk45"):
        k = NFE // 2 + (NFE % 2) if sampler == "heun" else NFE  # Heun: two calls a step, one on the last
        with torch.no_grad(), network_calls(run.net) as calls:
            x = sample(run.denoiser, (N, 2), sampler, k, generator=torch.Generator().manual_seed(0))
        x = run.to_data(x)
        row["ed"][sampler], row["nfe"][sampler] = ed(x), calls[0]
    row["ed20"], row["points"] = {}, {}
    for sampler in CANDIDATES:
        for spacing in GRIDS:
            for k, into in ((STEPS, row["ed20"]), (NFE, row["ed"])):
                if spacing is None and k == NFE:  # scored above
                    continue
                x = run.to_data(sample(run.denoiser, (N, 2), sampler, k, spacing=spacing,
                                       generator=torch.Generator().manual_seed(0)))
                into[key(sampler, spacing)] = ed(x)
                if k == STEPS:
                    row["points"][key(sampler, spacing)] = x[:1000].tolist()
    row["test"] = test[:1000].tolist()
    return row


def plot(rows: list[dict[str, Any]], sets: list[str], processes: list[str], path: Path) -> None:
    """Samples of each process's recommended sampler (`recommend`) over held-out points: a row per set, a column
    per process."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["set"], r["process"]): r for r in rows}
    pick = {p: recommend([r for r in rows if r["process"] == p])[0] for p in processes}
    fig, axes = plt.subplots(len(sets), len(processes), figsize=(2.2 * len(processes), 2.2 * len(sets)),
                             squeeze=False)
    for i, s in enumerate(sets):
        for j, p in enumerate(processes):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            r = by.get((s, p))
            if r is None:
                continue
            t, x = np.array(r["test"]), np.array(r["points"][pick[p]])
            ax.scatter(t[:, 0], t[:, 1], s=1, c="tab:gray", alpha=0.3)
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", alpha=0.5)
            lo, hi = np.percentile(t, 0.5, 0), np.percentile(t, 99.5, 0)
            pad = 0.15 * (hi - lo)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_title(f"{s} / {p}, {pick[p]}: {r['ed20'][pick[p]] / r['floor']:.1f}x", fontsize=7)
    fig.suptitle(f"Each process's recommended sampler, {STEPS} steps (blue), over held-out points (grey); "
                 "energy distance / floor", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Energy distance / floor per sampler at 10 NFE (and RK45), a row per (set, process); the best in bold."""
    head = ["set", "process", "std.", "train s", "floor", *SAMPLERS, "rk45 (NFE)",
            *(f"{s} ({STEPS})" for s in CANDIDATES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratios = {s: r["ed"][s] / r["floor"] for s in (*SAMPLERS, "rk45")}
        best = min(SAMPLERS, key=lambda s: ratios[s])
        cells = [f"**{ratios[s]:.2f}**" if s == best else f"{ratios[s]:.2f}" for s in SAMPLERS]
        lines.append(f"| {r['set']} | {r['process']} | {'yes' if r['standardized'] else 'no'} | "
                     f"{'reused' if r['train_s'] is None else round(r['train_s'])} | "
                     f"{r['floor']:.5f} | " + " | ".join(cells) + f" | {ratios['rk45']:.2f} ({r['nfe']['rk45']}) | "
                     + " | ".join(f"{r['ed20'][s] / r['floor']:.2f}" for s in CANDIDATES) + " |")
    return lines


def geo(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-9)) for v in values) / len(values))


def cells20(rows: list[dict[str, Any]], field: str = "ed20") -> list[str]:
    """The (sampler, grid) keys every row scored at STEPS steps (`field` "ed": at NFE): the CANDIDATES on each grid
    measured."""
    return [key(s, g) for g in GRIDS for s in CANDIDATES if all(key(s, g) in r[field] for r in rows)]


def recommend(rows: list[dict[str, Any]], field: str = "ed20") -> tuple[str, float, float]:
    """(sampler key, geometric mean, worst) of the CANDIDATES at STEPS steps (`field` "ed": at NFE, the few-step
    recommendation, config.POINT_FEW_STEPS), on every grid measured, over the sets of one process: the best
    geometric mean of energy distance / floor; within CLOSE of it, the smallest worst case. The key is
    `key(sampler, spacing)`."""
    scored = [(geo(q), max(q), s) for s in cells20(rows, field) for q in [[r[field][s] / r["floor"] for r in rows]]]
    best = min(g for g, _, _ in scored)
    g, worst, s = min((t for t in scored if t[0] <= CLOSE * best), key=lambda t: t[1])
    return s, g, worst


def summary(rows: list[dict[str, Any]], processes: list[str]) -> list[str]:
    """Per process: worst / geometric mean of the ratio over the sets, for every sampler at NFE and the candidates
    at STEPS steps; the recommendation those numbers give."""
    grid20 = cells20(rows)
    grid10 = [k for k in grid20 if "@" in k and all(k in r["ed"] for r in rows)]
    head = ([f"{s} ({NFE})" for s in (*SAMPLERS, *grid10)] + [f"{s} ({STEPS})" for s in grid20]
            + ["recommended"])
    lines = ["| process | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for p in processes:
        mine = [r for r in rows if r["process"] == p]
        if not mine:
            continue
        cells = [f"{max(q):.2f} / {geo(q):.2f}" for s in (*SAMPLERS, *grid10)
                 for q in [[r["ed"][s] / r["floor"] for r in mine]]]
        cells += [f"{max(q):.2f} / {geo(q):.2f}" for s in grid20
                  for q in [[r["ed20"][s] / r["floor"] for r in mine]]]
        s, g, worst = recommend(mine)
        cells.append(f"**{s}, {STEPS} steps** ({worst:.2f} / {g:.2f})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def full_report(rows: list[dict[str, Any]], processes: list[str]) -> list[str]:
    """The one-draw sweep's tables (when swept), then the seeded ones (when scored)."""
    swept = [r for r in rows if r["ed"]]
    seeded = seeded_report(rows, processes)
    return (report(swept, processes) if swept else []) + ([""] if swept and seeded else []) + seeded


def report(rows: list[dict[str, Any]], processes: list[str]) -> list[str]:
    """The markdown: every cell, then the per-process summary with its recommendation."""
    return [f"Energy distance / real-vs-real floor at {NFE} network evaluations (standardised coordinates; "
            f"best sampler in bold; std.: trained standardised)", "", *table(rows), "",
            "Per process, over the sets: worst / geometric mean of the ratio (SAMPLER@logsnr: on the grid uniform "
            "in log-SNR over the process's levels; SAMPLER@logsnr-unit: over sigma/alpha in [0.05, 80])", "",
            *summary(rows, processes)]


def seeded_ratio(r: dict[str, Any], k: str) -> tuple[float, float]:
    """(mean energy distance over the seeds / mean floor, its standard error)."""
    eds = r["seeded"][k]
    floor = sum(r["floors"][:len(eds)]) / len(eds)  # the same reference sets
    m = sum(eds) / len(eds)
    se = math.sqrt(sum((e - m) ** 2 for e in eds) / (len(eds) - 1) / len(eds)) if len(eds) > 1 else float("nan")
    return m / floor, se / floor


def seeded_report(rows: list[dict[str, Any]], processes: list[str]) -> list[str]:
    """The expected ratio at N points per (set, process) for the SEEDED samplers, the per-process summary against
    the 2x bar, and the noise of one draw (fresh real points over the mean floor)."""
    rows = [r for r in rows if "seeded" in r]
    if not rows:
        return []
    top = rows[0].get("unit_sigma_max", 80.0)  # raw written before the top was recorded: it was 80 then
    keys = [seeded_key(*c) for c in SEEDED]
    seeds = max(len(v) for r in rows for v in r["seeded"].values())
    head = ["set", "process", "mean floor", "one real set / mean floor: min-max", *keys]
    lines = [f"Over {seeds} seeds (RK45: {min(seeds, RK45_SEEDS)}), a fresh reference set and a fresh real set each: "
             f"mean energy distance of the samples / the real sets', +- one standard error; logsnr-unit's top at "
             f"sigma/alpha {top:g}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        floor = sum(r["floors"]) / len(r["floors"])
        spread = f"{min(r['floors']) / floor:.2f}-{max(r['floors']) / floor:.2f}"
        cells = [f"{m:.2f} +- {e:.2f}" for k in keys for m, e in [seeded_ratio(r, k)]]
        lines.append(f"| {r['set']} | {r['process']} | {floor:.5f} | {spread} | " + " | ".join(cells) + " |")
    lines += ["", "Per process, over the sets: worst (set) / geometric mean / sets within 2x", "",
              "| process | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for p in processes:
        mine = [r for r in rows if r["process"] == p]
        if not mine:
            continue
        cells = []
        for k in keys:
            q = {r["set"]: seeded_ratio(r, k)[0] for r in mine}
            worst = max(q, key=lambda s: q[s])
            cells.append(f"{q[worst]:.2f} ({worst}) / {geo(list(q.values())):.2f} / "
                         f"{sum(v <= 2 for v in q.values())} of {len(q)}")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(BUILTIN + USER), help="comma-separated sets")
    ap.add_argument("--processes", default=",".join(PROCESSES), help="comma-separated processes")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (default: the config's)")
    ap.add_argument("--workers", type=int, default=2, help="cells trained at once, one thread each")
    ap.add_argument("--seeds", type=int, default=1, help="> 1: also score SEEDED over this many sample seeds")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every training (a candidate default), as `diffusa train --set`")
    ap.add_argument("--runs", default=None, help="train into this folder and reuse the runs already trained there "
                    "(same set, process and steps; one folder per --set): other samplers or grids without retraining")
    ap.add_argument("--bar-only", action="store_true", help="only the seeded scores (needs --seeds > 1)")
    ap.add_argument("--quick", action="store_true", help="20 steps, moons and ring8 with edm, 2 seeds: checks the "
                    "script runs")
    ap.add_argument("--out", default=None, help="markdown file for the tables")
    ap.add_argument("--raw", default=None, help="JSON file for every number (without the plotted points)")
    ap.add_argument("--plot", default=None, help="PNG of the samples, a row per set and a column per process")
    ap.add_argument("--from-raw", default=None, help="rebuild the tables from this raw JSON file (no training)")
    args = ap.parse_args()
    if args.from_raw:
        try:
            rows = json.loads(Path(args.from_raw).read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"--from-raw {args.from_raw}: not a raw file of this benchmark ({e})")
        procs = [p for p in PROCESSES if any(r["process"] == p for r in rows)]
        emit(full_report(rows, procs), args.out)
        return
    sets, processes = args.sets.split(","), args.processes.split(",")
    steps = args.steps
    if args.quick:
        sets, processes, steps, args.seeds = ["moons", "ring8"], ["edm"], 20, max(args.seeds, 2)
    if args.bar_only and args.seeds < 2:
        sys.exit("--bar-only needs --seeds 2 or more")
    if args.runs and Path(args.runs).exists() and not Path(args.runs).is_dir():
        sys.exit(f"--runs {args.runs}: not a folder")
    bad = [s for s in sets if s not in BUILTIN + USER] + [p for p in processes if p not in PROCESSES]
    if bad:
        sys.exit(f"unknown set or process: {', '.join(bad)}")
    work = tempfile.mkdtemp(prefix="diffusa-toys-")
    for s in sets:  # the .npz files exist before the workers race to write them
        real_splits(s, Path(work))
    jobs = [(s, p) for s in sets for p in processes]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(cell, s, p, steps, work, args.seeds, not args.bar_only, tuple(args.set),
                               args.runs)
                   for s, p in jobs]
        for k, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            rows.append(r)
            took = "reused" if r["train_s"] is None else f"{r['train_s']:.0f}s"
            line = f"[{k}/{len(jobs)}] {r['set']:12s} {r['process']:6s} train {took}"
            if r["ed"]:
                best = min(SAMPLERS, key=lambda s: r["ed"][s])
                line += (f"  floor {r['floor']:.5f}  dpmpp_2m {r['ed']['dpmpp_2m'] / r['floor']:.2f}x  best {best} "
                         f"{r['ed'][best] / r['floor']:.2f}x  rk45 {r['ed']['rk45'] / r['floor']:.2f}x")
            if "seeded" in r:
                line += "  seeded: " + "  ".join(f"{k} {seeded_ratio(r, k)[0]:.2f}x" for k in r["seeded"])
            print(line, flush=True)
    order = {j: i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["set"], r["process"])])
    emit(full_report(rows, processes), args.out)
    if args.raw:
        Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
        Path(args.raw).write_text(json.dumps([{k: v for k, v in r.items() if k not in ("points", "test")}
                                              for r in rows], indent=1))
    if args.plot and not args.bar_only:
        plot(rows, sets, processes, Path(args.plot))
    shutil.rmtree(work, ignore_errors=True)
    scores = [v for r in rows for v in r["ed"].values()] + [e for r in rows for v in r.get("seeded", {}).values()
                                                            for e in v]
    if not all(math.isfinite(v) for v in scores):
        sys.exit(1)


if __name__ == "__main__":
    main()
