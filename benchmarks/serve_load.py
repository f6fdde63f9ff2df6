"""Load on `diffusa serve`: concurrent API requests against a bounded queue, and one request's latency beside the CLI's.

    python benchmarks/serve_load.py [--requests 100] [--max-queue 8] [--n 4] [--steps 10] [--rounds 2]
                                    [--repeats 3] [--threads N] [--quick] [--out docs/results/serve_load.md]

Starts `diffusa serve --port 0 --max-queue 8 --history TMP` in a subprocess, as a user would (loopback, no token),
and waits until it answers `GET /api/models`. Then:

- load: `--rounds` bursts of `--requests` concurrent `POST /api/generate` (mnist-text, "a K", n 4, 10 steps, each
  request its own seed) from a bounded client (one thread and one connection per request, all released together
  by a barrier; no retries). Every answer is counted: 200 (an image), 429/503 (busy), anything else (a server
  error: none allowed), no answer (a connection error or a timeout: none allowed). Meanwhile a second client polls
  `GET /api/models` every 50 ms: its latency while the queue is full, and the queue's `admitted` (running +
  waiting), which must never pass max-queue + 1;
- afterwards: `/api/models` answers with an empty queue, the first image of the first burst asked for again gives
  the same bytes, and the history holds one entry per image answered;
- peak memory: the server's VmHWM (the kernel's peak resident set) from /proc/PID/status, and that of any child
  process it started; its VmRSS after start-up, after the bursts and at the end;
- latency of one 16-image text request ("a 3", 20 steps, seed 0, the sampler the API picks when none is given: the
  model's recommendation) through the API, the server warm, beside `diffusa generate "a 3" --n 16 --steps 20
  --seed 0` run as a fresh process (wall time; its own printed time, load + draw + save; and its wall time minus
  the start-up of `diffusa --help`), rounds alternating, median of `--repeats`; the API's PNG must be the CLI's
  bytes;
- the server is stopped with SIGINT and must exit 0 with no traceback and no "internal error" in its log.

Exits 1 (after printing the table) when any request got a server error or no answer, the queue passed its bound,
or the server stopped serving or answered differently. `--quick`: 20 requests, n 1, 2 steps, one round, the
latency request at n 2 and 2 steps once (well under a minute; proves the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _tables import emit, write_json
from streaming import field_kib, tree

MODEL = "mnist-text"
LATENCY_PROMPT = "a 3"
BUSY = (429, 503)
CACHES = ("MPLCONFIGDIR", "TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME")


def diffusa(*args: str) -> list[str]:
    """The argv of a `diffusa` command, run by this interpreter."""
    return [sys.executable, "-m", "diffusa", *args]


@dataclass
class Answer:
    """One request of a burst: its status (None: no answer), seconds, PNG bytes (200 only), and the error."""

    status: int | None
    seconds: float
    png: bytes = b""
    error: str = ""


@dataclass
class Server:
    """A `diffusa serve` subprocess: its URL, process and log."""

    proc: subprocess.Popen
    url: str
    log: Path
    threads: int
    rss_mib: dict[str, float] = field(default_factory=dict)

    def memory(self, key: str) -> float:
        """A /proc/PID/status figure of the server (MiB)."""
        return field_kib(f"/proc/{self.proc.pid}/status", key) / 1024

    def children_peak(self) -> tuple[int, float]:
        """(number of child processes, their summed VmHWM in MiB)."""
        kids = [p for p in tree(self.proc.pid) if p != self.proc.pid]
        return len(kids), sum(field_kib(f"/proc/{p}/status", "VmHWM") for p in kids) / 1024


def start_server(work: Path, args: argparse.Namespace, env: dict[str, str]) -> Server:
    """`diffusa serve` on a free loopback port; returns once `GET /api/models` answers 200."""
    log = work / "server.log"
    argv = diffusa("serve", "--port", "0", "--max-queue", str(args.max_queue), "--history", str(work / "history"),
                   *(["--threads", str(args.threads)] if args.threads else []))
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=work,
                                start_new_session=True)  # its own session: a Ctrl-C here does not reach it twice
    first = proc.stdout.readline()  # printed once the socket is bound and the app is built
    second = proc.stdout.readline()  # "  API ...; N threads on cpu; ..."
    if not first.startswith("diffusa serve: http://"):
        stop_server(proc)
        raise SystemExit(f"error: diffusa serve did not start:\n{first}{log.read_text()[-3000:]}")
    url = first.split()[2]
    threads = int(m.group(1)) if (m := re.search(r"(\d+) threads on", second)) else 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "api/models", timeout=5).status_code == 200:
                return Server(proc, url, log, threads)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(proc)
    raise SystemExit(f"error: diffusa serve did not answer GET /api/models within 120 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> int:
    """Ctrl-C (SIGINT) to the server this script started, as a user stops it; killed if it has not exited in 15 s.
    Returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def body(i: int, args: argparse.Namespace) -> dict[str, Any]:
    """The i-th request of the load: its own prompt and seed."""
    return {"model": MODEL, "prompt": f"a {i % 10}", "n": args.n, "steps": args.steps, "seed": 1000 + i}


def burst(url: str, first: int, args: argparse.Namespace) -> tuple[list[Answer], dict[str, float]]:
    """`args.requests` concurrent POST /api/generate (bodies first, first + 1, ...), released together; meanwhile
    GET /api/models polled. Returns the answers and {"seconds", "max_admitted", "models_max_s", "polls"}."""
    answers: list[Answer | None] = [None] * args.requests
    gate = threading.Barrier(args.requests + 1)
    done = threading.Event()
    polled: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=args.requests, max_keepalive_connections=args.requests)

    def one(client: httpx.Client, k: int) -> None:
        gate.wait()
        t0 = time.perf_counter()
        try:
            r = client.post(url + "api/generate", json=body(first + k, args))
            answers[k] = Answer(r.status_code, time.perf_counter() - t0, r.content if r.status_code == 200 else b"",
                                "" if r.status_code == 200 or r.status_code in BUSY else r.text[:200])
        except Exception as e:  # no answer, whatever the client's reason: counted, never raised
            answers[k] = Answer(None, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:200])

    def poll() -> None:
        with httpx.Client(timeout=args.timeout) as client:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    r = client.get(url + "api/models")
                    polled.append((time.perf_counter() - t0, r.json()["queue"]["admitted"]))
                except (httpx.HTTPError, ValueError, KeyError):
                    polled.append((time.perf_counter() - t0, -1))
                done.wait(0.05)

    with httpx.Client(limits=limits, timeout=args.timeout) as client:
        workers = [threading.Thread(target=one, args=(client, k), daemon=True) for k in range(args.requests)]
        for w in workers:
            w.start()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        gate.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        done.set()
        poller.join()
    stats = {"seconds": seconds, "max_admitted": max((a for _, a in polled), default=-1),
             "models_max_s": max((s for s, _ in polled), default=float("nan")), "polls": len(polled),
             "models_failed": sum(a < 0 for _, a in polled)}
    return [a or Answer(None, 0.0, error="no answer recorded") for a in answers], stats


def generate_png(url: str, payload: dict[str, Any], timeout: float) -> tuple[float, bytes, dict[str, Any]]:
    """One POST /api/generate: (seconds, PNG bytes, the settings header); a status other than 200 is an error."""
    t0 = time.perf_counter()
    r = httpx.post(url + "api/generate", json=payload, timeout=timeout)
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"error: POST /api/generate {payload} answered {r.status_code}: {r.text[:300]}")
    return seconds, r.content, json.loads(r.headers["X-Diffusa-Settings"])


def timed_run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def latency(server: Server, work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The latency request through the API and through the CLI, rounds alternating (API, CLI, start-up)."""
    payload = {"model": MODEL, "prompt": LATENCY_PROMPT, "n": args.latency_n, "steps": args.latency_steps, "seed": 0}
    cli_png = work / "cli.png"
    cli_args = diffusa("generate", LATENCY_PROMPT, "--model", MODEL, "--n", str(args.latency_n), "--steps",
                       str(args.latency_steps), "--seed", "0", "--out", str(cli_png), "--force",
                       *(["--threads", str(args.threads)] if args.threads else []))
    api, cli, own, startup, settings, same = [], [], [], [], {}, True
    for _ in range(args.repeats):
        seconds, png, settings = generate_png(server.url, payload, args.timeout)
        api.append(seconds)
        seconds, out = timed_run(cli_args, env, work)
        cli.append(seconds)
        m = re.search(r"([\d.]+) s\)\s*$", out)
        own.append(float(m.group(1)) if m else float("nan"))
        same = same and png == cli_png.read_bytes()
        startup.append(timed_run(diffusa("--help"), env, work)[0])
    med = statistics.median
    return {"api_s": med(api), "cli_s": med(cli), "cli_own_s": med(own), "startup_s": med(startup),
            "cli_minus_startup_s": med(cli) - med(startup), "same_bytes": same, "sampler": settings.get("sampler"),
            "all": {"api_s": api, "cli_s": cli, "cli_own_s": own, "startup_s": startup}}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start the server, load it, check it, time it, stop it."""
    env = {**os.environ, **{var: str(work / "cache" / var.lower()) for var in CACHES if var not in os.environ}}
    load_before = os.getloadavg()[0]
    server = start_server(work, args, env)
    out: dict[str, Any] = {"threads": server.threads, "load_before": load_before, "rounds": [], "checks": {}}
    checks = out["checks"]
    try:
        out["rss_start_mib"] = server.memory("VmRSS")
        answers: list[Answer] = []
        for k in range(args.rounds):
            got, stats = burst(server.url, k * args.requests, args)
            answers += got
            out["rounds"].append({**stats, "statuses": [a.status for a in got],
                                  "seconds_each": [round(a.seconds, 4) for a in got],
                                  "errors": sorted({a.error for a in got if a.error})})
            print(json.dumps({k: v for k, v in out["rounds"][-1].items() if k != "seconds_each"}), file=sys.stderr,
                  flush=True)
        out["rss_after_load_mib"] = server.memory("VmRSS")
        r = httpx.get(server.url + "api/models", timeout=args.timeout)
        checks["models_after"] = r.status_code == 200 and r.json()["queue"]["admitted"] == 0
        first_ok = next((k for k, a in enumerate(answers) if a.status == 200), None)
        if first_ok is not None:  # the same request again: the same bytes as under load
            checks["same_bytes_again"] = generate_png(server.url, body(first_ok, args), args.timeout)[1] == \
                answers[first_ok].png
        images = sum(a.status == 200 for a in answers) + (first_ok is not None)
        kept = [p for p in (work / "history").glob("*.json")]
        checks["history_one_per_image"] = len(kept) == images
        out["latency"] = latency(server, work, args, env)
        checks["api_cli_same_bytes"] = out["latency"]["same_bytes"]
        out["peak_mib"] = server.memory("VmHWM")
        out["children"], out["children_peak_mib"] = server.children_peak()
        out["rss_end_mib"] = server.memory("VmRSS")
    finally:
        code = stop_server(server.proc)
    out["load_after"] = os.getloadavg()[0]
    log = server.log.read_text()
    checks["clean_stop"] = code == 0 and "Traceback" not in log and "internal error" not in log
    out["server_log_tail"] = log[-2000:]
    statuses = [s for rnd in out["rounds"] for s in rnd["statuses"]]
    out["count"] = {"requests": len(statuses), "ok": statuses.count(200),
                    "busy": sum(s in BUSY for s in statuses), "no_answer": statuses.count(None),
                    "other": sum(s is not None and s != 200 and s not in BUSY for s in statuses)}
    checks["every_request_answered"] = out["count"]["no_answer"] == 0
    checks["no_server_error"] = out["count"]["other"] == 0
    checks["queue_bounded"] = all(0 <= rnd["max_admitted"] <= args.max_queue + 1 and rnd["models_failed"] == 0
                                  for rnd in out["rounds"])
    pairs = [(s, st) for rnd in out["rounds"] for s, st in zip(rnd["seconds_each"], rnd["statuses"], strict=True)]
    out["ok_s"] = [s for s, st in pairs if st == 200]
    out["busy_s"] = [s for s, st in pairs if st in BUSY]
    return out


def table(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The report: the load, the checks, the memory, the latency."""
    c, lat, checks = res["count"], res["latency"], res["checks"]

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} / {max(xs):.3f}" if xs else "-"

    def yes(key: str) -> str:
        return "yes" if checks.get(key) else ("not checked" if key not in checks else "**NO**")

    rounds = res["rounds"]
    per_burst = ", ".join(f"{r['seconds']:.2f}" for r in rounds)
    lines = [f"# `diffusa serve` under load (`{command()}`, {time.strftime('%Y-%m-%d')})", "",
             f"`diffusa serve --max-queue {args.max_queue}` on loopback, torch threads {res['threads']}, "
             f"{len(os.sched_getaffinity(0))} cores (shared: load average {res['load_before']:.2f} before, "
             f"{res['load_after']:.2f} after); {args.rounds} burst(s) of "
             f"{args.requests} concurrent `POST /api/generate` ({MODEL}, \"a K\", n {args.n}, {args.steps} steps, "
             "a seed each; one connection per request, no retries)", "",
             "| load | |", "|---|---|",
             f"| requests | {c['requests']} |",
             f"| answered 200 (an image) | {c['ok']} |",
             f"| answered 429 / 503 (busy) | {c['busy']} |",
             f"| answered anything else (server errors) | {c['other']} |",
             f"| no answer (connection error, timeout) | {c['no_answer']} |",
             f"| seconds per burst (all answered) | {per_burst} |",
             f"| seconds to an image, median / max | {spread(res['ok_s'])} |",
             f"| seconds to a busy answer, median / max | {spread(res['busy_s'])} |",
             f"| most requests in the server at once (polled; bound {args.max_queue + 1}) | "
             f"{max(r['max_admitted'] for r in rounds)} |",
             f"| `GET /api/models` during the bursts: slowest answer (s), of polls | "
             f"{max(r['models_max_s'] for r in rounds):.3f} of {sum(r['polls'] for r in rounds)} |",
             f"| every request answered, no server error, queue bounded | {yes('every_request_answered')}, "
             f"{yes('no_server_error')}, {yes('queue_bounded')} |",
             f"| serving afterwards: `/api/models` 200 with an empty queue; the first image asked again, same bytes | "
             f"{yes('models_after')}; {yes('same_bytes_again')} |",
             f"| history: one entry per image answered | {yes('history_one_per_image')} |",
             f"| stopped by Ctrl-C: exit 0, no traceback or internal error logged | {yes('clean_stop')} |",
             f"| server peak memory (VmHWM) | {res['peak_mib']:.0f} MiB |",
             f"| server resident: after start-up, after the bursts, at the end | {res['rss_start_mib']:.0f}, "
             f"{res['rss_after_load_mib']:.0f}, {res['rss_end_mib']:.0f} MiB |",
             f"| child processes of the server (their peak) | {res['children']} ({res['children_peak_mib']:.0f} MiB) |",
             "",
             f"One request: \"{LATENCY_PROMPT}\", {args.latency_n} images, {args.latency_steps} steps, seed 0, "
             f"{lat['sampler']} (the model's recommendation, picked by both); median of {args.repeats}, rounds "
             "alternating", "",
             "| path | seconds | CLI / API |", "|---|---|---|",
             f"| API, server warm (`POST /api/generate`, answer received) | {lat['api_s']:.2f} | 1.00x |",
             f"| CLI, a fresh process (`diffusa generate`, wall) | {lat['cli_s']:.2f} | "
             f"{lat['cli_s'] / lat['api_s']:.2f}x |",
             f"| CLI start-up (`diffusa --help`, wall) | {lat['startup_s']:.2f} | |",
             f"| CLI minus its start-up | {lat['cli_minus_startup_s']:.2f} | "
             f"{lat['cli_minus_startup_s'] / lat['api_s']:.2f}x |",
             f"| CLI's own printed time (load + draw + save) | {lat['cli_own_s']:.2f} | "
             f"{lat['cli_own_s'] / lat['api_s']:.2f}x |",
             f"| the API's PNG is the CLI's, byte for byte | {yes('api_cli_same_bytes')} | |"]
    return lines


def command() -> str:
    """This run's command line, as typed (with `nice -n K` when this process runs niced)."""
    import shlex

    nice = os.nice(0)
    return (f"nice -n {nice} " if nice else "") + shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100, help="concurrent requests per burst")
    ap.add_argument("--rounds", type=int, default=2, help="bursts, one after the other")
    ap.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue")
    ap.add_argument("--n", type=int, default=4, help="images per load request")
    ap.add_argument("--steps", type=int, default=10, help="steps per load request")
    ap.add_argument("--latency-n", type=int, default=16, help="images of the latency request")
    ap.add_argument("--latency-steps", type=int, default=20, help="steps of the latency request")
    ap.add_argument("--repeats", type=int, default=3, help="latency rounds (median)")
    ap.add_argument("--threads", type=int, help="--threads of the server and the CLI (default: theirs)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take")
    ap.add_argument("--work", help="folder for the history, logs and caches (default: a temporary one, removed)")
    ap.add_argument("--out", help="write the table here (e.g. docs/results/serve_load.md)")
    ap.add_argument("--raw", default="docs/results/raw", help="folder of the raw JSON record (serve_load.json)")
    ap.add_argument("--quick", action="store_true", help="20 requests, n 1, 2 steps, one round; latency n 2, 2 steps")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.rounds, args.n, args.steps = 20, 1, 1, 2
        args.latency_n, args.latency_steps, args.repeats = 2, 2, 1
    if min(args.requests, args.rounds, args.n, args.steps, args.latency_n, args.latency_steps, args.repeats) < 1:
        ap.error("--requests, --rounds, --n, --steps, --latency-n, --latency-steps and --repeats must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = measure(args, work)
    emit(table(res, args), args.out)
    if not args.quick:
        write_json(Path(args.raw) / "serve_load.json",
                   {"settings": {k: v for k, v in vars(args).items() if k not in ("quick", "raw", "out", "work")},
                    **{k: v for k, v in res.items() if k not in ("ok_s", "busy_s")}})
    failed = [k for k, v in res["checks"].items() if not v]
    if failed:
        raise SystemExit(f"error: the server failed under load: {', '.join(failed)}\n{res['server_log_tail']}")


if __name__ == "__main__":
    main()
