"""The request body of `POST /api/generate` (and of the web page's generate button): the pipeline's argument
names plus `model` and `format`, each typed and bounded; unknown fields are refused.

Only the size limits live here (limits.py); whether a sampler, spacing, seed, guidance or label suits the model
is the pipeline's to say (its `DiffusaError` becomes a 400).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diffusa.pipelines import DEFAULT_SAMPLER, DEFAULT_STEPS
from diffusa.serve.limits import (
    MAX_ETA,
    MAX_GUIDANCE,
    MAX_LABEL,
    MAX_N,
    MAX_NAME,
    MAX_PROMPT,
    MAX_PROMPT_TOTAL,
    MAX_STEPS,
    Refusal,
)

Prompt = Annotated[str, Field(max_length=MAX_PROMPT)]
Label = Annotated[int, Field(ge=0, le=MAX_LABEL)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]

# what a field of several types takes, for a message that names them all (pydantic names only the first)
TYPES = {"prompt": "a string or a list of strings", "model": "a model's name (a string)",
         "label": "a class index, \"all\", or a list of class indices"}
TYPE_ERRORS = ("int_type", "string_type", "list_type", "literal_error", "float_type", "union_tag_invalid")

# the fields passed to the pipeline call, in its order
PIPELINE_FIELDS = ("prompt", "n", "label", "sampler", "steps", "guidance_scale", "eta", "variance", "spacing", "seed")


class GenerateRequest(BaseModel):
    """What to draw. `model`: a shipped model's name or a run folder under --runs (default: mnist-text with a
    prompt, mnist-pixel without, as `diffusa generate`); `format`: "png" (a grid, as `--out x.png`) or "npz"."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Name | None = None
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_N)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    label: Label | Literal["all"] | Annotated[list[Label], Field(min_length=1, max_length=MAX_N)] | None = None
    sampler: Name = DEFAULT_SAMPLER
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = DEFAULT_STEPS
    guidance_scale: Annotated[float, Field(ge=-MAX_GUIDANCE, le=MAX_GUIDANCE)] | None = None
    eta: Annotated[float, Field(le=MAX_ETA)] | None = None
    variance: Name | None = None
    spacing: Name | None = None
    seed: int = 0
    format: Literal["png", "npz"] = "png"

    @model_validator(mode="after")
    def _prompt_total(self) -> GenerateRequest:
        prompts = [self.prompt] if isinstance(self.prompt, str) else (self.prompt or [])
        if sum(len(p) for p in prompts) > MAX_PROMPT_TOTAL:
            raise ValueError(f"prompt: at most {MAX_PROMPT_TOTAL} characters in all")
        return self

    @property
    def model_name(self) -> str:
        """The model asked for, or `diffusa generate`'s default."""
        from diffusa.shipped import DEFAULT_MODEL, DEFAULT_TEXT_MODEL

        if self.model is not None:
            return self.model
        return DEFAULT_TEXT_MODEL if self.prompt is not None else DEFAULT_MODEL

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the pipeline call (prompt included)."""
        return {k: getattr(self, k) for k in PIPELINE_FIELDS}

    def record(self) -> dict[str, Any]:
        """The request as JSON, with the model named: what the history keeps to reload it."""
        return {"model": self.model_name, **self.pipeline_kwargs()}


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


def parse_request(obj: Any) -> GenerateRequest:
    """A validated request from a JSON value; 422 naming the first field at fault otherwise."""
    if not isinstance(obj, dict):
        raise Refusal(422, f"the body must be a JSON object of fields ({', '.join(GenerateRequest.model_fields)}), "
                           f"got a JSON {type(obj).__name__}")
    try:
        return GenerateRequest.model_validate(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else None
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}; the fields are {', '.join(GenerateRequest.model_fields)}"
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


__all__ = ["PIPELINE_FIELDS", "GenerateRequest", "parse_json", "parse_request"]
