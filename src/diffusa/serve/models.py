"""Which models a server may load: the shipped ones, by name, and the run folders under its --runs root.

A name is a shipped model's name or a relative path inside the root. Absolute paths, `..`, backslashes and
control characters are refused before the file system is touched; what remains is resolved (symlinks followed)
and must still lie inside the root, so a link that points out of it is refused too. Nothing but a run's
config.json and safetensors is ever read (the pipeline guarantees it).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from diffusa.checkpoint import load_json
from diffusa.errors import DiffusaError
from diffusa.serve.limits import MAX_NAME, Refusal
from diffusa.shipped import SHIPPED, resolve_model, shipped_root
from diffusa.superres import ImageCondition

LIST_DEPTH = 3  # run folders are looked for this many levels below the root (runs/a/b/c)
LIST_MAX = 500  # at most this many folders are listed


class Models:
    """Model names -> folders: the shipped models and the runs under `runs` (None: the shipped models only)."""

    def __init__(self, runs: str | Path | None = None) -> None:
        self.root: Path | None = None
        if runs is not None:
            root = Path(runs)
            if not root.is_dir():
                raise DiffusaError(f"--runs {runs}: no such folder")
            self.root = root.resolve()

    def resolve(self, name: Any) -> Path:
        """The folder of a model's name: 403 for a name that leaves the root, 404 for one that is not there."""
        if not isinstance(name, str) or not name.strip():
            raise Refusal(422, "model: give a model's name (GET /api/models lists them)", "model")
        if len(name) > MAX_NAME:
            raise Refusal(422, f"model: at most {MAX_NAME} characters", "model")
        if name in SHIPPED:
            return resolve_model(name)
        if any(ord(c) < 32 or c == "\x7f" for c in name) or "\\" in name:
            raise Refusal(403, f"model {name!r}: control characters and backslashes are not allowed", "model")
        rel = PurePosixPath(name)
        if rel.is_absolute() or name.startswith("~") or (len(name) > 1 and name[1] == ":"):
            raise Refusal(403, f"model {name!r}: absolute paths are not allowed; name a folder under --runs",
                          "model")
        if ".." in rel.parts:
            raise Refusal(403, f"model {name!r}: '..' is not allowed; name a folder under --runs", "model")
        if self.root is None:
            raise Refusal(404, f"model {name!r} is not a shipped model ({', '.join(SHIPPED)}), and this server has "
                               "no --runs folder", "model")
        try:
            path = (self.root / rel).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a loop of links
            raise Refusal(404, f"model {name!r}: no such run under --runs (GET /api/models lists them)",
                          "model") from None
        if not path.is_relative_to(self.root):
            raise Refusal(403, f"model {name!r} leads outside --runs (a link); refused", "model")
        if not (path / "config.json").is_file():
            raise Refusal(404, f"model {name!r} is not a run folder (no config.json)", "model")
        return path

    def config(self, path: Path) -> dict[str, Any]:
        """A folder's config.json, its recommendation ("sampling") checked: a DiffusaError naming the file and the
        key for a bad one, as loading the run would say (`runs.recommended_sampling`)."""
        from diffusa.runs import recommended_sampling

        meta = load_json(path / "config.json")
        if not isinstance(meta, dict):
            raise DiffusaError(f"{path / 'config.json'} is not a diffusa run config (not a JSON object)")
        recommended_sampling(meta, path / "config.json")
        return meta

    def describe(self, path: Path) -> dict[str, Any]:
        """What GET /api/models says of a folder: its conditioning and data shape (from config.json), whether
        it upscales (the factor) or is a mask-conditioned inpainting model (`inpaint`), its
        recommendation (config.json's "sampling", or None) and the sampler and steps a request that leaves them
        out gets (`defaults`: the recommendation, else the global defaults)."""
        from diffusa.pipelines.sampling import model_defaults
        from diffusa.runs import SAMPLING_KEYS

        meta = self.config(path)
        rec = meta.get("sampling")
        sampler, steps = model_defaults(meta)
        return {"conditioning": meta.get("config", {}).get("model", {}).get("conditioning", "none"),
                "data_shape": meta.get("data_shape"), "latent": "latent" in meta,
                "super_resolution": _image_condition(path, meta).factor,
                "inpaint": bool(_image_condition(path, meta).inpaint),
                "recommended": None if rec is None else {k: rec.get(k) for k in SAMPLING_KEYS
                                                         if k in ("sampler", "steps", "why") or k in rec},
                "defaults": {"sampler": sampler, "steps": steps}}

    def super_resolution(self, path: Path, name: str) -> int:
        """The factor of a super-resolution model (from config.json); 400 naming the model, in the pipeline's
        words (`check_super_resolution`), for any other model."""
        from diffusa.pipelines.upscale import check_super_resolution

        try:
            return check_super_resolution(name, _image_condition(path, load_json(path / "config.json"))).factor
        except DiffusaError as e:
            raise Refusal(400, str(e), "model") from None

    def image_shape(self, path: Path) -> tuple[int, ...]:
        """(C, H, W) of the images a folder's model draws (a latent model's decoded images); a points model's
        data shape (the pipeline refuses to edit it, in its own words)."""
        meta = load_json(path / "config.json")
        latent = meta.get("latent")
        shape = latent.get("image_shape") if isinstance(latent, dict) else meta.get("data_shape")
        if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
            raise DiffusaError(f"{path / 'config.json'}: no image shape in it (a damaged run?)")
        return tuple(shape)

    def runs(self) -> list[str]:
        """The run folders under the root (diffusion runs: a config.json of format diffusa-run), sorted."""
        from diffusa.checkpoint import FORMAT

        if self.root is None:
            return []
        found: list[str] = []
        for top, dirs, files in os.walk(self.root):  # links to folders are not followed
            here = Path(top)
            depth = len(here.relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < LIST_DEPTH else []
            if here != self.root and "config.json" in files:
                try:
                    if load_json(here / "config.json").get("format") == FORMAT:
                        found.append(here.relative_to(self.root).as_posix())
                except DiffusaError:
                    continue
            if len(found) >= LIST_MAX:
                break
        return sorted(found)

    def names(self) -> list[str]:
        """Every name this server answers to: the shipped models, then the runs."""
        return [*SHIPPED, *self.runs()]

    def redact(self, message: str) -> str:
        """A message without the server's own paths (the root, the installed package)."""
        for path, alias in ((self.root, "<runs>"), (shipped_root(), "<shipped>")):
            if path is not None:
                message = message.replace(str(path), alias)
        return message


def _image_condition(path: Path, meta: dict[str, Any]) -> ImageCondition:
    """A run's image condition (`diffusa.superres.ImageCondition`, factor 0 for all but super-resolution models)
    from its config.json's data table."""
    config = meta.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    try:
        return ImageCondition.of(data if isinstance(data, dict) else {})
    except (TypeError, ValueError):
        raise DiffusaError(f"{path / 'config.json'}: data.super_resolution is not a number (a damaged run?)") from None


__all__ = ["Models"]
