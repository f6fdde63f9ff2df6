"""Every limit of `diffusa serve` in one place, and the refusal that carries an HTTP status.

A request beyond a limit is refused with a 4xx and a one-line message naming the field; the pipeline's own
checks (seed, sampler, guidance, eta, ...) answer everything else, as `DiffusaError` -> 400.
"""

from __future__ import annotations

from diffusa.errors import DiffusaError

MAX_N = 64  # samples per request
MAX_STEPS = 200  # sampling steps per request
MAX_PROMPT = 200  # characters of one prompt (the shipped text model reads its first 46 bytes)
MAX_PROMPT_TOTAL = 1000  # characters of all prompts of one request (the settings travel in a response header)
MAX_LABEL = 1_000_000  # a class index (the pipeline refuses one the model lacks; this keeps int64 whole)
MAX_GUIDANCE = 100.0  # |guidance_scale|: beyond it every sample saturates
MAX_ETA = 10.0  # a sampler's stochasticity (the pipeline refuses a negative one)
MAX_NAME = 200  # characters of a model name or of a sampler / spacing / variance name
MAX_BODY = 64 * 1024  # bytes of an API request body
MAX_IMAGE_B64 = 48_000  # characters of image_png (base64: ~35 KiB of PNG), within MAX_BODY with a mask
MAX_MASK_B64 = 12_000  # characters of mask_png (a 28x28 mask is ~100 bytes of PNG)
MAX_EDIT_PIXELS = 1 << 22  # pixels of an uploaded image (2048 x 2048), read from its PNG header before decoding,
# beneath the library's own ceiling (diffusa.limits.MAX_IMAGE_PIXELS): a small PNG may claim many pixels
MAX_UPSCALE_INPUT = 256 * 256  # pixels of an image to upscale, and of the upscaled image (the cost grows with the
MAX_UPSCALE_OUTPUT = 384 * 384  # output's pixels: tiles of the model's own size, each a network call per step)
MAX_REVERSE_STEPS = 2500  # RePaint's reverse steps (steps + jumps): the paper's 250 steps with 10 x 10 jumps
MAX_UPLOAD = 1024 * 1024  # bytes of any other request body (the web page's own calls)
DEFAULT_QUEUE, MAX_QUEUE = 4, 32  # requests that may wait behind the running one (--max-queue)
HISTORY_SHOWN = 100  # newest generations shown in the gallery and listed by GET /api/history
MIN_TOKEN = 16  # characters of an access token given with --token


class Refusal(DiffusaError):  # noqa: N818 (a refusal, not an error of the server)
    """A request the server refuses: an HTTP status, a one-line message and, where one is to blame, the field."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


class Busy(Refusal):
    """Every queue slot is taken: 429, try again later."""

    def __init__(self, max_queue: int) -> None:
        super().__init__(429, f"busy: one generation is running and {max_queue} wait (--max-queue {max_queue}); "
                              "try again shortly")


def limits() -> dict[str, int | float]:
    """The limits as JSON (GET /api/models reports them)."""
    return {"n": MAX_N, "steps": MAX_STEPS, "prompt_chars": MAX_PROMPT, "prompt_chars_total": MAX_PROMPT_TOTAL,
            "guidance_scale": MAX_GUIDANCE, "eta": MAX_ETA, "body_bytes": MAX_BODY, "image_png_chars": MAX_IMAGE_B64,
            "mask_png_chars": MAX_MASK_B64, "image_pixels": MAX_EDIT_PIXELS, "reverse_steps": MAX_REVERSE_STEPS,
            "upscale_input_pixels": MAX_UPSCALE_INPUT, "upscale_output_pixels": MAX_UPSCALE_OUTPUT}


__all__ = ["DEFAULT_QUEUE", "HISTORY_SHOWN", "MAX_BODY", "MAX_EDIT_PIXELS", "MAX_ETA", "MAX_GUIDANCE", "MAX_IMAGE_B64",
           "MAX_LABEL", "MAX_MASK_B64", "MAX_N", "MAX_NAME", "MAX_PROMPT", "MAX_PROMPT_TOTAL", "MAX_QUEUE",
           "MAX_REVERSE_STEPS", "MAX_STEPS", "MAX_UPLOAD", "MAX_UPSCALE_INPUT", "MAX_UPSCALE_OUTPUT", "MIN_TOKEN",
           "Busy", "Refusal", "limits"]
