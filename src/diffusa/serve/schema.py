"""The request bodies of `POST /api/generate`, `/api/edit`, `/api/inpaint` and `/api/upscale` (and of the web page's
buttons): the pipeline's argument names plus `model` and `format`, each typed and bounded; unknown fields are
refused. An edit's image (`image_png` or `digit`) and mask (`mask_png` or `mask`) are strings and numbers here, read
by images.py.

Only the size limits live here (limits.py); whether a sampler, spacing, seed, guidance or label suits the model
is the pipeline's to say (its `DiffusaError` becomes a 400).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diffusa.editing import repaint_steps
from diffusa.pipelines.edit import (
    DEFAULT_INPAINT_SAMPLER,
    DEFAULT_JUMP_LENGTH,
    DEFAULT_JUMP_N_SAMPLE,
    DEFAULT_STRENGTH,
)
from diffusa.pipelines.sampling import SAMPLER_DEFAULT_TEXT, STEPS_DEFAULT_TEXT
from diffusa.serve.limits import (
    MAX_ETA,
    MAX_GUIDANCE,
    MAX_IMAGE_B64,
    MAX_LABEL,
    MAX_MASK_B64,
    MAX_N,
    MAX_NAME,
    MAX_PROMPT,
    MAX_PROMPT_TOTAL,
    MAX_REVERSE_STEPS,
    MAX_STEPS,
    Refusal,
)

Prompt = Annotated[str, Field(max_length=MAX_PROMPT)]
Label = Annotated[int, Field(ge=0, le=MAX_LABEL)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, Field(ge=1, le=MAX_STEPS)]

# what a field of several types takes, for a message that names them all (pydantic names only the first)
TYPES = {"prompt": "a string or a list of strings", "model": "a model's name (a string)",
         "label": "a class index, \"all\", or a list of class indices"}
TYPE_ERRORS = ("int_type", "string_type", "list_type", "literal_error", "float_type", "union_tag_invalid")

# the fields passed to the pipeline call, in its order
PIPELINE_FIELDS = ("prompt", "n", "label", "sampler", "steps", "guidance_scale", "eta", "variance", "spacing", "seed")


class Settings(BaseModel):
    """The fields every route shares: `model` and the sampling settings, with `format` for the answer."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    task: ClassVar[str] = "generate"  # the pipeline method: pipe(...), pipe.img2img / inpaint / upscale(...)
    pipeline_fields: ClassVar[tuple[str, ...]] = PIPELINE_FIELDS  # the shared fields the pipeline call takes
    extra_fields: ClassVar[tuple[str, ...]] = ()  # the task's own keyword arguments of the pipeline call
    task_sampler: ClassVar[str | None] = None  # the task's own default sampler, ahead of a model's recommendation

    model: Name | None = None
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_N)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    label: Label | Literal["all"] | Annotated[list[Label], Field(min_length=1, max_length=MAX_N)] | None = None
    # None: the model's recommendation (`Service.resolved` fills them in, as the pipeline would: resolve_sampling)
    sampler: Name | None = Field(None, description=f"default: {SAMPLER_DEFAULT_TEXT}")
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = Field(None, description=f"default: {STEPS_DEFAULT_TEXT}")
    guidance_scale: Annotated[float, Field(ge=-MAX_GUIDANCE, le=MAX_GUIDANCE)] | None = None
    eta: Annotated[float, Field(le=MAX_ETA)] | None = None
    variance: Name | None = None
    spacing: Name | None = None
    seed: int = 0
    format: Literal["png", "npz"] = "png"

    @model_validator(mode="after")
    def _prompt_total(self) -> Settings:
        prompts = [self.prompt] if isinstance(self.prompt, str) else (self.prompt or [])
        if sum(len(p) for p in prompts) > MAX_PROMPT_TOTAL:
            raise ValueError(f"prompt: at most {MAX_PROMPT_TOTAL} characters in all")
        return self

    @property
    def model_name(self) -> str:
        """The model asked for, or `diffusa generate`'s default (`shipped.default_model`)."""
        from diffusa.shipped import default_model

        return self.model if self.model is not None else default_model(self.task, self.prompt is not None)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the pipeline call (prompt included; an edit's image and mask are not)."""
        return {k: getattr(self, k) for k in (*self.pipeline_fields, *self.extra_fields)}

    def record(self) -> dict[str, Any]:
        """The request as JSON, with the model named: what the history keeps to reload it."""
        return {"model": self.model_name, **self.pipeline_kwargs()}

    def total_steps(self) -> int:
        """About how many sampler steps the call takes (the page's progress bar); of a resolved request."""
        if self.steps is None:
            raise ValueError("total_steps of a request whose steps are not resolved (Service.resolved)")  # a bug
        return self.steps


class GenerateRequest(Settings):
    """What to draw. `model`: a shipped model's name or a run folder under --runs (default: mnist-text with a
    prompt, mnist-pixel without, as `diffusa generate`); `format`: "png" (a grid, as `--out x.png`) or "npz";
    `autoguidance`: w against the model's own guide (config.json "sampling" "guide") or the snapshot the run kept
    (`train.guide_at`; no other guide can be named here); unset, the model's recommended w with its recommended
    sampler (1: none)."""

    extra_fields: ClassVar[tuple[str, ...]] = ("autoguidance",)
    autoguidance: Annotated[float, Field(ge=-MAX_GUIDANCE, le=MAX_GUIDANCE)] | None = None


ImagePng = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_B64)]
Digit = Annotated[int, Field(ge=0, le=MAX_LABEL)]


class ImageSettings(Settings):
    """The settings of an edit: the image is `image_png` (a base64 PNG, converted to the model's channels) or
    `digit` (a held-out mnist5k test digit by index), one of them (images.py reads them)."""

    image_png: ImagePng | None = None
    digit: Digit | None = None

    @property
    def model_name(self) -> str:
        """The model asked for, or `diffusa edit`'s and `diffusa inpaint`'s default (`shipped.default_model`):
        mnist-text with a prompt or a label, else mnist-pixel to edit and mnist-inpaint to inpaint."""
        from diffusa.shipped import default_model

        if self.model is not None:
            return self.model
        return default_model(self.task, self.prompt is not None or self.label is not None)

    def record(self) -> dict[str, Any]:
        """As `Settings.record`, with the digit (an uploaded image is kept beside it in the history)."""
        return {**super().record(), "digit": self.digit}


class EditRequest(ImageSettings):
    """img2img (`pipe.img2img`, SDEdit): redraw an image from the noise level `strength` names (in (0, 1], the
    pipeline's rule; default 0.6). n: outputs (default one; more are variations of the one image)."""

    task: ClassVar[str] = "img2img"
    extra_fields: ClassVar[tuple[str, ...]] = ("strength",)

    strength: float | None = None

    def total_steps(self) -> int:
        strength = DEFAULT_STRENGTH if self.strength is None else self.strength
        return max(1, round(min(max(strength, 0.0), 1.0) * super().total_steps()))


class InpaintRequest(ImageSettings):
    """Inpainting (`pipe.inpaint`, RePaint): redraw the white part of a mask. The mask: `mask_png` (a base64 PNG
    of the model's image size, white = repaint) or `mask` (a built-in mask, `diffusa.pipelines.MASKS`: left, right,
    top, bottom, center, box:X,Y,W,H or strokes[:SEED]), one of them; jump_length and jump_n_sample: RePaint's
    resampling (1: replacement without jumps; 0: a mask-conditioned model's conditioning alone; None: the
    pipeline's defaults, 5 x 5 jumps, or replacement without jumps on a mask-conditioned model)."""

    task: ClassVar[str] = "inpaint"
    extra_fields: ClassVar[tuple[str, ...]] = ("jump_length", "jump_n_sample")
    task_sampler: ClassVar[str | None] = DEFAULT_INPAINT_SAMPLER  # RePaint's ancestral steps (pipe.inpaint's)

    mask_png: Annotated[str, Field(min_length=1, max_length=MAX_MASK_B64)] | None = None
    mask: Name | None = None
    jump_length: Count | None = None
    jump_n_sample: Annotated[int, Field(ge=0, le=MAX_STEPS)] | None = None

    @model_validator(mode="after")
    def _reverse_steps(self) -> InpaintRequest:  # checked again once the steps are resolved (Service.resolved)
        if self.steps is not None and self.total_steps() > MAX_REVERSE_STEPS:
            raise ValueError(f"jump_n_sample: {self.steps} steps with jumps of {self.jump_length} x "
                             f"{self.jump_n_sample} take {self.total_steps()} reverse steps; at most "
                             f"{MAX_REVERSE_STEPS}")
        return self

    def record(self) -> dict[str, Any]:
        """As `ImageSettings.record`, with the mask's name (a mask image is kept beside it in the history)."""
        return {**super().record(), "mask": self.mask}

    def total_steps(self) -> int:
        """RePaint's reverse steps (`diffusa.editing.repaint_steps`); a jump left out counts as the pipeline's
        largest default (5 x 5), a bound the limits can hold."""
        length = DEFAULT_JUMP_LENGTH if self.jump_length is None else self.jump_length
        n_sample = DEFAULT_JUMP_N_SAMPLE if self.jump_n_sample is None else self.jump_n_sample
        return repaint_steps(super().total_steps(), length, n_sample)


class UpscaleRequest(ImageSettings):
    """Super-resolution (`pipe.upscale`, SR3): the image drawn at the model's factor times its size, conditioned on
    it. `model`: the shipped mnist-sr (the default, as `diffusa upscale`) or a run folder trained with
    data.super_resolution; a held-out
    `digit` is shrunk to the model's input size first, as `diffusa upscale mnist5k:INDEX` shrinks it; noise_level:
    the condition's augmentation level (default the run's data.cond_noise; the pipeline's range). One output per
    image (no `n`); the tiles are the model's own size (`pipe.upscale`'s default tile and overlap)."""

    task: ClassVar[str] = "upscale"
    pipeline_fields: ClassVar[tuple[str, ...]] = tuple(k for k in PIPELINE_FIELDS if k != "n")
    extra_fields: ClassVar[tuple[str, ...]] = ("noise_level",)

    noise_level: float | None = None

    @property
    def model_name(self) -> str:
        """The model asked for, or `diffusa upscale`'s default: the shipped mnist-sr."""
        from diffusa.shipped import default_model

        return self.model if self.model is not None else default_model(self.task)

    @model_validator(mode="after")
    def _upscale(self) -> UpscaleRequest:
        if self.n is not None:
            raise ValueError("n: an upscale draws one image per input image; leave n out")
        return self


Request = GenerateRequest | EditRequest | InpaintRequest | UpscaleRequest
R = TypeVar("R", bound=Settings)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


def parse_json(body: bytes) -> Any:
    """A JSON document, strictly: NaN and Infinity are refused (400)."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise Refusal(400, "the body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, bad UTF-8, NaN, an integer of too many digits
        raise Refusal(400, f"the body is not valid JSON: {e}") from None


def parse_request(obj: Any, kind: type[R] = GenerateRequest) -> R:  # type: ignore[assignment]
    """A validated request of `kind` from a JSON value; 422 naming the first field at fault otherwise."""
    if not isinstance(obj, dict):
        raise Refusal(422, f"the body must be a JSON object of fields ({', '.join(kind.model_fields)}), "
                           f"got a JSON {type(obj).__name__}")
    try:
        return kind.model_validate(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else None
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}; the fields are {', '.join(kind.model_fields)}"
        elif field is None:  # a model-level check: its message names the field
            msg = err["msg"].removeprefix("Value error, ")
            field = msg.split(":", 1)[0]
        elif field in TYPES and err["type"] in TYPE_ERRORS:
            msg = f"{field}: expected {TYPES[field]} (got {_short(obj.get(field))})"
        else:
            where = loc[0] + "".join(f"[{p}]" for p in loc[1:] if p.isdigit())
            msg = f"{where}: {err['msg']} (got {_short(err.get('input'))})"
        raise Refusal(422, msg, field) from None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, BaseModel) else "?"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["PIPELINE_FIELDS", "EditRequest", "GenerateRequest", "ImageSettings", "InpaintRequest", "Request",
           "Settings", "UpscaleRequest", "parse_json", "parse_request"]
