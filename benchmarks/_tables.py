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
