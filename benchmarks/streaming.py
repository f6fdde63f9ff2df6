"""Streaming image folders against resident ones: training speed and peak memory, by folder size.

    python benchmarks/streaming.py [--sizes 5000,20000] [--steps 300] [--batch 64] [--workers 2]
                                   [--out docs/results/streaming.md] [--raw docs/results/raw] [--quick]

For each size, writes a folder of that many 28x28 PNGs: mnist5k's 4,000 training digits, then copies of them
shifted by one pixel, then by two, ... (every file distinct). Then trains diffusa's default image model on the
folder twice, `data.stream="off"` (every image decoded into memory first) and `data.stream="on"` (batches
decoded from disk by `--workers` DataLoader processes while the model trains), each in a fresh process:

- steps/s: steady training speed, timed per step by an `on_step` callback after `--warmup` steps (the run's
  log.jsonl `steps_per_s`, which counts the loader's start-up, is kept in the raw record);
- peak RSS: the training process plus its DataLoader workers, summed, sampled from /proc every 50 ms by this
  process (shared pages count once per process, so the sum overstates the workers' cost); peak PSS: the same
  from /proc/<pid>/smaps_rollup, shared pages split between the processes that map them;
- start: seconds from the process's start to its first training step (the resident path decodes the folder).

The issue's target: streaming within 15% of resident steps/s at batch 64, and peak memory that does not grow
with the folder. `--quick`: 200 and 400 images, 20 steps, batch 16 (seconds; proves the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _tables import emit, write_json

PATHS = {"resident": "off", "streaming": "on"}


# -- the folders ------------------------------------------------------------------------------
def shifts(k: int) -> tuple[int, int]:
    """The k-th (dy, dx) shift: (0, 0) first, then by growing size (copy k of the digits is shifted by this)."""
    ring = sorted(((dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)),
                  key=lambda s: (max(abs(s[0]), abs(s[1])), abs(s[0]) + abs(s[1]), s))
    if k >= len(ring):
        raise SystemExit(f"error: at most {len(ring)} shifted copies of the 4,000 digits; ask for fewer images")
    return ring[k]


def write_folder(folder: Path, n: int) -> None:
    """n PNGs: the mnist5k training digits, then shifted copies of them."""
    import numpy as np
    from PIL import Image

    from diffusa.data import load_mnist5k, unit_to_uint8

    digits = unit_to_uint8(load_mnist5k("train").x)[..., 0]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        copy, j = divmod(i, len(digits))
        img = np.roll(digits[j], shifts(copy), axis=(0, 1))
        Image.fromarray(img).save(folder / f"{i:06d}.png")


# -- memory of a process tree ---------------------------------------------------------------
def tree(root: int) -> list[int]:
    """root and all its descendants, from /proc/*/stat's parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def field_kib(path: str, key: str) -> int:
    """A 'Key:  N kB' line of a /proc file, in KiB (0 if the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the summed VmRSS and Pss of a process tree until stopped; keeps the peaks (MiB)."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.rss = self.pss = 0.0
        self.processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = tree(self.pid)
            rss = sum(field_kib(f"/proc/{p}/status", "VmRSS") for p in pids) / 1024
            pss = sum(field_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids) / 1024
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self.processes = max(self.processes, len(pids))
            self.done.wait(self.every)


# -- one configuration, in its own process ------------------------------------------------------
def child(folder: str, stream: str, steps: int, batch: int, workers: int, warmup: int) -> None:
    """Train on the folder in this process; print one JSON line."""
    import diffusa.data.stream
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine, last_log

    born = time.perf_counter()
    diffusa.data.stream.NUM_WORKERS = workers
    out = Path(tempfile.mkdtemp()) / "run"
    cfg = load_config(overrides=[f"data.name={json.dumps(folder)}", f"data.stream={json.dumps(stream)}",
                                 f"train.steps={steps}", f"train.batch_size={batch}", "train.sample_every=0",
                                 "train.checkpoint_every=0", "train.sample_n=4", "train.sample_steps=2",
                                 f"train.log_every={steps}"])
    engine = diffusion_engine(cfg, out, progress=False)
    stamps: list[float] = []
    engine.fit(on_step=lambda _: stamps.append(time.perf_counter()))
    timed = stamps[warmup:]
    print(json.dumps({"steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
                      "log_steps_per_s": last_log(out)["steps_per_s"], "start_s": stamps[0] - born,
                      "data": type(engine.task.data).__name__}))


def measure(folder: Path, stream: str, args: argparse.Namespace) -> dict:
    """Run `child` in a fresh process, sampling its memory meanwhile."""
    cmd = [sys.executable, __file__, "--child", str(folder), stream, "--steps", str(args.steps), "--batch",
           str(args.batch), "--workers", str(args.workers), "--warmup", str(args.warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = PeakMemory(proc.pid)
    mem.start()
    stdout, stderr = proc.communicate()
    mem.done.set()
    mem.join()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mib": mem.rss, "peak_pss_mib": mem.pss,
            "processes": mem.processes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000", help="comma-separated folder sizes (images)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per configuration")
    ap.add_argument("--warmup", type=int, default=20, help="steps left out of the steady steps/s")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="streaming: DataLoader worker processes")
    ap.add_argument("--folders", help="where to write the PNG folders (default: a temporary folder, removed)")
    ap.add_argument("--out", help="write the table here (e.g. docs/results/streaming.md)")
    ap.add_argument("--raw", default="docs/results/raw", help="folder of the raw JSON record (streaming.json)")
    ap.add_argument("--quick", action="store_true", help="200 and 400 images, 20 steps, batch 16")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "STREAM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(*args.child, args.steps, args.batch, args.workers, args.warmup)
        return
    if args.quick:
        args.sizes, args.steps, args.warmup, args.batch = "200,400", 20, 5, 16
    if args.steps < args.warmup + 2:
        ap.error(f"--steps must exceed --warmup ({args.warmup}) by at least 2")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folders) if args.folders else Path(tmp)
        for n in sizes:
            folder = root / f"digits_{n}"
            if not folder.is_dir():
                write_folder(folder, n)
            for path, stream in PATHS.items():
                rows.append({"images": n, "path": path, **measure(folder, stream, args)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lines = [f"batch {args.batch}, {args.steps} steps (steps/s over those after {args.warmup}), "
             f"{args.workers} decoding workers when streaming, one process per row", "",
             "| images | path | steps/s | vs resident | start (s) | peak RSS (MiB) | peak PSS (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["images"] == r["images"] and b["path"] == "resident")
        r["ratio_to_resident"] = r["steps_per_s"] / base["steps_per_s"]
        lines.append(f"| {r['images']} | {r['path']} | {r['steps_per_s']:.2f} | {r['ratio_to_resident']:.2f}x | "
                     f"{r['start_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} |")
    emit(lines, args.out)
    if not args.quick:
        write_json(Path(args.raw) / "streaming.json", {"settings": {k: v for k, v in vars(args).items()
                                                                     if k not in ("child", "quick")}, "rows": rows})


if __name__ == "__main__":
    main()
