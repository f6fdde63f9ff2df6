"""The gallery on disk: one PNG grid and one JSON record per generation, in one folder, so it survives a restart.

    HISTORY/20260101T120000123456-1a2b3c4d.png     the grid (the same bytes `diffusa generate --out x.png` writes)
    HISTORY/20260101T120000123456-1a2b3c4d.json    {"id", "created", "source", "task", "request", "settings"}
    HISTORY/20260101T120000123456-1a2b3c4d-input.png   an edit's input image (img2img, inpaint, upscale)
    HISTORY/20260101T120000123456-1a2b3c4d-mask.png    an inpainting mask given as pixels (white = repaint)

The PNGs are written first and the JSON last, each atomically: a generation is in the history once its JSON is.
Ids sort by time; an id is checked against its pattern before any file is named by it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from diffusa.checkpoint import save_json
from diffusa.errors import DiffusaError
from diffusa.pipelines import Samples
from diffusa.serve.limits import HISTORY_SHOWN, Refusal

ID = re.compile(r"\d{8}T\d{12}-[0-9a-f]{8}")
PARTS = ("input", "mask")  # an edit's files beside its result
TASKS = ("img2img", "inpaint", "upscale")  # the tasks of an image brought (older records: generations)
log = logging.getLogger("diffusa.serve")


@dataclass(frozen=True)
class Entry:
    """One generation: its id, its PNG and its record (request, settings)."""

    id: str
    png: Path
    record: dict[str, Any]

    @property
    def request(self) -> dict[str, Any]:
        return self.record["request"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.record["settings"]

    @property
    def task(self) -> str:
        """generate, img2img, inpaint or upscale (records older than the edits are generations)."""
        task = self.record.get("task")
        return task if task in TASKS else "generate"

    def part(self, name: str) -> Path | None:
        """An edit's `input` or `mask` PNG, if this entry has one."""
        if name not in PARTS:
            return None
        path = self.png.with_name(f"{self.id}-{name}.png")
        return path if path.is_file() else None


class History:
    """The generations kept under `folder` (created if missing)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DiffusaError(f"--history {folder}: cannot create the folder ({e.strerror})") from None
        if not self.folder.is_dir():
            raise DiffusaError(f"--history {folder} is not a folder")
        self.folder = self.folder.resolve()

    def scratch(self) -> Path:
        """A folder for the server's temporary files (an .npz on its way to a client)."""
        path = self.folder / ".tmp"
        path.mkdir(exist_ok=True)
        return path

    def add(self, res: Samples, request: dict[str, Any], source: str, task: str = "generate",
            parts: dict[str, np.ndarray] | None = None) -> Entry:
        """Keep a generation: its PNG grid (Samples.save, as the CLI writes it), an edit's input and mask PNGs
        (`parts`: uint8 pixels by name, PARTS), and its record."""
        from diffusa.checkpoint import atomic_write
        from diffusa.serve.images import encode_png

        now = datetime.now(UTC)
        gid = f"{now:%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"
        png = res.save(self.folder / f"{gid}.png")
        for name, pixels in (parts or {}).items():
            assert name in PARTS, name
            data = encode_png(pixels)
            atomic_write(self.folder / f"{gid}-{name}.png", lambda tmp, data=data: Path(tmp).write_bytes(data))
        record = {"id": gid, "created": now.isoformat(timespec="seconds"), "source": source, "task": task,
                  "request": request, "settings": res.settings}
        save_json(self.folder / f"{gid}.json", record)
        return Entry(gid, png, record)

    def get(self, gid: str) -> Entry:
        """A generation by id; 404 for an id that is not one, or not here."""
        if not isinstance(gid, str) or not ID.fullmatch(gid):
            raise Refusal(404, f"no generation {gid!r} in the history", "id")
        entry = self._read(self.folder / f"{gid}.json")
        if entry is None:
            raise Refusal(404, f"no generation {gid!r} in the history", "id")
        return entry

    def entries(self, limit: int = HISTORY_SHOWN) -> list[Entry]:
        """The newest generations first (a damaged record is skipped, and logged)."""
        files = sorted((p for p in self.folder.glob("*.json") if ID.fullmatch(p.stem)), reverse=True)
        out = []
        for path in files:
            entry = self._read(path)
            if entry is not None:
                out.append(entry)
            if len(out) >= limit:
                break
        return out

    def _read(self, path: Path) -> Entry | None:
        png = path.with_suffix(".png")
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("history: skipping %s (%s)", path.name, e)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("request"), dict) or not png.is_file():
            log.warning("history: skipping %s (not a generation's record, or its PNG is missing)", path.name)
            return None
        record.setdefault("settings", {})
        return Entry(path.stem, png, record)


__all__ = ["ID", "PARTS", "TASKS", "Entry", "History"]
