"""Shared by the benchmark scripts: print a markdown table and write it where asked."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: str | None, append: bool = False) -> str:
    """Print the table; with `out`, write it there (after what the file holds, if `append`)."""
    table = "\n".join(lines)
    if out and append and Path(out).exists():
        table = Path(out).read_text().rstrip() + "\n\n" + table
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
    return table


def write_json(path: Path, obj: dict) -> None:
    """Write a JSON record atomically (a benchmark stopped midway leaves the last complete record)."""
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def stage_parser(doc: str, stages: list[str]):
    """The options every staged benchmark script shares: the stage, where raw records, figures and the table go,
    extra config overrides, and --quick."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", nargs="?", choices=stages)
    ap.add_argument("--raw", default="docs/results/raw", help="folder of the raw JSON records")
    ap.add_argument("--img", default="docs/img", help="folder of the figures")
    ap.add_argument("--out", help="report: write the table here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train: extra config override")
    ap.add_argument("--quick", action="store_true", help="seconds-long check: every stage on tiny settings in ./quick")
    return ap


def run_stages(ap, args, stages: dict, quick=None) -> None:
    """Run the stage named in args.stage; with --quick, set tiny settings with `quick(args)` and run them all."""
    if args.quick:
        quick(args)
        for stage in stages.values():
            stage(args)
        return
    if args.stage is None:
        ap.error(f"name a stage ({', '.join(stages)}) or pass --quick")
    from diffusa.errors import DiffusaError

    try:
        stages[args.stage](args)
    except DiffusaError as e:  # bad input (a missing run, a wrong flag): one line and exit 2, as the CLI does
        raise SystemExit(f"error: {e}") from None


def line_figure(series: list[tuple[str, list, list, dict]], path: Path, *, xlabel: str, ylabel: str, title: str,
                xscale: str = "linear", yscale: str = "linear", hline: tuple[float, str] | None = None) -> None:
    """One PNG of labelled lines: series of (label, xs, ys, matplotlib keyword arguments)."""
    from diffusa.viz import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xs, ys, style in series:
        ax.plot(xs, ys, label=label, **style)
    if hline is not None:
        ax.axhline(hline[0], color="gray", ls="--", lw=1, label=hline[1])
    ax.set(xscale=xscale, yscale=yscale, xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
