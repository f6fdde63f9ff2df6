"""Autoguidance (Karras et al. 2024) on a trained image run: which weaker model, which weight.

    python benchmarks/autoguidance.py RUN [--guides step_437,step_875,...] [--scales 1,1.5,2,2.5] [--seeds 0,1]
                                          [--sampler dpmpp_2m_sde] [--steps 20] [--eta 3] [--n 1000] [--name NAME]
                                          [--from-raw] [--quick --out TABLE.md]

For every guide (a snapshot the run kept, `step_N`, or another run) and weight w it draws `--n` samples through the
pipeline, exactly as `diffusa eval RUN --autoguidance W --guide G --seed S ...` does, and scores them with the digit
judge beside the real-vs-real floors (FD, precision/recall, the share recognised with p >= 0.9, the classes present).
w = 1 is the run alone (the same for every guide: drawn once per seed). One JSON line per draw to stdout and to
docs/results/raw/autoguidance/NAME.jsonl; a table of the means over the seeds; a figure docs/img/NAME.png (FD as a
multiple of the floor and the share recognised against w, one line per guide). `--from-raw` redraws the table and
figure from the raw file. Run alone on a quiet machine (about 35 s per 1,000 autoguided samples here). `--quick`
trains a tiny mnist5k run (8 steps) in ./quick/ and draws 40 samples per row there: the script's own check (tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "results" / "raw" / "autoguidance"
IMG = ROOT / "docs" / "img"


def draw(pipe: object, guide: str | None, w: float, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One autoguided draw of `args.n` samples, scored as `diffusa eval` scores it."""
    from diffusa.metrics import eval_floor, eval_reference, image_metrics

    t0 = time.perf_counter()
    res = pipe(n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta, seed=seed,
               autoguidance=w, guide=None if w == 1 else guide)  # w 1: none (None would be a recommended w)
    seconds = time.perf_counter() - t0
    dc = pipe.run.config.data
    m = image_metrics(res.samples, eval_reference(dc), eval_floor(dc, args.n))
    return {"guide": guide, "w": w, "seed": seed, "sampler": args.sampler, "steps": args.steps, "eta": args.eta,
            "nfe": res.settings["nfe"], "seconds": round(seconds, 1), "fd": round(m["fd"], 3),
            "fd_floor": round(m["fd_floor"], 3), "fd_x": round(m["fd"] / m["fd_floor"], 3),
            "recognised": m["confident_share"], "precision": round(m["precision"], 4),
            "recall": round(m["recall"], 4), "precision_floor": round(m["precision_floor"], 4),
            "recall_floor": round(m["recall_floor"], 4), "classes": m["classes_present"]}


def table(records: list[dict]) -> str:
    """Markdown: one row per (guide, w), means over the seeds with each seed's FD and share recognised."""
    rows = ["| guide | w | NFE | FD x floor, per seed | mean | recognised, per seed | mean | precision | recall |",
            "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["guide"] if r["w"] != 1 else "-", r["w"]) for r in records}, key=lambda k: (k[0] != "-", k))
    for guide, w in keys:
        rs = sorted((r for r in records if r["w"] == w and (w == 1 or r["guide"] == guide)), key=lambda r: r["seed"])
        fd = [r["fd_x"] for r in rs]
        rec = [r["recognised"] for r in rs]
        prec, recall = statistics.mean(r["precision"] for r in rs), statistics.mean(r["recall"] for r in rs)
        rows.append(f"| {guide if w != 1 else '(none: the run alone)'} | {w:g} | {rs[0]['nfe']} | "
                    f"{' / '.join(f'{v:.2f}' for v in fd)} | **{statistics.mean(fd):.2f}x** | "
                    f"{' / '.join(f'{v:.1%}' for v in rec)} | **{statistics.mean(rec):.1%}** | "
                    f"{prec:.3f} | {recall:.3f} |")
    return "\n".join(rows)


def figure(records: list[dict], path: Path) -> None:
    """FD (x floor) and the share recognised against w, one line per guide, means over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in records if r["w"] == 1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for guide in sorted({r["guide"] for r in records if r["w"] != 1}):
        pts = sorted({r["w"] for r in records if r["guide"] == guide and r["w"] != 1})
        ws = [1.0, *pts] if base else pts

        def mean(key: str, w: float, guide: str = guide) -> float:
            return statistics.mean(r[key] for r in (base if w == 1 else records) if w == 1 or
                                   (r["guide"] == guide and r["w"] == w))

        ax1.plot(ws, [mean("fd_x", w) for w in ws], "o-", label=guide)
        ax2.plot(ws, [100 * mean("recognised", w) for w in ws], "o-", label=guide)
    ax1.axhline(2, color="grey", ls=":", lw=1)
    ax2.axhline(90, color="grey", ls=":", lw=1)
    ax1.set(xlabel="autoguidance w", ylabel="FD / real-vs-real floor", title="Frechet distance (lower is better)")
    ax2.set(xlabel="autoguidance w", ylabel="% recognised (p >= 0.9)", title="recognised (higher is better)")
    ax1.legend(title="guide", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="the run (not with --quick or --from-raw)")
    ap.add_argument("--guides", default="step_437,step_875,step_1750",
                    help="snapshots (step_N) or runs, comma-separated")
    ap.add_argument("--scales", default="1,1.5,2,2.5")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sampler", default="dpmpp_2m_sde")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eta", type=float, default=3.0)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--name", default="autoguidance")
    ap.add_argument("--from-raw", action="store_true", help="only redraw the table and figure from the raw file")
    ap.add_argument("--quick", action="store_true", help="a tiny run in ./quick/, 40 samples per row (tests)")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args()
    raw_dir, img_dir = RAW, IMG
    if args.quick:
        from diffusa.config import load_config
        from diffusa.train import train

        raw_dir, img_dir = Path("quick") / "raw", Path("quick") / "img"
        args.run = str(Path("quick") / "run")
        train(load_config(overrides=["data.name='mnist5k'", "train.steps=8", "train.batch_size=16",
                                     "train.sample_every=0", "model.net.channels=8"]), args.run, progress=False)
        args.guides, args.scales, args.seeds, args.n, args.steps = "step_2", "1,2", "0", 40, 3
    elif args.run is None and not args.from_raw:
        ap.error("name the run to measure")
    raw = raw_dir / f"{args.name}.jsonl"
    if not args.from_raw:
        import diffusa

        pipe = diffusa.load(args.run)
        raw_dir.mkdir(parents=True, exist_ok=True)
        with raw.open("w") as log:
            for seed in (int(s) for s in args.seeds.split(",")):
                for w in (float(s) for s in args.scales.split(",")):
                    for guide in args.guides.split(",") if w != 1 else [None]:
                        rec = {"run": args.run, **draw(pipe, guide, w, seed, args)}
                        print(json.dumps(rec), flush=True)
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
    records = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
    print(table(records))
    if args.out:
        Path(args.out).write_text(table(records) + "\n")
    img_dir.mkdir(parents=True, exist_ok=True)
    figure(records, img_dir / f"{args.name}.png")
    print(f"figure: {img_dir / f'{args.name}.png'}")


if __name__ == "__main__":
    main()
