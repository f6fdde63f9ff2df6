"""Checkpoints: safetensors tensors plus JSON, written atomically, validated on load. No pickle anywhere."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from diffusa.errors import DiffusaError

FORMAT = "diffusa-run"
FORMAT_VERSION = 1


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name created by the writer itself, so the file gets the user's umask (mkstemp's would be 0600)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RUN_FILES = ("config.json", "model.safetensors", "train_state.safetensors", "train_state.json", "log.jsonl",
             "autoencoder.safetensors", "classifier.safetensors")


MARK = "diffusa"  # PNG text chunk "Software", .npz array and JSON key by which diffusa knows its own outputs


def mark() -> str:
    """The value of the mark: "diffusa VERSION"."""
    from diffusa._version import __version__

    return f"{MARK} {__version__}"


def written_by_diffusa(path: Path) -> bool:
    """Whether an existing file is one diffusa wrote (a PNG whose "Software" text says so, an .npz holding the
    `diffusa` array, a JSON object with "diffusa_version") or holds nothing (empty): what --out may replace
    without --force."""
    import zipfile

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return True
        suffix = path.suffix.lower()
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return str(im.info.get("Software", "")).startswith(MARK)
        if suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                return f"{MARK}.npy" in z.namelist()
        if suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(obj, dict) and "diffusa_version" in obj
    except (OSError, ValueError, zipfile.BadZipFile, RecursionError, SyntaxError):
        return False
    return False


def check_parents(path: Path, flag: str = "--out") -> None:
    """The nearest existing folder above `path` is a folder (an output under a file could never be written)."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise DiffusaError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def guard_output(path: str | Path, flag: str = "--out", force: bool = False) -> Path:
    """An output a user named, checked before any work: refused when it is a folder, lies under a file, is one of
    a trained folder's own files (`eval RUN --out RUN/config.json` would replace the run's config with metrics,
    and the run would be dead), or is an existing file diffusa did not write (unless `force`)."""
    path = Path(path)
    if not str(path).strip():
        raise DiffusaError(f"{flag} is empty: name a file")
    try:
        if path.is_dir():
            raise DiffusaError(f"{flag} {path} is a folder; name a file in it")
        check_parents(path, flag)
        if path.name in RUN_FILES and (path.parent / "config.json").is_file():
            raise DiffusaError(f"{flag} {path} would overwrite a file of the trained folder {path.parent}; "
                               "write elsewhere")
        if path.is_file() and not force and not written_by_diffusa(path):
            raise DiffusaError(f"{flag} {path} exists and was not written by diffusa; pass --force to replace it")
    except OSError as e:
        raise DiffusaError(f"{flag} {path}: {e.strerror or e}") from None
    return path


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # serialise in memory and write the bytes ourselves: safetensors' save_file creates its files 0600
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(save(data, metadata=metadata)))


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically: a crash leaves the old file or the new one, never half of either.
    A link or a device (`--out /dev/stdout`) is written through, not replaced."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        path.write_text(text)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_json(path: Path, obj: dict[str, Any]) -> None:
    """Save JSON atomically."""
    write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a safetensors file; errors as `load_tensors`."""
    path = Path(path)
    tensors = load_tensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            return tensors, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DiffusaError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


TMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{12}\.tmp$")  # what `atomic_write` names its temporaries


def remove_stray_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that saves killed mid-write left in `folder` (and its samples/); returns them."""
    gone = []
    for sub in (Path(folder), Path(folder) / "samples"):
        if sub.is_dir():
            for p in sub.iterdir():
                if TMP_NAME.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    gone.append(p)
    return gone


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load safetensors; a missing, truncated or foreign file is a DiffusaError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DiffusaError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DiffusaError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def weights_file(folder: Path, legacy: str) -> Path:
    """The weights of a trained folder: model.safetensors (the engine's one layout), or `legacy`, the name an
    older autoencoder or classifier folder used (the shipped text model's autoencoder, for one)."""
    path = Path(folder) / "model.safetensors"
    return path if path.is_file() or not (Path(folder) / legacy).is_file() else Path(folder) / legacy


def read_trained_meta(path: Path, fmt: str, version: int, what: str, finished: str, command: str) -> dict[str, Any]:
    """The config.json of a folder the engine trained (`what`: "autoencoder", "classifier"): its format and
    version checked, and that training finished (`finished`: the key its task writes last); `command` trains one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DiffusaError(f"{path} is not a diffusa {what}: config.json is missing")
    meta = load_json(path / "config.json")
    if meta.get("format") != fmt:
        raise DiffusaError(f"{path / 'config.json'} is not {'an' if what[0] in 'aeiou' else 'a'} {what} config "
                           f"(format {meta.get('format')!r}); train one with `{command}`")
    if finished not in meta:
        raise DiffusaError(f"{path} holds a {what} whose training has not finished: finish it with "
                           f"`{command} --resume`")
    if meta.get("format_version") != version:
        raise DiffusaError(f"{path}: {what} format version {meta.get('format_version')!r}; this diffusa reads "
                           f"version {version}")
    return meta


def load_json(path: Path) -> dict[str, Any]:
    """Load a JSON object; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DiffusaError(f"{path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffusaError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise DiffusaError(f"{path} is nested too deeply to be a diffusa file") from None
    if not isinstance(obj, dict):
        raise DiffusaError(f"{path} does not hold a JSON object")
    return obj


def load_state_dict_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, turning any missing/unexpected key or shape mismatch into one readable error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        detail = (f"missing {len(missing)} (e.g. {missing[0]})" if missing else "") + \
                 (", " if missing and extra else "") + (f"unexpected {len(extra)} (e.g. {extra[0]})" if extra else "")
        raise DiffusaError(f"{source} does not match the run's network ({detail}); is it from another model?")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise DiffusaError(f"{source}: tensor {k} has shape {tuple(v.shape)}, the network expects "
                               f"{tuple(own[k].shape)}; is it from another model?")
        if own[k].is_floating_point():  # an int8 or bool tensor would load, converted, into garbage weights
            if not v.is_floating_point():
                raise DiffusaError(f"{source}: tensor {k} is {str(v.dtype).removeprefix('torch.')}, the network's "
                                   "weights are floating point; the file is damaged or from another tool")
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise DiffusaError(f"{source}: tensor {k} holds {bad} non-finite value(s) (NaN or inf); the file is "
                                   "damaged, or it was saved from a run whose training diverged")
    module.load_state_dict(tensors)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors (for safetensors) and JSON-able hyper-parameters."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as e:
        raise DiffusaError(f"optimizer state does not match the network: {e}") from None
