"""The images an edit or an upscale brings: a base64 PNG (`image_png`, `mask_png`), a held-out digit (`digit`), or
the page's own pixels (an upload, a painted mask), turned into the pipeline's arguments and the pixels the history
keeps.

An uploaded PNG's size is read from its header (the IHDR chunk: 8 bytes, nothing decoded) and checked against the
library's ceiling (`diffusa.limits.check_pixels`) and the server's (`MAX_EDIT_PIXELS`) before it is decoded, by
the library's one image reader (`diffusa.data.folders.decode_image`: every PIL mode, alpha onto black) in the
model's mode, "L" or "RGB", as `diffusa edit IMAGE.png` reads a file. Only PNG is taken. An image to upscale is
held to the upscale limits too (`MAX_UPSCALE_INPUT` pixels, and `MAX_UPSCALE_OUTPUT` once upscaled), from the header.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusa.errors import DiffusaError
from diffusa.serve.limits import MAX_EDIT_PIXELS, MAX_UPSCALE_INPUT, MAX_UPSCALE_OUTPUT, Refusal
from diffusa.serve.schema import ImageSettings, InpaintRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URL = "data:image/png;base64,"


@dataclass
class Inputs:
    """An edit's image (and mask): the pipeline's positional arguments, and the pixels the history keeps beside
    the result (`input`: uint8 (H, W, C); `mask`: uint8 (H, W), for a mask given as pixels)."""

    image: Any
    mask: Any = None
    keep: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def args(self) -> tuple[Any, ...]:
        """The pipeline call's positional arguments: (image,) for img2img, (image, mask) for inpainting."""
        return (self.image,) if self.mask is None else (self.image, self.mask)


class _Upload(io.BytesIO):
    """A file in memory, named by its field in the reader's messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def b64_bytes(text: str, name: str) -> bytes:
    """The bytes of a base64 string (whitespace ignored; a `data:image/png;base64,` prefix allowed); 400 naming
    the field otherwise."""
    if text.startswith("data:"):
        if not text.startswith(DATA_URL):
            raise Refusal(400, f"{name}: a data URL must start with {DATA_URL!r}", name)
        text = text[len(DATA_URL):]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise Refusal(400, f"{name}: not base64 ({e})", name) from None


def png_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG's header chunk, nothing decoded; 400 for what is not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise Refusal(400, f"{name}: not a PNG image (it does not start with the PNG signature)", name)
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise Refusal(400, f"{name}: a PNG without its header chunk (IHDR): truncated or damaged", name)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_upscale(name: str, width: int, height: int, factor: int) -> None:
    """413 for an image to upscale by `factor` of over MAX_UPSCALE_INPUT pixels, or whose output would be over
    MAX_UPSCALE_OUTPUT pixels."""
    if width * height > MAX_UPSCALE_INPUT:
        raise Refusal(413, f"{name} is {width}x{height} pixels; this server upscales images of at most "
                           f"{MAX_UPSCALE_INPUT:,} pixels", name)
    if width * height * factor * factor > MAX_UPSCALE_OUTPUT:
        raise Refusal(413, f"{name} is {width}x{height} pixels, {width * factor}x{height * factor} upscaled x{factor}; "
                           f"this server draws at most {MAX_UPSCALE_OUTPUT:,} pixels", name)


def read_png(data: bytes, name: str, mode: str, factor: int = 0) -> np.ndarray:
    """A PNG's pixels as uint8 (H, W, C) in `mode` ("L": C = 1, "RGB": C = 3): the header's size checked first
    (413 beyond a limit; with an upscale's `factor`, the upscale limits too), then decoded by the library's reader
    (400 for a file it cannot read)."""
    from diffusa.data.folders import decode_image
    from diffusa.limits import check_pixels

    width, height = png_size(data, name)
    try:
        check_pixels(repr(name), width, height)
    except DiffusaError as e:
        raise Refusal(413, str(e), name) from None
    if width * height > MAX_EDIT_PIXELS:
        raise Refusal(413, f"{name} is {width}x{height} pixels; this server edits images of at most "
                           f"{MAX_EDIT_PIXELS:,} pixels", name)
    if factor:
        check_upscale(name, width, height, factor)
    try:
        pixels = decode_image(_Upload(data, repr(name)), mode)  # type: ignore[arg-type]  # PIL reads files in memory
    except DiffusaError as e:
        raise Refusal(400, str(e), name) from None
    return pixels.reshape(*pixels.shape[:2], -1)


def held_out_digit(index: int, size: tuple[int, int] | None = None) -> tuple[Any, np.ndarray]:
    """Digit `index` of mnist5k's test split: float (1, 1, 28, 28) in [-1, 1] for the pipeline (what `diffusa edit
    mnist5k:INDEX` passes; shrunk to `size` (H, W) by `resize_images` when given, as `diffusa upscale mnist5k:INDEX`
    shrinks it to the model's input) and its uint8 (H, W, 1) pixels; 422 for an index beyond the split."""
    from diffusa.data import load_dataset, resize_images, unit_to_uint8

    test = load_dataset("mnist5k", "test")
    if not 0 <= index < len(test):
        raise Refusal(422, f"digit: the held-out split has digits 0..{len(test) - 1} (got {index})", "digit")
    x = test.x[index:index + 1]
    if size is not None:
        x = resize_images(x, size)
    return x, unit_to_uint8(x)[0]


def mode_of(shape: tuple[int, ...]) -> str:
    """The PIL mode an image for a model of this image shape (C, H, W) is read in: RGB for 3 channels, else L."""
    return "RGB" if len(shape) == 3 and shape[0] == 3 else "L"


def _one(req: ImageSettings, a: str, b: str, what: str) -> None:
    given = [k for k in (a, b) if getattr(req, k) is not None]
    if len(given) != 1:
        raise Refusal(422, f"{a}: give {what} as {a} or as {b}, " + ("not both" if given else "one of them"), a)


def edit_inputs(req: ImageSettings, shape: tuple[int, ...], image: np.ndarray | None = None,
                mask: np.ndarray | None = None, factor: int = 0) -> Inputs:
    """The image (and mask) of an edit: the page's own pixels where given (image: uint8 (H, W, C); mask: uint8
    (H, W), white = repaint), else the request's `image_png` or `digit`, and `mask_png` or `mask`. `shape`: the
    model's (C, H, W); `factor`: an upscale's (the digit shrunk to the model's input, H / factor x W / factor, and
    the image held to the upscale limits)."""
    name = "image"
    if image is not None:
        x, pixels = image, image
    elif req.digit is not None and req.image_png is None:
        name = "digit"
        size = (shape[-2] // factor, shape[-1] // factor) if factor else None
        x, pixels = held_out_digit(req.digit, size)
    else:
        _one(req, "image_png", "digit", "the image")
        assert req.image_png is not None
        name = "image_png"
        x = pixels = read_png(b64_bytes(req.image_png, name), name, mode_of(shape), factor)
    if factor:
        check_upscale(name, pixels.shape[1], pixels.shape[0], factor)
    inputs = Inputs(x, keep={"input": pixels})
    if isinstance(req, InpaintRequest):
        if mask is None and req.mask is not None and req.mask_png is None:
            inputs.mask = req.mask  # a name: the pipeline's to check
        else:
            if mask is None:
                _one(req, "mask_png", "mask", "the mask")
                assert req.mask_png is not None
                mask = read_png(b64_bytes(req.mask_png, "mask_png"), "mask_png", "L")[..., 0]
            inputs.mask = inputs.keep["mask"] = mask
    return inputs


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W[, C]) pixels as PNG bytes (what the history keeps, and what the page uploads as image_png)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


__all__ = ["DATA_URL", "PNG_SIGNATURE", "Inputs", "b64_bytes", "check_upscale", "edit_inputs", "encode_png",
           "held_out_digit", "mode_of", "png_size", "read_png"]
