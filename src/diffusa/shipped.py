"""Trained models that ship inside the package, so `diffusa generate` works straight after installation.

Each is an ordinary run folder under `diffusa/assets/models/NAME` (config.json + model.safetensors; a latent
model carries its autoencoder in `autoencoder/`, named by a relative path). `scripts/train_shipped_models.py`
trains and exports them; `config.json["shipped"]` records the command and the training time that reproduce them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from diffusa.checkpoint import load_json, save_json, weights_file
from diffusa.errors import DiffusaError

SHIPPED: dict[str, str] = {
    "mnist-pixel": "unconditional MNIST digits in pixel space (28x28)",
    "mnist-text": "MNIST digits from a text prompt: latent diffusion (4x7x7 KL latents), cross-attention, "
                  "classifier-free guidance",
    "mnist-sr": "a 4x super-resolution model for digits, 7x7 -> 28x28 (SR3, noise-conditioning augmentation); "
                "larger images in tiles: diffusa upscale IMAGE --model mnist-sr",
    "mnist-text-1step": "mnist-text distilled to one network evaluation with guidance (a consistency student that "
                        "takes the guidance scale, 1..5, as an input)",
    "mnist-inpaint": "a mask-conditioned inpainting model for digits (Palette; boxes, strokes, halves), with mask "
                     "guidance 3 by default: diffusa inpaint IMAGE --mask MASK",
}
DEFAULT_TEXT_MODEL, DEFAULT_MODEL, DEFAULT_UPSCALER = "mnist-text", "mnist-pixel", "mnist-sr"
DEFAULT_INPAINT_MODEL = "mnist-inpaint"


def default_model(task: str = "generate", conditioned: bool = False) -> str:
    """The shipped model a command, pipeline route or form uses where it names none: the text model for a prompt
    or a label (`conditioned`), else the task's own (`inpaint`: the mask-conditioned model, which completes the
    masked digit better than RePaint on mnist-pixel at a quarter of the evaluations, docs/editing.md; `upscale`:
    the 4x upscaler), else the unconditional pixel model."""
    if conditioned:
        return DEFAULT_TEXT_MODEL
    return {"inpaint": DEFAULT_INPAINT_MODEL, "upscale": DEFAULT_UPSCALER}.get(task, DEFAULT_MODEL)


def shipped_root() -> Path:
    """The folder that holds the shipped models."""
    return Path(str(resources.files("diffusa"))) / "assets" / "models"


def resolve_model(spec: str) -> Path:
    """A shipped model's name, or any run folder, as a path."""
    if spec in SHIPPED:
        path = shipped_root() / spec
        if not (path / "config.json").is_file():
            raise DiffusaError(f"the shipped model {spec!r} is missing from this installation ({path}); "
                               "python scripts/train_shipped_models.py trains it")
        return path
    path = Path(spec)
    if not path.is_dir():
        raise DiffusaError(f"--model {spec!r} is neither a shipped model ({', '.join(SHIPPED)}) nor a run folder")
    return path


def run_path(spec: str | Path) -> Path:
    """A shipped model's name (unless a run folder of that name is here), or a run folder that exists."""
    if not isinstance(spec, (str, Path)):
        raise DiffusaError(f"a model is a shipped model's name or a run folder's path, got {type(spec).__name__}")
    if not str(spec).strip():
        raise DiffusaError(f"no run given: name a run folder or a shipped model ({', '.join(SHIPPED)})")
    if "\x00" in str(spec):
        raise DiffusaError(f"run folder {spec!r}: a path cannot hold a NUL character")
    try:
        if str(spec) in SHIPPED and not (Path(spec) / "config.json").is_file():
            return resolve_model(str(spec))
        path = Path(spec)
        if not path.is_dir():
            what = "is a file, not a run folder" if path.exists() else "does not exist"
            raise DiffusaError(f"run folder {spec!s:.200} {what}; the shipped models are {', '.join(SHIPPED)}")
    except OSError as e:  # a name too long for the file system, a folder that may not be read
        raise DiffusaError(f"run folder {spec!s:.200}: {e.strerror or e}") from None
    return path


def _strip_init_path(meta: dict[str, Any]) -> None:
    """A fine-tuned run's config.json names the run it started from (`init.from`): keep its name, not the path of
    the machine that trained it."""
    if isinstance(meta.get("init"), dict) and "from" in meta["init"]:
        meta["init"] = {**meta["init"], "from": Path(str(meta["init"]["from"])).name}


def export_run(run_dir: str | Path, dest: str | Path, record: dict[str, Any],
               measured: dict[str, Any] | None = None, guide: tuple[str | Path, dict[str, Any]] | None = None) -> Path:
    """Copy a trained run's config and EMA weights (and its autoencoder) to `dest`, atomically, adding `record`
    (how it was trained) as config.json["shipped"] and `measured` (entries measured best: "sampling", a guided
    student's "guidance" table; checked by the caller, runs.recommended_sampling and GuidanceRange.from_table) over
    the run's own. `guide`: (run folder, its record), autoguidance's weaker model, exported the same way into
    dest/guide (config.json "sampling" "guide": "guide"). Optimizer state and logs stay behind."""
    run_dir, dest = Path(run_dir), Path(dest)
    meta = load_json(run_dir / "config.json")
    meta.update(measured or {})
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copyfile(run_dir / "model.safetensors", tmp / "model.safetensors")
        if "latent" in meta:
            from diffusa.latent import autoencoder_path

            ae = autoencoder_path(meta["latent"], run_dir)
            (tmp / "autoencoder").mkdir()
            for name in ("config.json", weights_file(ae, "autoencoder.safetensors").name):
                shutil.copyfile(ae / name, tmp / "autoencoder" / name)
            meta["latent"] = {**meta["latent"], "autoencoder": "autoencoder"}
            meta["config"]["data"]["latent"] = "autoencoder"  # no path of the machine that trained it
        _strip_init_path(meta)
        meta["shipped"] = record
        save_json(tmp / "config.json", meta)
        if guide is not None:  # its own config and EMA weights, its own record (no recommendation of its own)
            guide_meta = {k: v for k, v in load_json(Path(guide[0]) / "config.json").items() if k != "sampling"}
            if "latent" in guide_meta:  # its autoencoder would need a copy of its own
                raise DiffusaError(f"{guide[0]}: a latent guide is not exported; guide with a pixel-space run")
            _strip_init_path(guide_meta)
            (tmp / "guide").mkdir()
            shutil.copyfile(Path(guide[0]) / "model.safetensors", tmp / "guide" / "model.safetensors")
            save_json(tmp / "guide" / "config.json", {**guide_meta, "shipped": guide[1]})
        umask = os.umask(0)
        os.umask(umask)
        for d in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
            d.chmod(0o777 & ~umask)  # mkdtemp's folders are private
        if not dest.exists():
            os.replace(tmp, dest)
            return dest
        # the old model is moved aside, not deleted, until the new one is in place, and put back if that fails;
        # only a model that is no longer needed (replaced, or safely back at dest) is ever deleted
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        try:
            os.replace(dest, aside / dest.name)
        except BaseException:
            aside.rmdir()
            raise
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(aside / dest.name, dest)  # if this fails too, the old model stays in `aside`
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


__all__ = ["DEFAULT_INPAINT_MODEL", "DEFAULT_MODEL", "DEFAULT_TEXT_MODEL", "SHIPPED", "default_model", "export_run",
           "resolve_model", "run_path", "shipped_root"]
