"""Folders of image files: listing, header reads and decoding (shared by the resident folders here and the
streamed ones of `diffusa.data.stream`), the resident `load_folder`, and captions files (text conditioning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from diffusa.data.base import Dataset, uint8_to_unit
from diffusa.errors import DiffusaError
from diffusa.limits import check_pixels

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# PIL modes a folder keeps as one channel when grayscale is None
GRAY_MODES = ("L", "1", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def list_images(path: Path) -> list[Path]:
    """Every image file under `path` (recursively), sorted; none is an error."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DiffusaError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {path}")
    return files


def image_header(f: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from an image file's header, nothing decoded; an unreadable file, or one
    larger than limits.MAX_IMAGE_PIXELS (a decompression bomb's header), is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            mode, size = im.mode, im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DiffusaError(f"cannot read image {f}: {e}") from None
    check_pixels(f, *size)
    return mode, size


def to_mode(im: Any, mode: str) -> Any:
    """A PIL image in mode "L" or "RGB", every mode read as people see it: 16- and 32-bit grayscale scaled to 8
    bits by their type's range (PIL's own conversion clips them, so a 16-bit image turns white), float images
    clipped to [0, 1] -> [0, 255], palettes expanded, transparency composited onto black (the background of
    the shipped digits)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            a8 = (np.clip(a, 0, 1) * 255).round()
        elif im.mode == "I" and a.max(initial=0) <= 255 and a.min(initial=0) >= 0:
            a8 = a  # 8-bit values held in 32 bits (what some readers return)
        else:
            a8 = np.clip(a.astype(np.float64), 0, 65535) / 257.0  # 16-bit range (PIL reads 16-bit PNGs as I / I;16)
        im = Image.fromarray(np.asarray(a8.round() if im.mode != "F" else a8, dtype=np.uint8), "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode in ("LA", "RGBA"):
        background = Image.new(im.mode[:-1], im.size, 0)
        background.paste(im, mask=im.getchannel("A"))
        im = background
    return im.convert(mode)


def folder_grayscale(files: list[Path]) -> bool:
    """A folder's images are read as one channel when every file is grayscale (headers only), else as RGB: the
    one rule of resident and streamed folders alike."""
    return all(image_header(f)[0] in GRAY_MODES for f in files)


def decode_image(f: Path, mode: str, image_size: int | None = None) -> np.ndarray:
    """One image file -> uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", resized (bicubic) to a square of
    `image_size` if given. The resident and the streaming folders both decode through here."""
    from PIL import Image, UnidentifiedImageError

    image_header(f)  # the pixel limit, before anything is decoded
    try:
        with Image.open(f) as im:
            im.load()
            im = to_mode(im, mode)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DiffusaError(f"cannot read image {f}: {e}") from None
    if image_size is not None:
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def load_folder(path: Path, image_size: int | None = None, grayscale: bool | None = None,
                files: list[Path] | None = None) -> Dataset:
    """Every image file in a folder (recursively; `files` if already listed), decoded into memory; one bad file
    is an error that names it. grayscale None: one channel if every file is grayscale, else RGB."""
    files = list_images(path) if files is None else files
    if grayscale is None:
        grayscale = folder_grayscale(files)
    mode = "L" if grayscale else "RGB"
    arrays = [decode_image(f, mode, image_size) for f in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DiffusaError(f"images in {path} have different sizes {sorted(sizes)[:3]}...; "
                           "pass --set data.image_size=N to resize them")
    captions = read_captions(path, files)
    return Dataset(path.name, uint8_to_unit(np.stack(arrays)), None, "image", captions=captions)


def read_captions(folder: Path, files: list[Path]) -> list[str] | None:
    """Captions for a folder's images from `captions.jsonl` (one {"file": ..., "caption": ...} per line) or
    `captions.csv` (columns file, caption), file names relative to the folder; None if neither exists."""
    jsonl, csv_path = folder / "captions.jsonl", folder / "captions.csv"
    try:
        table = _caption_table(jsonl, csv_path)
    except UnicodeDecodeError as e:
        raise DiffusaError(f"captions file in {folder} is not UTF-8 text: {e.reason}") from None
    if table is None:
        return None
    captions = []
    for f in files:
        key = f.relative_to(folder).as_posix()
        if key not in table:
            raise DiffusaError(f"no caption for {key} in {jsonl if jsonl.is_file() else csv_path}")
        captions.append(table[key])
    return captions


def _caption_table(jsonl: Path, csv_path: Path) -> dict[str, str] | None:
    """file -> caption from captions.jsonl or captions.csv; None if neither exists."""
    import csv

    table: dict[str, str] = {}
    if jsonl.is_file():
        for i, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[str(row["file"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DiffusaError(f"{jsonl}:{i}: expected {{\"file\": ..., \"caption\": ...}}") from None
    elif csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DiffusaError(f"{csv_path}: needs a header with columns file, caption")
            for row in reader:
                table[row["file"]] = row["caption"] or ""
    else:
        return None
    return table
