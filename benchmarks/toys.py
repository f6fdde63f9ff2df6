"""2-D points: every process's default training and every fast sampler at 10 network evaluations, on the built-in
toys and on user-like arrays (other scales, narrow and wide modes, far from the origin), against the real-vs-real
energy-distance floor.

    python benchmarks/toys.py [--sets moons,...,ring8] [--processes ddpm,vp,...] [--workers 2] [--steps N]
                              [--out docs/results/toys.md] [--raw docs/results/raw/toys.json] [--quick]

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


def cell(name: str, process: str, steps: int | None, work: str) -> dict[str, Any]:
    """Train one (set, process) and score every sampler; runs in a worker process on one thread."""
    torch.set_num_threads(1)
    from diffusa.config import load_config
    from diffusa.metrics import energy_distance
    from diffusa.pipelines.sampling import network_calls
    from diffusa.runs import load_run
    from diffusa.samplers import sample
    from diffusa.train import diffusion_engine

    data, test, real = real_splits(name, Path(work))
    mean, std = test.mean(0), test.std(0)

    def ed(x: torch.Tensor) -> float:
        return energy_distance((x - mean) / std, (test - mean) / std)

    overrides = [f"data.name={data!r}", f"process.name={process!r}", "train.sample_every=0"]
    if steps:
        overrides.append(f"train.steps={steps}")
    cfg = load_config(overrides=overrides)
    out = Path(work) / f"{name}-{process}"
    start = time.time()
    diffusion_engine(cfg, out, progress=False).fit()
    row: dict[str, Any] = {"set": name, "process": process, "train_steps": cfg.train.steps,
                           "train_s": time.time() - start, "floor": ed(real), "ed": {}, "nfe": {}}
    run = load_run(out)
    row["standardized"] = "standardize" in run.meta
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
        lines.append(f"| {r['set']} | {r['process']} | {'yes' if r['standardized'] else 'no'} | {r['train_s']:.0f} | "
                     f"{r['floor']:.5f} | " + " | ".join(cells) + f" | {ratios['rk45']:.2f} ({r['nfe']['rk45']}) | "
                     + " | ".join(f"{r['ed20'][s] / r['floor']:.2f}" for s in CANDIDATES) + " |")
    return lines


def geo(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-9)) for v in values) / len(values))


def cells20(rows: list[dict[str, Any]]) -> list[str]:
    """The (sampler, grid) keys every row scored at STEPS steps: the CANDIDATES on each grid measured."""
    return [key(s, g) for g in GRIDS for s in CANDIDATES if all(key(s, g) in r["ed20"] for r in rows)]


def recommend(rows: list[dict[str, Any]]) -> tuple[str, float, float]:
    """(sampler key, geometric mean, worst) of the CANDIDATES at STEPS steps, on every grid measured, over the sets
    of one process: the best geometric mean of energy distance / floor; within CLOSE of it, the smallest worst case.
    The key is `key(sampler, spacing)`."""
    scored = [(geo(q), max(q), s) for s in cells20(rows) for q in [[r["ed20"][s] / r["floor"] for r in rows]]]
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


def report(rows: list[dict[str, Any]], processes: list[str]) -> list[str]:
    """The markdown: every cell, then the per-process summary with its recommendation."""
    return [f"Energy distance / real-vs-real floor at {NFE} network evaluations (standardised coordinates; "
            f"best sampler in bold; std.: trained standardised)", "", *table(rows), "",
            "Per process, over the sets: worst / geometric mean of the ratio (SAMPLER@logsnr: on the grid uniform "
            "in log-SNR over the process's levels; SAMPLER@logsnr-unit: over sigma/alpha in [0.05, 80])", "",
            *summary(rows, processes)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(BUILTIN + USER), help="comma-separated sets")
    ap.add_argument("--processes", default=",".join(PROCESSES), help="comma-separated processes")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (default: the config's)")
    ap.add_argument("--workers", type=int, default=2, help="cells trained at once, one thread each")
    ap.add_argument("--quick", action="store_true", help="20 steps, moons and ring8 with edm: checks the script runs")
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
        emit(report(rows, [p for p in PROCESSES if any(r["process"] == p for r in rows)]), args.out)
        return
    sets, processes = args.sets.split(","), args.processes.split(",")
    steps = args.steps
    if args.quick:
        sets, processes, steps = ["moons", "ring8"], ["edm"], 20
    bad = [s for s in sets if s not in BUILTIN + USER] + [p for p in processes if p not in PROCESSES]
    if bad:
        sys.exit(f"unknown set or process: {', '.join(bad)}")
    work = tempfile.mkdtemp(prefix="diffusa-toys-")
    for s in sets:  # the .npz files exist before the workers race to write them
        real_splits(s, Path(work))
    jobs = [(s, p) for s in sets for p in processes]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(cell, s, p, steps, work) for s, p in jobs]
        for k, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            rows.append(r)
            best = min(SAMPLERS, key=lambda s: r["ed"][s])
            print(f"[{k}/{len(jobs)}] {r['set']:12s} {r['process']:6s} floor {r['floor']:.5f}  "
                  f"dpmpp_2m {r['ed']['dpmpp_2m'] / r['floor']:.2f}x  best {best} "
                  f"{r['ed'][best] / r['floor']:.2f}x  rk45 {r['ed']['rk45'] / r['floor']:.2f}x  "
                  f"train {r['train_s']:.0f}s", flush=True)
    order = {j: i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["set"], r["process"])])
    emit(report(rows, processes), args.out)
    if args.raw:
        Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
        Path(args.raw).write_text(json.dumps([{k: v for k, v in r.items() if k not in ("points", "test")}
                                              for r in rows], indent=1))
    if args.plot:
        plot(rows, sets, processes, Path(args.plot))
    shutil.rmtree(work, ignore_errors=True)
    if not all(math.isfinite(v) for r in rows for v in r["ed"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
