"""Image folders streamed from disk: for folders whose decoded images do not fit in memory.

`FolderStream` holds the folder's file paths only (packed into two numpy arrays, so DataLoader workers
share them without copy-on-write growth). `loader(...)` yields the index batches of `diffusa.data.base.batches`
and decodes them in persistent DataLoader worker processes, a few batches ahead of training; the tensors are
bit for bit those of the resident `load_folder` dataset, because both decode through `decode_image`.

`load_dataset(..., stream="auto")` streams a folder when its decoded size (N x C x H x W x 4 bytes, the
float32 tensor a resident dataset holds) exceeds `stream_threshold()`: an eighth of the machine's memory
(physical memory, or the cgroup limit where lower), 1 GiB where neither can be read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from diffusa.data.base import Dataset, batches, uint8_to_unit
from diffusa.data.folders import decode_image, folder_grayscale, image_header, list_images, load_folder, read_captions
from diffusa.errors import DiffusaError
from diffusa.limits import memory_bytes

NUM_WORKERS = 2  # decoding processes per loader
PREFETCH_FACTOR = 2  # batches each worker decodes ahead


def stream_threshold() -> int:
    """Decoded bytes above which data.stream="auto" streams a folder: 1/8 of memory (1 GiB if unknown)."""
    mem = memory_bytes()
    return mem // 8 if mem else 1 << 30


class _PathTable:
    """File paths relative to a root, packed into one byte array and offsets (no Python object per file)."""

    def __init__(self, root: Path, files: list[Path]) -> None:
        encoded = [os.fsencode(f.relative_to(root)) for f in files]
        self.root = root
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Path:
        return self.root / os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())


class _Failure:
    """A worker's DiffusaError, carried to the main process as a value (so it is re-raised as one line)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _as_is(batch: object) -> object:
    """collate_fn: `_Decoder.__getitems__` already returns the finished batch."""
    return batch


class _Decoder(torch.utils.data.Dataset):
    """What the DataLoader workers hold: paths, the PIL mode, the resize and the expected array shape."""

    def __init__(self, paths: _PathTable, mode: str, image_size: int | None, item_shape: tuple[int, ...]) -> None:
        self.paths, self.mode, self.image_size, self.item_shape = paths, mode, image_size, item_shape

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3) of file i; a file of another size is an error naming it."""
        f = self.paths[i]
        a = decode_image(f, self.mode, self.image_size)
        if a.shape != self.item_shape:
            h, w = self.item_shape[:2]
            raise DiffusaError(f"image {f} is {a.shape[1]}x{a.shape[0]}, unlike the {w}x{h} of the folder's first "
                               f"image {self.paths[0]}; pass --set data.image_size=N to resize every image")
        return a

    def batch(self, indices: list[int]) -> torch.Tensor:
        """float32 (len(indices), C, H, W) in [-1, 1]."""
        return uint8_to_unit(np.stack([self.decode(i) for i in indices]))

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch([i])[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor] | _Failure:
        try:
            return torch.tensor(indices, dtype=torch.long), self.batch(indices)
        except DiffusaError as e:
            return _Failure(str(e))


class _StepBatches:
    """batch_sampler: the index batches of `batches(...)`, as lists (cheap to send to a worker)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, rank: int, world: int) -> None:
        self.args = (n, batch_size, seed, start_step, rank, world)

    def __iter__(self) -> Iterator[list[int]]:
        return (idx.tolist() for idx in batches(*self.args))


class FolderStream:
    """An image folder read from disk batch by batch; the attributes of `Dataset` except `x`.

    Only the file list lives in memory. The first file fixes the shape; with grayscale None the channels are one
    when every file is grayscale (`folder_grayscale`, as a resident folder decides); a file of another size is an
    error when it is met, unless `image_size` resizes every file."""

    kind = "image"
    labels: torch.Tensor | None = None
    num_classes = 0
    cond_images: torch.Tensor | None = None

    def __init__(self, path: Path, files: list[Path], image_size: int | None = None, grayscale: bool | None = None,
                 num_workers: int | None = None) -> None:
        self.name = path.name
        self.num_workers = NUM_WORKERS if num_workers is None else num_workers  # 0: decode in this process
        mode = "L" if (grayscale if grayscale is not None else folder_grayscale(files)) else "RGB"
        first = decode_image(files[0], mode, image_size)
        self._decoder = _Decoder(_PathTable(path, files), mode, image_size, first.shape)
        self.captions = read_captions(path, files)
        h, w = first.shape[:2]
        self._shape = (1 if mode == "L" else 3, h, w)

    def __len__(self) -> int:
        return len(self._decoder)

    def __repr__(self) -> str:
        return f"FolderStream({self.name!r}, {len(self)} images of {list(self.shape)})"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example (C, H, W)."""
        return self._shape

    @property
    def x(self) -> torch.Tensor:
        raise DiffusaError(f"dataset {self.name} streams its {len(self)} images from disk and has no .x in "
                           "memory; read it with get(idx) or loader(...), or load it with data.stream='off'")

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples at indices `idx` (a 1-D long tensor), float32, decoded in this process."""
        return self._decoder.batch(idx.tolist())

    def loader(self, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
               world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, examples) for training steps start_step, start_step + 1, ...: the order of `batches`, decoded
        by `num_workers` persistent worker processes, each `PREFETCH_FACTOR` batches ahead."""
        workers = self.num_workers
        dl = torch.utils.data.DataLoader(
            self._decoder, batch_sampler=_StepBatches(len(self), batch_size, seed, start_step, rank, world),
            collate_fn=_as_is, num_workers=workers, persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_FACTOR if workers > 0 else None)
        batches_in = iter(dl)
        try:
            for out in batches_in:
                if isinstance(out, _Failure):
                    raise DiffusaError(out.message)
                yield out
        finally:  # end the workers now, even while a traceback still holds this frame
            del batches_in, dl


def open_folder(path: Path, image_size: int | None = None, grayscale: bool | None = None,
                stream: str = "auto") -> Dataset | FolderStream:
    """A folder of images, resident (`load_folder`) or streamed (`FolderStream`): stream "on", "off", or "auto"
    (streams when the decoded float32 images would exceed `stream_threshold()` bytes)."""
    files = list_images(path)
    grayscale = folder_grayscale(files) if grayscale is None else grayscale  # headers only, read once
    if stream == "auto":
        _, (w, h) = image_header(files[0])
        gray = grayscale
        side = (image_size, image_size) if image_size is not None else (h, w)
        decoded = len(files) * (1 if gray else 3) * side[0] * side[1] * 4
        stream = "on" if decoded > stream_threshold() else "off"
    if stream == "on":
        return FolderStream(path, files, image_size, grayscale)
    return load_folder(path, image_size, grayscale, files)
