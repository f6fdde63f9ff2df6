"""Two diffusa processes on the same cores (issue 17 item 5): does each get its share, or do they fight?

    python benchmarks/two_processes.py [--policy old,new] [--seconds 30] [--out FILE] [--raw FILE] [--quick]

Scenarios, each run for `--seconds` of steady work (every process started, every training past its first logged
step), under each `--policy`:

- (a) a 2-D training (`diffusa train --data moons`, its defaults) alone; a loop of `diffusa generate` commands
  (the shipped mnist-pixel model, 16 images, default sampler) alone; the two side by side. The training's speed is
  steps/s from its own log (one record a step: `step` and `elapsed_s` of the records the window holds); the
  generate loop's is seconds per command (wall time, start-up included, of the commands that started and ended
  inside the window; '>' when none ended: a lower bound).
- (b) a mnist5k training (the default image model, batch 64) alone; two of them side by side.

Each window begins `--warmup` seconds after the last workload became ready, so first-step costs stay out.

Each side-by-side speed is given as a ratio to the same work alone (fair share on a machine the two fill: 0.5;
the issue's target: >= 0.40 for each). Policies:

- new: diffusa's defaults: OpenMP threads wait passively (`import diffusa` sets OMP_WAIT_POLICY=PASSIVE) and
  `--threads auto` (1 thread for point data, one per core for images), an image training's batch split over one
  thread per core (train.shards auto). See diffusa.threads and diffusa.engine.shards.
- unsharded: new, but each training computes its batch in one piece on torch's intra-op threads (train.shards=1,
  diffusa's default before batch shards).
- old: what diffusa did before: libgomp's default wait (spin ~300,000 turns, then sleep; set here as
  GOMP_SPINCOUNT=300000, which also keeps diffusa from choosing) and torch's default threads (one per core) for
  every command.
- single: diffusa's wait policy and one thread for every command (images too): what `--threads 1` buys.
- active: OMP_WAIT_POLICY=ACTIVE (threads spin while they wait) and one thread per core: the worst case.
- passive: OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once) and `--threads auto`.
- spin10k: GOMP_SPINCOUNT=10000 (a waiting thread spins ~10,000 turns, tens of microseconds, then sleeps) and
  `--threads auto`.

The trainings stop when the window ends (killed; nothing of them is kept). `--quick`: the new policy, 1-second
windows, a 2-step generate and 8x8 `digits` instead of mnist5k (seconds; proves the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _tables import emit, write_json

POLICIES = ("old", "new", "unsharded", "single", "active", "passive", "spin10k")
TRAIN_FLAGS = {"unsharded": ["--set", "train.shards=1"]}  # flags of a policy for `diffusa train` only
OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
POLL_S = 0.05
TARGET = 0.40


def policy_env(policy: str) -> tuple[dict[str, str], list[str]]:
    """(environment, extra CLI flags) of a policy; the caller's own OpenMP settings are dropped."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    cores = str(len(os.sched_getaffinity(0)))
    if policy in ("new", "unsharded"):
        return env, []
    if policy == "single":
        return env, ["--threads", "1"]
    if policy == "old":
        return {**env, "GOMP_SPINCOUNT": "300000"}, ["--threads", cores]
    if policy == "passive":
        return {**env, "OMP_WAIT_POLICY": "PASSIVE"}, []
    if policy == "spin10k":
        return {**env, "GOMP_SPINCOUNT": "10000"}, []
    return {**env, "OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", cores]


def diffusa(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffusa.cli", *args]


@dataclass
class Training:
    """A `diffusa train` process and its log records as they appear: (time seen here, step, elapsed_s)."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    records: list[tuple[float, int, float]] = field(default_factory=list)
    _offset: int = 0

    @property
    def err_path(self) -> Path:
        return self.log.parent.with_name(f"{self.log.parent.name}.stderr")  # beside the run folder, not in it

    def start(self, env: dict[str, str]) -> None:
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)

    def poll(self, now: float) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            err = self.err_path.read_text(errors="replace")
            raise SystemExit(f"error: {self.name} stopped early (exit {self.proc.returncode}): {err.strip()[-500:]}")
        if not self.log.exists():
            return
        with self.log.open() as f:
            f.seek(self._offset)
            text = f.read()
        complete = text[:text.rfind("\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            rec = json.loads(line)
            self.records.append((now, int(rec["step"]), float(rec["elapsed_s"])))

    @property
    def ready(self) -> float | None:
        return self.records[0][0] if self.records else None

    def rate(self, t0: float, t1: float) -> tuple[float, str]:
        """Steps/s between the first and last records seen in [t0, t1] (the process's own clock); with fewer than
        two, an upper bound ('<')."""
        inside = [r for r in self.records if t0 <= r[0] <= t1]
        if len(inside) < 2 or inside[-1][2] <= inside[0][2]:
            return (len(inside) + 1) / max(t1 - t0, 1e-9), "<"
        return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2]), ""


@dataclass
class GenerateLoop:
    """`diffusa generate` commands one after another: (start, end) of each."""

    argv: list[str]
    folder: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    runs: list[tuple[float, float]] = field(default_factory=list)
    count: int = 0

    def poll(self, now: float, env: dict[str, str]) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                return
            if self.proc.returncode != 0:
                err = (self.folder / "stderr").read_text(errors="replace")
                raise SystemExit(f"error: diffusa generate failed (exit {self.proc.returncode}): {err.strip()[-500:]}")
            self.runs.append((self.started, now))
        self.count += 1
        out = self.folder / f"g{self.count}.png"
        with (self.folder / "stderr").open("w") as err:
            self.proc = subprocess.Popen([*self.argv, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        self.started = time.perf_counter()

    @property
    def ready(self) -> float | None:
        return self.runs[0][0] if self.runs else (self.started or None)

    def seconds(self, t0: float, t1: float) -> tuple[float, str]:
        """Median seconds per command of those inside [t0, t1]; with none, a lower bound ('>')."""
        inside = [b - a for a, b in self.runs if a >= t0 and b <= t1]
        if not inside:
            return t1 - max(t0, self.started), ">"
        return statistics.median(inside), ""


def stop(proc: subprocess.Popen | None) -> None:
    """Kill a process this script started (its own session: nothing else)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def scenario(trainings: list[Training], loop: GenerateLoop | None, env: dict[str, str], seconds: float,
             warmup_s: float, startup_s: float) -> dict[str, Any]:
    """Run the workloads together; their speeds over the `seconds` that begin `warmup_s` after all are ready (every
    process started, every training past its first logged step)."""
    t_begin = time.perf_counter()
    try:
        for tr in trainings:
            tr.start(env)
        while True:
            now = time.perf_counter()
            for tr in trainings:
                tr.poll(now)
            if loop is not None:
                loop.poll(now, env)
            ready = [w.ready for w in [*trainings, *([loop] if loop else [])]]
            if all(r is not None for r in ready):
                t0 = max(r for r in ready if r is not None) + warmup_s
                if now >= t0 + seconds:
                    break
            elif now - t_begin > startup_s:
                raise SystemExit(f"error: the workloads did not start within {startup_s:g} s")
            time.sleep(POLL_S)
        t1 = time.perf_counter()
    finally:
        for p in [*(tr.proc for tr in trainings), loop.proc if loop else None]:
            stop(p)
    out: dict[str, Any] = {"window_s": t1 - t0}
    for tr in trainings:
        out[tr.name] = tr.rate(t0, t1)
    if loop is not None:
        out["generate"] = loop.seconds(t0, t1)
    return out


def measure(policy: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every scenario under one policy."""
    env, flags = policy_env(policy)
    minutes = f"{(args.seconds + args.warmup + args.startup) / 60 + 1:.2f}"  # a safety net: no training outlives it
    common = ["--quiet", "--steps", "100000000", "--minutes", minutes, *flags, *TRAIN_FLAGS.get(policy, []),
              "--set", "train.log_every=1",
              "--set", "train.checkpoint_every=0", "--set", "train.sample_every=0"]
    n = 0

    def training(name: str, data: str, extra: list[str]) -> Training:
        nonlocal n
        n += 1
        out = work / f"{policy}-{n}-{name}"
        return Training(name, diffusa("train", "--data", data, "--out", str(out), *common, *extra),
                        out / "log.jsonl")

    def generate_loop() -> GenerateLoop:
        nonlocal n
        n += 1
        folder = work / f"{policy}-{n}-generate"
        folder.mkdir()
        return GenerateLoop(diffusa("generate", "--n", str(args.n), *args.generate, *flags), folder)

    image, image_extra = args.image_data, args.image_set

    def run(trainings: list[Training], loop: GenerateLoop | None) -> dict[str, Any]:
        return scenario(trainings, loop, env, args.seconds, args.warmup, args.startup)

    res: dict[str, Any] = {"policy": policy, "flags": flags + TRAIN_FLAGS.get(policy, [])}
    res["moons_alone"] = run([training("moons", "moons", [])], None)
    res["generate_alone"] = run([], generate_loop())
    res["moons_with_generate"] = run([training("moons", "moons", [])], generate_loop())
    res["image_alone"] = run([training("image", image, image_extra)], None)
    res["two_images"] = run([training("image", image, image_extra), training("image_b", image, image_extra)], None)
    return res


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    lines = [f"Two diffusa processes on {cores} cores: each one's speed beside the other as a ratio to its speed alone "
             f"(fair share 0.50; target >= {TARGET:.2f}). Windows of {args.seconds:g} s of steady work after "
             f"{args.warmup:g} s of warm-up; trainings: steps/s from their logs; generate: wall seconds per command "
             "(start-up included; '>': none ended in the window, a lower bound).", "",
             "| policy | workload | alone | beside the other | ratio | >= 0.40 |", "|---|---|---|---|---|---|"]

    def fmt(value: tuple[float, str], unit: str) -> str:
        return f"{value[1]}{value[0]:.3g} {unit}"

    for r in results:
        pol = f"{r['policy']} ({' '.join(r['flags']) or '--threads auto'})"
        rows = []
        a, b = r["moons_alone"]["moons"], r["moons_with_generate"]["moons"]
        rows.append(("2-D training (moons) beside generate", fmt(a, "steps/s"), fmt(b, "steps/s"), b[0] / a[0],
                     b[1] or a[1]))
        a, b = r["generate_alone"]["generate"], r["moons_with_generate"]["generate"]
        rows.append(("`diffusa generate` beside the 2-D training", fmt(a, "s"), fmt(b, "s"), a[0] / b[0],
                     {">": "<"}.get(b[1], "")))
        a = r["image_alone"]["image"]
        for key, label in (("image", "A"), ("image_b", "B")):
            b = r["two_images"][key]
            rows.append((f"{args.image_data} training {label} beside another", fmt(a, "steps/s"), fmt(b, "steps/s"),
                         b[0] / a[0], b[1] or a[1]))
        for what, alone, beside, ratio, bound in rows:
            ok = "no" if ratio < TARGET else ("?" if bound == "<" else "yes")  # an upper bound above it: unknown
            lines.append(f"| {pol} | {what} | {alone} | {beside} | {bound}{ratio:.2f} | {ok} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="old,new", help=f"comma-separated, of {', '.join(POLICIES)} (default old,new)")
    ap.add_argument("--seconds", type=float, default=30.0, help="window of steady work per scenario")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of work before the window begins")
    ap.add_argument("--startup", type=float, default=120.0, help="give up when the workloads have not started by then")
    ap.add_argument("--n", type=int, default=16, help="images per generate command")
    ap.add_argument("--out", help="also write the table here")
    ap.add_argument("--raw", help="also write the measurements as JSON here")
    ap.add_argument("--quick", action="store_true", help="seconds-long check that the script runs")
    args = ap.parse_args()
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        ap.error(f"unknown policy {', '.join(unknown) or '(none)'}; known: {', '.join(POLICIES)}")
    args.generate, args.image_data, args.image_set = [], "mnist5k", []
    if args.quick:
        policies, args.seconds, args.warmup, args.n = ["new"], 1.0, 0.5, 1
        args.generate, args.image_data = ["--steps", "2"], "digits"
        args.image_set = ["--set", "model.net.channels=8"]
    work = Path(tempfile.mkdtemp(prefix="diffusa-two-processes-"))
    try:
        results = [measure(p, args, work) for p in policies]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(table(results, args), args.out)
    if args.raw:
        write_json(Path(args.raw), {"seconds": args.seconds, "cores": len(os.sched_getaffinity(0)),
                                    "results": results})


if __name__ == "__main__":
    main()
