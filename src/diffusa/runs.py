"""A run folder: build the network, process and Denoiser from a config, save and load them; what config.json
records beside them (a recommended sampler, a guided student's guidance scales: `GuidanceRange`).

Layout: `config.json` (format, version, the RunConfig, the data shape, the network's full config),
`model.safetensors` (EMA weights), `train_state.safetensors` + `train_state.json` (for --resume).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusa._version import __version__
from diffusa.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_json,
    load_state_dict_strict,
    load_tensors,
)
from diffusa.cond import Cond
from diffusa.config import RunConfig, auto_choice, load_config
from diffusa.errors import DiffusaError
from diffusa.guidance import check_scale, null_captions, null_labels
from diffusa.inpainting import null_mask_cond
from diffusa.limits import ACTIVATION_FLOATS, check_bytes, tensor_bytes
from diffusa.nets import NetRequest, accepts, build_network, network_config, network_kind
from diffusa.prediction import Denoiser
from diffusa.process import Process, process_from_dict

DEFAULT_TEXT_SCALE = 3.0  # classifier-free guidance of a text model (docs/guidance.md: accuracy against diversity)


def network_spec(cfg: RunConfig, data_shape: tuple[int, ...], num_classes: int = 0,
                 cond_channels: int = 0, data_kind: str | None = None,
                 image_level: bool = False) -> tuple[str, dict[str, Any]]:
    """The network kind and its full config for data of this shape and kind ("image" | "points", as the dataset
    declares it; None: read from the shape) — the kind's defaults, then cfg.model.net:
    diffusa.nets.registry.network_config. cond_channels > 0: an image of that many channels is concatenated to
    the network's input (an image-conditioned U-Net); image_level: with its augmentation level (diffusa.superres)."""
    request = NetRequest(tuple(data_shape), data_kind=data_kind, num_classes=num_classes,
                         learned_variance=cfg.model.learned_variance,
                         conditioning=cfg.model.conditioning, cond_channels=cond_channels,
                         image_level=image_level, net=cfg.model.net,
                         text=cfg.model.text)
    return network_config(cfg.model.kind, request)


def build_process(cfg: RunConfig) -> Process:
    """The forward process named in the config."""
    p = cfg.process
    params = {k: getattr(p, k) for k in ("beta_min", "beta_max", "sigma_min", "sigma_max", "sigma_data")
              if getattr(p, k) is not None}
    if p.name == "ddpm":
        if params:
            raise DiffusaError(f"process.{next(iter(params))} does not apply to the ddpm chain (its settings: "
                               "schedule, num_steps)")
        return process_from_dict({"name": "ddpm", "schedule": p.schedule, "num_steps": p.num_steps})
    return process_from_dict({"name": p.name, **params})


def make_denoiser(net: torch.nn.Module, process: Process, cfg: RunConfig, image: bool) -> Denoiser:
    """Wrap a network with the run's process and parameterization ("auto" resolved for the process)."""
    prediction = cfg.model.prediction
    if prediction == "auto":
        prediction = auto_choice(cfg.process.name, "prediction")
    return Denoiser.from_network(net, process, prediction, learned_variance=cfg.model.learned_variance,
                                 clip_x0=1.0 if (image and cfg.model.clip_x0) else None,
                                 residual=bool(cfg.model.residual))


def run_metadata(cfg: RunConfig, data_shape: tuple[int, ...], kind: str, spec: dict[str, Any],
                 data_kind: str) -> dict[str, Any]:
    """The content of config.json."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "diffusa_version": __version__,
            "config": cfg.to_dict(), "data_shape": list(data_shape), "data_kind": data_kind,
            "network": {"kind": kind, "config": spec}, "process": build_process(cfg).to_dict()}


@dataclass
class Run:
    """A trained model loaded from a run folder."""

    path: Path
    config: RunConfig
    meta: dict[str, Any]
    net: torch.nn.Module
    denoiser: Denoiser
    decoder: Any = None  # model space -> data: latents -> images (LatentDecoder), standardised points -> units
    weights: str = "model.safetensors"  # the weights file read, relative to path (a snapshot: snapshots/step_N...)

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as data: decoded to images for a latent model, to the data's units for standardised points."""
        return self.decoder(x) if self.decoder is not None else x

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["data_shape"])

    @property
    def is_image(self) -> bool:
        return self.meta["data_kind"] == "image"

    @property
    def is_text(self) -> bool:
        """A text-conditional model (cond = diffusa.text.tokenize(prompts))."""
        return "text" in accepts(self.meta["network"]["kind"])

    @property
    def cond_channels(self) -> int:
        """Channels of the image an image-conditioned model concatenates to its input; 0 for none."""
        net = self.meta["network"]
        return network_kind(net["kind"]).image_channels(net["config"])

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional model (its null label is this number); 0 if unconditional."""
        return int(self.meta["network"]["config"].get("num_classes", 0))

    @property
    def recommended(self) -> tuple[str, int] | None:
        """(sampler, steps) measured best for this model (config.json's "sampling"); None without a recommendation."""
        return recommended_sampling(self.meta, self.path / "config.json")

    @property
    def recommended_guidance(self) -> float | None:
        """The guidance scale measured best for this model (config.json "sampling" "guidance_scale"), which a draw
        uses where it names none (`pipelines.request.resolve`); None without one."""
        scale = self.meta.get("sampling", {}).get("guidance_scale")
        return None if scale is None else float(scale)

    @property
    def recommended_autoguidance(self) -> tuple[float, Path | None] | None:
        """(w, guide) of autoguidance measured best for this model with its recommended sampler (config.json
        "sampling" "autoguidance" and "guide"; `Pipeline.autoguided`): the guide a path in the model's folder, or
        None for the snapshot the run kept (`load_guide`); None without a recommendation."""
        entry = self.meta.get("sampling", {})
        if entry.get("autoguidance") is None:
            return None
        guide = entry.get("guide")
        return float(entry["autoguidance"]), None if guide is None else self.path / guide

    @property
    def mask_guided(self) -> bool:
        """An unconditional mask-conditioned inpainting model trained with mask dropout (data.inpaint_dropout > 0,
        as config.json records it; runs from before the setting have none): guidance_scale guides it against the
        whole image to draw (`diffusa.inpainting.null_mask_cond`)."""
        data = self.meta["config"].get("data", {})
        return bool(data.get("inpaint")) and float(data.get("inpaint_dropout") or 0) > 0 and not (
            self.is_text or self.num_classes)

    def null_cond(self) -> Callable[[Any], Cond]:
        """Classifier-free guidance's unconditional conditioning, as a function of the conditional one: the empty
        caption of a text model (`diffusa.guidance.null_captions`), the whole image to draw for a mask-guided
        inpainting model (`diffusa.inpainting.null_mask_cond`), else the null label `num_classes`
        (`diffusa.guidance.null_labels`)."""
        if self.is_text:
            return null_captions(self.net)
        if self.mask_guided:
            return null_mask_cond
        return lambda c: null_labels(c, self.num_classes)


def read_run_meta(path: Path) -> dict[str, Any]:
    """Read and validate a run's config.json."""
    path = Path(path)
    if not path.is_dir():
        raise DiffusaError(f"run folder {path} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DiffusaError(f"{path} is not a diffusa run: config.json is missing")
    meta = load_json(cfg_file)
    if meta.get("format") != FORMAT:
        raise DiffusaError(f"{cfg_file} is not a diffusa run config (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DiffusaError(f"{cfg_file} has format version {meta.get('format_version')!r}; this diffusa "
                           f"({__version__}) reads version {FORMAT_VERSION}")
    for key in ("config", "data_shape", "data_kind", "network"):
        if key not in meta:
            raise DiffusaError(f"{cfg_file} lacks {key!r}; the file is damaged")
    check_run_meta(meta, cfg_file)
    return meta


DATA_KINDS = {"image": 3, "points": 1}  # data kind -> rank of one example


def check_run_meta(meta: dict[str, Any], cfg_file: Path) -> None:
    """The shapes and tables of a config.json, before anything is built from them: one DiffusaError naming the
    file and the key (a hand-edited or damaged file must not reach torch as a negative or huge shape)."""
    def bad(key: str, what: str) -> DiffusaError:
        return DiffusaError(f"{cfg_file}: {key} {what}, got {meta.get(key)!r:.80}; the file is damaged")

    kind = meta["data_kind"]
    if kind not in DATA_KINDS:
        raise bad("data_kind", f"must be one of {', '.join(DATA_KINDS)}")
    shape = meta["data_shape"]
    if not isinstance(shape, list) or len(shape) != DATA_KINDS[kind] or \
            any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise bad("data_shape", f"must be {DATA_KINDS[kind]} positive integer(s) for {kind} data")
    check_bytes(f"{cfg_file}: one example of data_shape {shape}", tensor_bytes(shape, ACTIVATION_FLOATS))
    for key in ("config", "network"):
        if not isinstance(meta[key], dict):
            raise bad(key, "must be a table")
    net = meta["network"]
    if not isinstance(net.get("kind"), str) or not isinstance(net.get("config"), dict):
        raise DiffusaError(f"{cfg_file}: network must hold a kind (a name) and a config (a table); the file is "
                           "damaged")
    if "process" in meta and not isinstance(meta["process"], dict):
        raise bad("process", "must be a table")
    recommended_sampling(meta, cfg_file)


SAMPLING_KEYS = ("sampler", "steps", "spacing", "eta", "guidance_scale", "autoguidance", "guide", "few_steps", "why")
FIX_ENTRY = "correct or remove the entry"  # how every refusal of a "sampling" entry ends
FEW_STEPS_KEYS = ("max_steps", "sampler", "spacing", "eta")


def recommended_sampling(meta: Mapping[str, Any], cfg_file: str | Path = "config.json") -> tuple[str, int] | None:
    """config.json's optional "sampling" entry, {"sampler": NAME, "steps": K, "spacing": GRID, "eta": ETA,
    "guidance_scale": W, "autoguidance": W, "guide": PATH, "few_steps": {...}, "why": "what was measured"} (all but
    sampler and steps optional): the sampler, steps, grid, stochasticity and guidance measured best for this model,
    which a draw uses where it is not told (`pipelines.sampling.resolve_sampling`, `resolve_recommended`; grid, eta
    and autoguidance only with the recommended sampler, `Run.recommended_autoguidance`; the guidance scale with any,
    `Run.recommended_guidance`, `check_recommended_guidance`); guide: autoguidance's weaker model shipped in the
    model's folder (a run folder or a weights file, relative to it; `load_guide`); few_steps (`few_steps_sampling`)
    the sampler for draws of few steps. (sampler, steps), or None without the entry; one DiffusaError naming the
    file and the key for an entry that is not one (checked when the run is read)."""
    if "sampling" not in meta:
        return None
    from diffusa.limits import MAX_SAMPLING_STEPS

    entry = meta["sampling"]
    fix = FIX_ENTRY
    if not isinstance(entry, dict):
        raise DiffusaError(f"{cfg_file}: sampling must be a table {{\"sampler\": NAME, \"steps\": K, \"spacing\": GRID "
                           f"(optional), \"eta\": ETA (optional), \"guidance_scale\": W (optional), \"few_steps\": "
                           f"{{...}} (optional), \"why\": TEXT}}, "
                           f"got {entry!r:.80}; {fix}")
    _check_keys(entry, SAMPLING_KEYS, "sampling", cfg_file)
    sampler, steps, why = entry.get("sampler"), entry.get("steps"), entry.get("why")
    _check_choice(entry, "sampling", cfg_file)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_SAMPLING_STEPS:
        raise DiffusaError(f"{cfg_file}: sampling.steps must be an integer in 1..{MAX_SAMPLING_STEPS}, "
                           f"got {steps!r:.80}; {fix}")
    few = entry.get("few_steps")
    if few is not None:
        if not isinstance(few, dict):
            raise DiffusaError(f"{cfg_file}: sampling.few_steps must be a table {{\"max_steps\": K, \"sampler\": NAME, "
                               f"\"spacing\": GRID (optional), \"eta\": ETA (optional)}}, got {few!r:.80}; {fix}")
        _check_keys(few, FEW_STEPS_KEYS, "sampling.few_steps", cfg_file)
        top = few.get("max_steps")
        if steps == 1:  # no draw has fewer steps than one: the table could never apply
            raise DiffusaError(f"{cfg_file}: sampling.few_steps is for draws of fewer steps than sampling.steps, "
                               f"which is 1 (raise sampling.steps to use it); {fix}")
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top < steps:
            raise DiffusaError(f"{cfg_file}: sampling.few_steps.max_steps must be an integer in 1..{steps - 1} (below "
                               f"sampling.steps), got {top!r:.80}; {fix}")
        _check_choice(few, "sampling.few_steps", cfg_file)
    for key in ("guidance_scale", "autoguidance"):
        scale = entry.get(key)
        if scale is None:
            continue
        try:  # the one rule for guidance scales (finite, a real number), said of the file's key; and > 0
            if isinstance(scale, str) or check_scale(scale) <= 0:
                raise DiffusaError("not > 0")
        except DiffusaError:
            raise DiffusaError(f"{cfg_file}: sampling.{key} must be a finite number > 0, got {scale!r:.80}; "
                               f"{fix}") from None
    guide = entry.get("guide")
    if guide is not None:
        if entry.get("autoguidance") is None:
            raise DiffusaError(f"{cfg_file}: sampling.guide names autoguidance's weaker model, but the entry has no "
                               f"sampling.autoguidance (its w); {fix}")
        if not guide_inside(guide):
            raise DiffusaError(f"{cfg_file}: sampling.guide must be a path inside the model's folder (relative, "
                               f"without '..'), got {guide!r:.80}; {fix}")
    if why is not None and not isinstance(why, str):
        raise DiffusaError(f"{cfg_file}: sampling.why must be text (what was measured), got {why!r:.80}; {fix}")
    return sampler, steps


def guide_inside(guide: Any) -> bool:
    """Whether config.json's "sampling" "guide" names a path inside the model's folder as text can: a non-empty
    relative path without '..' or NUL (`check_recommended_guide` then resolves links, on the files)."""
    return isinstance(guide, str) and bool(guide) and "\x00" not in guide and not Path(guide).is_absolute() and (
        ".." not in Path(guide).parts)


def few_steps_sampling(meta: Mapping[str, Any], steps: int) -> dict[str, Any] | None:
    """The "sampling" entry's "few_steps" table when it applies at `steps` (steps <= its max_steps), else None: a
    sampler measured best at few steps where the main recommendation is measured at more (2-D point runs: UniPC on
    the logsnr-unit grid at 10 steps, DPM-Solver++(2M) SDE at 20; benchmarks/toys.py). Checked by
    `recommended_sampling`, which reads the entry first."""
    entry = meta.get("sampling")
    few = entry.get("few_steps") if isinstance(entry, dict) else None
    return few if few is not None and steps <= few["max_steps"] else None


def _check_keys(entry: Mapping[str, Any], keys: tuple[str, ...], name: str, cfg_file: str | Path) -> None:
    unknown = sorted(str(k) for k in entry if k not in keys)
    if unknown:
        raise DiffusaError(f"{cfg_file}: {name}.{unknown[0]:.40} is not a key of it (its keys: {', '.join(keys)}); "
                           f"{FIX_ENTRY}")


def _check_choice(entry: Mapping[str, Any], name: str, cfg_file: str | Path) -> None:
    """A recommendation's sampler, and its optional grid and eta, each one line naming the file and the key."""
    from diffusa.samplers import CHAIN_SPACINGS, LEVEL_SPACINGS, SAMPLERS, sampler_options
    from diffusa.samplers.common import check_eta

    sampler = entry.get("sampler")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise DiffusaError(f"{cfg_file}: {name}.sampler must be a sampler's name ({', '.join(sorted(SAMPLERS))}), "
                           f"got {sampler!r:.80}; {FIX_ENTRY}")
    spacing = entry.get("spacing")
    if spacing is not None and spacing not in LEVEL_SPACINGS + CHAIN_SPACINGS:
        raise DiffusaError(f"{cfg_file}: {name}.spacing must be a grid's name "
                           f"({', '.join(LEVEL_SPACINGS + CHAIN_SPACINGS)}), got {spacing!r:.80}; {FIX_ENTRY}")
    eta = entry.get("eta")
    if eta is None:
        return
    if "eta" not in sampler_options(sampler):
        raise DiffusaError(f"{cfg_file}: {name}.eta is an option of a stochastic sampler (ddim, euler_ancestral, "
                           f"dpmpp_2m_sde), not of {sampler}; {FIX_ENTRY}")
    try:  # the samplers' own rule (finite, >= 0), said of the file's key
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise DiffusaError("not a number")
        check_eta(float(eta))
    except DiffusaError:
        raise DiffusaError(f"{cfg_file}: {name}.eta must be a finite number >= 0, got {eta!r:.80}; "
                           f"{FIX_ENTRY}") from None


@dataclass(frozen=True)
class GuidanceRange:
    """The guidance scales a guided student was distilled on (w ~ U[low, high] per example), and the one a draw
    uses where it names none: config.json's "guidance" table {"min", "max", "default"}."""

    low: float
    high: float
    default: float

    @classmethod
    def of(cls, scales: Any, name: str = "guidance range") -> GuidanceRange:
        """From (w_min, w_max), 0 <= w_min <= w_max, both finite; the default is DEFAULT_TEXT_SCALE (3, the text
        pipeline's) clamped into the range. `name`: what a DiffusaError calls the scales."""
        if not isinstance(scales, (list, tuple)) or len(scales) != 2:
            raise DiffusaError(f"{name} must be two guidance scales W_MIN,W_MAX, got {scales!r}")
        low, high = (check_scale(w, name) for w in scales)
        if not 0 <= low <= high:
            raise DiffusaError(f"{name} must be 0 <= W_MIN <= W_MAX, got {low:g},{high:g}")
        return cls(low, high, min(max(DEFAULT_TEXT_SCALE, low), high))

    def check(self, scale: Any, name: str = "guidance_scale") -> float:
        """`scale` as a float (None: the default); a DiffusaError when it is outside the range."""
        if scale is None:
            return self.default
        w = check_scale(scale, name)
        if not self.low <= w <= self.high:
            raise DiffusaError(f"{name} {w:g} is outside {self.low:g}..{self.high:g}, the guidance scales this "
                               f"student was distilled on; give one inside (default {self.default:g})")
        return w

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n scales w ~ U[low, high] (float32, on the CPU)."""
        return self.low + (self.high - self.low) * torch.rand(n, generator=generator)

    def table(self) -> dict[str, float]:
        """What config.json records ("guidance")."""
        return {"min": self.low, "max": self.high, "default": self.default}

    @classmethod
    def from_table(cls, table: Any, where: Any = "config.json") -> GuidanceRange:
        """Rebuild from config.json's "guidance" table; a damaged one is one DiffusaError naming `where`."""
        bad = DiffusaError(f"{where}: guidance must be a table {{\"min\": W, \"max\": W, \"default\": W}} with 0 <= "
                           f"min <= default <= max, got {table!r:.80}; the file is damaged")
        if not isinstance(table, dict) or set(table) != {"min", "max", "default"}:
            raise bad
        try:
            rng, default = cls.of((table["min"], table["max"])), check_scale(table["default"])
        except DiffusaError:
            raise bad from None
        if not rng.low <= default <= rng.high:
            raise bad
        return cls(rng.low, rng.high, default)


def load_run(path: str | Path, device: str | torch.device = "cpu", weights: str = "model.safetensors") -> Run:
    """Load a run folder: config, network with its EMA weights, and the Denoiser."""
    path = Path(path)
    meta = read_run_meta(path)
    cfg = load_config(base=meta["config"])
    net = build_network(meta["network"]["kind"], meta["network"]["config"])
    load_state_dict_strict(net, load_tensors(path / weights), path / weights)
    net.to(device).eval()
    process = process_from_dict(meta["process"]) if "process" in meta else build_process(cfg)
    decoder = None
    if "latent" in meta:
        from diffusa.latent import LatentDecoder

        decoder = LatentDecoder(meta["latent"], path)
    elif "standardize" in meta:  # points trained standardised: samples back in the data's units
        from diffusa.standardize import Destandardize

        decoder = Destandardize(meta["standardize"], meta["data_shape"][0], str(path / "config.json"))
    den = make_denoiser(net, process, cfg, meta["data_kind"] == "image" and decoder is None)
    if "consistency" in meta:  # a distilled student: its x0 is its consistency function's (docs/distillation.md)
        from diffusa.consistency import ConsistencyDenoiser

        den = ConsistencyDenoiser.from_table(den, meta["consistency"], path / "config.json")
    check_recommended_grid(den, meta, path / "config.json")
    run = Run(path, cfg, meta, net, den, decoder, str(weights))
    check_recommended_guidance(run)
    check_recommended_guide(run)
    return run


def check_recommended_guide(run: Run) -> None:
    """A recommended autoguidance (config.json "sampling" "autoguidance") has a guide to draw with, checked when the
    model is read rather than at every draw: its "guide", a run folder (config.json and model.safetensors) or a
    .safetensors file inside the model's folder, not the model itself and not a link out of the folder; without
    one, the snapshot the run kept at `train.guide_at` (`load_guide`)."""
    from diffusa.engine.loop import guide_step

    rec = run.recommended_autoguidance
    if rec is None:
        return
    home, cfg_file = Path(run.path).resolve(), run.path / "config.json"
    if rec[1] is None:
        step = guide_step(run.config.train)
        if step is None or not (run.path / "snapshots" / f"step_{step}.safetensors").is_file():
            raise DiffusaError(f"{cfg_file}: sampling.autoguidance names no sampling.guide and the model kept no "
                               f"snapshot at train.guide_at to guide it; name a guide or {FIX_ENTRY}")
        return
    name = run.meta["sampling"]["guide"]
    target = rec[1].resolve()
    if not target.is_relative_to(home):
        why = "leads out of the model's folder (a link?)"
    elif target in (home, (run.path / "model.safetensors").resolve()):
        why = "is the model itself, which guides nothing (twice the calls for the same samples)"
    elif target.is_dir():
        why = None if (target / "config.json").is_file() and (target / "model.safetensors").is_file() else (
            "is a folder without config.json and model.safetensors")
    else:
        why = None if target.suffix == ".safetensors" and target.is_file() else (
            "is neither a run folder nor a .safetensors file in the model's folder")
    if why is not None:
        raise DiffusaError(f"{cfg_file}: sampling.guide {name!r:.80} {why}; {FIX_ENTRY}")


def check_recommended_guidance(run: Run) -> None:
    """A recommended guidance scale (config.json "sampling" "guidance_scale") only on a model classifier-free
    guidance applies to: a text or class-conditional model, or a mask-guided inpainting model (`Run.mask_guided`);
    not on a guided student, whose default is its "guidance" table's."""
    if run.recommended_guidance is None:
        return
    inpaint = bool(run.meta["config"].get("data", {}).get("inpaint"))
    why = ("a guided student takes its default scale from config.json \"guidance\" \"default\""
           if "guidance" in run.meta else None if run.is_text or run.num_classes or run.mask_guided
           else "it was trained without mask dropout (data.inpaint_dropout 0, or from before the setting), so it has "
                "no unconditional branch to guide against" if inpaint
           else "the model has no conditional and unconditional branches to mix")
    if why is not None:
        raise DiffusaError(f"{run.path / 'config.json'}: sampling.guidance_scale does not suit this model: {why}; "
                           f"{FIX_ENTRY}")


def load_guide(run: Run, spec: str | Path | None = None) -> Run:
    """The weaker model that autoguidance (Karras et al. 2024; `diffusa.guidance.AutoGuided`) guides `run` away
    from, on the run's device. `spec` None: the model's own guide (config.json "sampling" "guide",
    `Run.recommended_autoguidance`), else the snapshot the run kept at `train.guide_at` of its steps; "step_N" or
    N: its snapshots/step_N.safetensors; a .safetensors file: those weights in the run's network; else another run
    folder or shipped model with the same data shape and conditioning (a smaller or shorter-trained one)."""
    from diffusa.engine.loop import guide_step
    from diffusa.shipped import run_path

    device = next(run.net.parameters()).device
    rec = run.recommended_autoguidance
    if spec is None and rec is not None and rec[1] is not None:
        spec = rec[1]
    if spec is None:
        from diffusa.engine.budget import UNFITTED_STEPS

        if run.config.train.steps == UNFITTED_STEPS:
            raise DiffusaError("autoguidance: this run stopped before its --budget fixed its steps, so it kept no "
                               "snapshot: resume it (diffusa train --out RUN --resume) or name a guide")
        step = guide_step(run.config.train)
        if step is None:
            raise DiffusaError("autoguidance: this run kept no snapshot to guide it (train.guide_at = 0): name a guide")
        spec = f"step_{step}"
    text = str(spec)
    name = text.removeprefix("step_")
    if name.isdecimal() and not Path(text).exists():  # isdecimal: int() refuses "²", which isdigit accepts
        weights = run.path / "snapshots" / f"step_{int(name)}.safetensors"
        if not weights.is_file():
            kept = sorted((p.stem for p in (run.path / "snapshots").glob("step_*.safetensors")),
                          key=lambda k: int(k[5:]) if k[5:].isdigit() else -1)
            raise DiffusaError(f"autoguidance: this model has no snapshot {weights.stem} (kept: "
                               f"{', '.join(kept) or 'none'}); name a snapshot it kept or another run as the guide")
        return load_run(run.path, device, weights=str(weights.relative_to(run.path)))
    if text.endswith(".safetensors"):
        if not Path(text).is_file():
            raise DiffusaError(f"autoguidance: weights file {text:.200} does not exist")
        return load_run(run.path, device, weights=str(Path(text).resolve()))
    guide = load_run(run_path(spec), device)
    mine = (run.data_shape, run.is_text, run.num_classes, run.cond_channels, "latent" in run.meta)
    theirs = (guide.data_shape, guide.is_text, guide.num_classes, guide.cond_channels, "latent" in guide.meta)
    if mine != theirs:
        raise DiffusaError(f"autoguidance: {text:.200} draws {list(guide.data_shape)} or is conditioned otherwise than "
                           f"this model ({list(run.data_shape)}); a guide must model the same data")
    return guide


def check_recommended_grid(den: Denoiser, meta: dict[str, Any], cfg_file: Path) -> None:
    """A recommendation (config.json's "sampling") the model can sample with: its grid is made once (cheap), so
    that e.g. more steps than a discrete chain's training steps are refused naming the file and the key, when the
    run is read rather than at every draw."""
    rec = recommended_sampling(meta, cfg_file)
    if rec is None:
        return
    from diffusa.samplers import make_grid

    entry = meta["sampling"]
    few = entry.get("few_steps")
    choices = [("sampling", rec[0], rec[1], entry.get("spacing"))]
    if few is not None:
        choices.append(("sampling.few_steps", few["sampler"], few["max_steps"], few.get("spacing")))
    for name, sampler, steps, spacing in choices:
        try:
            make_grid(den, steps, spacing, sampler)
        except DiffusaError as e:
            grid = "" if spacing is None else f", spacing {spacing}"
            raise DiffusaError(f"{cfg_file}: {name} (sampler {sampler}, steps {steps}{grid}) does not suit this model: "
                               f"{str(e).removeprefix('--')}; {FIX_ENTRY}") from None


def init_weights(spec: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the weights file, the run's config.json) of a run or shipped model to fine-tune from (`--init`)."""
    from diffusa.shipped import run_path

    path = run_path(spec)
    meta = read_run_meta(path)
    if "latent" in meta:  # the autoencoder named relative to that run: make the name absolute for the new run
        from diffusa.latent import autoencoder_path

        meta["latent"]["autoencoder"] = str(autoencoder_path(meta["latent"], path).resolve())
        meta["config"]["data"]["latent"] = meta["latent"]["autoencoder"]
    return path / "model.safetensors", meta
