"""Run configuration: nested dataclasses, read from TOML files and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusa.errors import DiffusaError

CONFIG_VERSION = 1


@dataclass
class DataConfig:
    """Which data to train on: a built-in name, a folder of images, or an .npz file."""

    name: str = "mnist5k"
    image_size: int | None = None  # resize every image to this square size (folders: bicubic; built-in, .npz: area)
    grayscale: bool | None = None  # folders: force one channel (None = decide from the files)
    latent: str | None = None  # an autoencoder folder: train and sample in its latent space (latent diffusion)
    array: str | None = None  # .npz: the array holding the examples (None: images, else x, else the only one)
    stream: str = "auto"  # folders: auto (stream above 1/8 of memory decoded) | on | off (docs/data.md)
    # super-resolution (SR3; docs/super_resolution.md): > 1 conditions each example on itself shrunk by this factor
    super_resolution: int = 0
    cond_noise_max: float | None = None  # condition augmentation: levels ~ U(0, max) (None: 0.3 with SR, else 0;
    # 0 for a residual model, whose anchor is the condition)
    cond_noise: float | None = None  # the condition's fixed level when sampling (None: COND_NOISE, 0)
    # a mask-conditioned inpainting model (Palette; docs/editing.md): conditions each example on itself with a random
    # region blanked, plus the mask; "all" or mask kinds among box, strokes, half ("": off; diffusa.inpainting)
    inpaint: str = ""
    # its share of training examples given the whole image to draw (mask all ones): the unconditional model that
    # mask guidance (guidance_scale on an inpainting model) guides against (Ho & Salimans' condition dropout)
    inpaint_dropout: float = 0.1
    standardize: str = "auto"  # points to mean 0, std 1 per coordinate: auto (unless at unit scale) | on | off


@dataclass
class ProcessConfig:
    """The forward process (DESIGN.md's currency)."""

    name: str = "ddpm"  # ddpm | vp | subvp | ve | edm | flow
    schedule: str = "cosine"  # ddpm: linear | cosine | scaled_linear | sigmoid
    num_steps: int = 1000  # ddpm: chain length T
    beta_min: float | None = None  # vp, subvp (None: 0.1)
    beta_max: float | None = None  # vp, subvp (None: 20)
    sigma_min: float | None = None  # ve (None: 0.01), edm (None: 0.002)
    sigma_max: float | None = None  # ve (None: 50), edm (None: 80)
    sigma_data: float | None = None  # edm (None: 0.5)


@dataclass
class ModelConfig:
    """The network and what it predicts; `net` overrides the network's defaults for the data."""

    kind: str = "auto"  # auto: unet for images, mlp for points
    prediction: str = "auto"  # auto (per process: PROCESS_DEFAULTS) | eps | x0 | v | velocity | edm
    learned_variance: bool = False
    conditioning: str = "none"  # none | class | text (labels, or captions; a null label / empty caption for CFG)
    text: dict[str, Any] = field(default_factory=dict)  # text: the byte transformer's width, depth, heads, max_len
    clip_x0: bool = True  # clamp predicted x0 to the data range when sampling images
    residual: bool = False  # super-resolution: predict around the upsampled condition (SRDiff; diffusa.prediction)
    net: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConsistencyTrainingConfig:
    """Improved consistency training (Song & Dhariwal 2023), read when loss.kind = "ict" (docs/distillation.md)."""

    s0: int = 10  # N(k)'s discretisation steps at the start: N = s0 + 1 levels, doubled every K' steps
    s1: int = 1280  # ... up to s1 (N = s1 + 1 levels)
    p_mean: float = -1.1  # the discrete log-normal over the levels: mean of ln sigma
    p_std: float = 2.0  # its std
    distance: str = "pseudo_huber"  # pseudo_huber (c = 0.00054 sqrt(dim)) | l2


@dataclass
class LossConfig:
    """The training objective."""

    kind: str = "simple"  # simple | vlb | hybrid (see diffusa.losses.OBJECTIVES) | ict (consistency training)
    norm: str = "mse"  # mse | l1
    weighting: str = "auto"  # auto (per process: PROCESS_DEFAULTS) | none | min_snr | sigma2 | likelihood | edm
    gamma: float = 5.0
    time_sampler: str = "auto"  # auto (per process) | uniform | lognormal (see diffusa.losses.TIME_SAMPLERS)
    p_mean: float | None = None  # lognormal: mean of ln(sigma / alpha); None: -1.2 (Karras et al. 2022, Table 1)
    # at EDM's sigma_data 0.5, for images moved by ln(sigma_data / 0.5) so the levels keep their ratio to the data's std
    p_std: float = 1.2  # lognormal: its std
    vlb_weight: float = 0.001  # hybrid: lambda in L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1)
    ict: ConsistencyTrainingConfig = field(default_factory=ConsistencyTrainingConfig)  # kind = "ict"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    steps: int | None = None  # None: 3500 for images, 3000 for points (see DATA_DEFAULTS)
    batch_size: int | None = None  # None: 64 for images, 256 for points
    lr: float | None = None  # None: 1e-3 for images, 2e-3 for points
    warmup: int = 100
    lr_decay: str = "cosine"  # constant | cosine (to lr_min_ratio * lr at the last step)
    lr_min_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # share of labels (captions) replaced by the null label (empty caption) (Ho & Salimans)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    guide_at: float = 0.25  # keep the EMA weights at this share of the steps (snapshots/step_N.safetensors): the
    # weaker model that autoguidance (Karras et al. 2024; `diffusa.guidance.AutoGuided`) guides away from; 0 = none
    seed: int = 0
    max_minutes: float = 0.0  # > 0: stop (and checkpoint) after this much training time (per session: resumes too)
    budget_minutes: float = 0.0  # > 0: train for about this long: `steps` is fitted to the speed measured during the
    # warm-up and written back (diffusa.engine.budget), so the run equals `--steps N` with the N it chose
    log_every: int = 25
    checkpoint_every: int = 200
    sample_every: int = 400  # 0 = only at the end
    sample_n: int = 64
    sampler: str = "ddim"
    sample_steps: int = 50
    threads: int = 0  # torch intra-op threads (`diffusa train --threads`); 0 = auto: the CLI's rule (diffusa.threads:
    # 1 for point data, torch's default for images); the Python API leaves torch's setting as it is
    shards: int = 0  # a CPU step's batch split over this many threads, one torch thread each (diffusa.engine.shards);
    # 0 = auto: one per torch thread for a task that allows it, 1 on a GPU, under torchrun, with fp16 or dropout
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)
    grad_checkpoint: bool = False  # recompute block activations in the backward pass to save memory


@dataclass
class RunConfig:
    """Everything a training run needs; saved into the run's config.json."""

    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Measured on this project's 2-core CPU budget (docs/demo.md): the image defaults draw clear mnist5k digits
# in about ten minutes; the point defaults fit the 2-D toys to within 3x the real-vs-real floor.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    # images: 3,500 steps of the 1.2M-parameter patch U-Net are ten minutes on a 2-core CPU with batch shards
    # (about 5.9 steps/s with the previews; docs/demo.md)
    "image": {"steps": 3500, "batch_size": 64, "lr": 1e-3},
    "points": {"steps": 3000, "batch_size": 256, "lr": 2e-3},
}


# Noise-conditioning augmentation of a super-resolution model's low-resolution input (Ho et al. 2022, Sec. 4.2;
# docs/super_resolution.md): training levels s ~ U(0, COND_NOISE_MAX), sampling at COND_NOISE, on the cosine scale
# of img2img's strength (the condition becomes cos(pi s / 2) c + sin(pi s / 2) eps). Sampling level 0, a clean
# condition: on held-out digits the 4x upscaler's judge accuracy 0.946 at 0 against 0.892 at 0.1, and the cascade's
# FD 109 at 0 against 119 at 0.1 (docs/super_resolution.md)
COND_NOISE_MAX, COND_NOISE = 0.3, 0.0
EDM_SIGMA_DATA = 0.5  # the data std EDM's defaults assume: images in [-1, 1] (Karras et al. 2022, Sec. 5, Table 1)


# What each process trains with when the config says "auto" (resolved values are saved in config.json):
# - ddpm: v-prediction, Min-SNR-5 (Hang et al. 2023), the chain's steps: this project's measured default.
# - vp / subvp: eps-prediction with lambda = sigma^2, the objective Song et al. 2021 train these SDEs with
#   (unweighted eps-MSE, the continuous DDPM loss), t ~ U(1e-3, 1).
# - ve: sigma reaches 50, so x_t is far from unit scale and eps-prediction amplifies errors 50x (Song et al.'s
#   eps + sigma^2 drew 210x the energy-distance floor on moons after 300 steps): EDM's preconditioning keeps
#   the network's input and target unit-scale at every sigma, and Karras et al. 2022 (Table 2) show their
#   loss and log-normal levels improve VE training too. On moons, log-normal levels beat Song's uniform
#   ln sigma (3.2x vs 9.6x the floor at 300 steps, 2.5x vs 4.3x at 1500); sigma up to 50 stays reachable (the
#   draws are clamped into [sigma_min, sigma_max]) and the preconditioned output extrapolates smoothly there.
# - edm: Karras et al. 2022's full recipe: F-prediction, lambda(sigma), ln sigma ~ N(-1.2, 1.2^2).
# - flow: velocity regression with unit weight, t ~ U(0, 1) (Lipman et al. 2023; Liu et al. 2022).
PROCESS_DEFAULTS: dict[str, dict[str, str]] = {
    "ddpm": {"prediction": "v", "weighting": "min_snr", "time_sampler": "uniform"},
    "vp": {"prediction": "eps", "weighting": "sigma2", "time_sampler": "uniform"},
    "subvp": {"prediction": "eps", "weighting": "sigma2", "time_sampler": "uniform"},
    "ve": {"prediction": "edm", "weighting": "edm", "time_sampler": "lognormal"},
    "edm": {"prediction": "edm", "weighting": "edm", "time_sampler": "lognormal"},
    "flow": {"prediction": "velocity", "weighting": "none", "time_sampler": "uniform"},
}


# The sampler, steps and grid (None: the sampler's default) each process's point runs draw with unless told (written
# into config.json as "sampling" when a point run is trained; pipelines.sampling reads it): of DPM-Solver++(2M) and
# (3M), UniPC and DPM-Solver++(2M) SDE at 20 steps, each on the default grid, the one uniform in log-SNR over the
# process's levels and the one over the levels of unit-scale data ("logsnr-unit"), the best geometric mean of energy
# distance / floor over eight 2-D sets, the built-in toys and four user-like arrays (other scales, narrow and wide
# modes), a tie within 5% going to the smaller worst case (`python benchmarks/toys.py`, docs/results/toys.md): the SDE
# solver on "logsnr-unit" for every process (within 2x the floor on 45 of the 48 cells in that one draw; on all 48 over
# 24 seeds with the grid's top at 20). At 10 steps UniPC on the same grid is the better choice (docs/benchmarks.md,
# the 2-D points section).
POINT_SAMPLING: dict[str, tuple[str, int, str | None]] = {
    name: ("dpmpp_2m_sde", 20, "logsnr-unit") for name in ("ddpm", "vp", "subvp", "ve", "edm", "flow")
}
# ... and at 10 steps or fewer (config.json "sampling" "few_steps"; runs.few_steps_sampling), by the same rule applied
# to the scores at 10 network evaluations: UniPC on "logsnr-unit" for every process (over 24 seeds within 2x the
# floor on all 48 cells; in one draw its worst set 3.5-4.8x where the SDE solver at 10 steps is 13-19x;
# docs/benchmarks.md).
POINT_FEW_STEPS: dict[str, tuple[str, int, str | None]] = {
    name: ("unipc", 10, "logsnr-unit") for name in ("ddpm", "vp", "subvp", "ve", "edm", "flow")
}


def auto_choice(process_name: str, key: str) -> str:
    """The per-process default of `key` (prediction | weighting | time_sampler)."""
    if process_name not in PROCESS_DEFAULTS:
        raise DiffusaError(f"unknown process {process_name!r}; known: {', '.join(PROCESS_DEFAULTS)}")
    return PROCESS_DEFAULTS[process_name][key]


def resolve_process_defaults(cfg: RunConfig) -> RunConfig:
    """Replace every "auto" prediction, weighting and time sampler with the process's default (in place)."""
    name = cfg.process.name
    for section, key in ((cfg.model, "prediction"), (cfg.loss, "weighting"), (cfg.loss, "time_sampler")):
        if getattr(section, key) == "auto":
            setattr(section, key, auto_choice(name, key))
    return cfg


def resolve_defaults(cfg: RunConfig, data_kind: str) -> RunConfig:
    """Fill the training settings left as None with the defaults for this kind of data, and the "auto"
    prediction / weighting / time sampler with the process's."""
    for key, value in DATA_DEFAULTS[data_kind].items():
        if getattr(cfg.train, key) is None:
            setattr(cfg.train, key, value)
    dc = cfg.data  # condition augmentation (Ho et al. 2022): on by default for super-resolution only, and not for a
    if dc.cond_noise_max is None:  # residual model, whose anchor is the condition itself (a noised one moves it)
        dc.cond_noise_max = COND_NOISE_MAX if dc.super_resolution and not cfg.model.residual else 0.0
    if dc.cond_noise is None:
        dc.cond_noise = min(COND_NOISE, dc.cond_noise_max)
    if cfg.loss.p_mean is None:  # points keep -1.2 at their sigma_data 1, the recipe measured for them (issue 17)
        pc = cfg.process
        moved = data_kind != "points" and pc.name == "edm" and pc.sigma_data
        cfg.loss.p_mean = default_p_mean(pc.sigma_data if moved else EDM_SIGMA_DATA)
    return resolve_process_defaults(cfg)


def default_p_mean(sigma_data: float = EDM_SIGMA_DATA) -> float:
    """EDM's log-normal training levels, ln sigma ~ N(-1.2, 1.2^2) (Karras et al. 2022, Table 1), were set for data of
    std sigma_data = 0.5; for another sigma_data (e.g. a residual upscaler's, diffusa.prediction) the mean moves by
    ln(sigma_data / 0.5), so sigma / sigma_data, the ratio EDM's preconditioning sees, keeps its distribution."""
    return round(-1.2 + math.log(sigma_data / EDM_SIGMA_DATA), 6)


def _merge(obj: Any, values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if not dataclasses.is_dataclass(obj) or key not in {f.name for f in dataclasses.fields(obj)}:
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise DiffusaError(f"unknown config key {where}{key!r}; known here: {known}")
        current = getattr(obj, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise DiffusaError(f"config key {where}{key} must be a finite number, got {value}")
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise DiffusaError(f"config key {where}{key} must be a table")
            _merge(current, value, f"{where}{key}.")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise DiffusaError(f"config key {where}{key} must be a table")
            current.update(value)
        else:
            setattr(obj, key, _coerce(current, value, f"{where}{key}", _declared(type(obj), key)))


def _declared(cls: type, key: str) -> tuple[type, ...]:
    """The types a dataclass field declares (`int | None` -> (int, NoneType))."""
    hint = typing.get_type_hints(cls)[key]
    return typing.get_args(hint) or (hint,)


def _coerce(current: Any, value: Any, name: str, declared: tuple[type, ...]) -> Any:
    """`value` as the field's type: ints for integer fields (1.0 -> 1), floats for float fields, None only where
    the field allows it (a setting left to its default); anything else one DiffusaError naming the key."""
    if value is None:
        if type(None) in declared:
            return None
        raise DiffusaError(f"config key {name} must not be empty (null)")
    if current is None:  # a field whose default is None: coerce as its declared type (int | None -> int)
        kinds = [t for t in declared if t is not type(None)]
        if len(kinds) != 1:
            return value
        current = kinds[0]()
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise DiffusaError(f"config key {name} must be true or false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise DiffusaError(f"config key {name} must be an integer, got {value!r}")
    if isinstance(current, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):  # e.g. --set data.inpaint=true (TOML's boolean)
        raise DiffusaError(f"config key {name} must be text, got {value!r} (in --set, quote it: {name}='...')")
    if type(current) is not type(value):
        raise DiffusaError(f"config key {name} must be {type(current).__name__}, got {value!r}")
    return value


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=1e-3' -> {'train': {'lr': 0.001}}; the value is read as TOML, else as a string."""
    if "=" not in text:
        raise DiffusaError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


# (section.key, integer?, low, high, low included?, high included?): the numbers outside [train] (whose table is
# the engine's SETTINGS) checked when a config is read; process settings are checked by diffusa.process
RANGES: tuple[tuple[str, bool, float, float, bool, bool], ...] = (
    ("loss.gamma", False, 0, math.inf, False, False),
    ("loss.p_std", False, 0, math.inf, False, False),
    ("loss.vlb_weight", False, 0, math.inf, True, False),
    ("data.image_size", True, 1, 8192, True, True),
    ("data.super_resolution", True, 0, 64, True, True),
    ("data.cond_noise_max", False, 0, 1, True, True),
    ("data.cond_noise", False, 0, 1, True, True),
    ("data.inpaint_dropout", False, 0, 1, True, False),
)


def check_range(name: str, value: Any, integer: bool, low: float, high: float, low_in: bool, high_in: bool) -> None:
    """One setting: of its type (an integer, or a number), finite, in its range; else one DiffusaError naming it."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise DiffusaError(f"{name} must be {kind}, got {value!r}")
    inside = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
    if not math.isfinite(value) or not inside:
        span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise DiffusaError(f"{name} must be {kind} in {span}, got {value}")


CONDITIONINGS = ("none", "class", "text")
STANDARDIZE = ("auto", "on", "off")  # data.standardize (diffusa.standardize)


def check_config(cfg: RunConfig) -> RunConfig:
    """The RANGES of a config (None: left to its default), and the names no builder checks when sampling."""
    if cfg.model.conditioning not in CONDITIONINGS:
        raise DiffusaError(f"unknown model.conditioning {cfg.model.conditioning!r}; known: {', '.join(CONDITIONINGS)}")
    if cfg.data.standardize not in STANDARDIZE:
        raise DiffusaError(f"unknown data.standardize {cfg.data.standardize!r}; known: {', '.join(STANDARDIZE)}")
    if cfg.model.text and cfg.model.conditioning != "text":
        raise DiffusaError(f"model.text sets the text encoder of a text-conditional model; this model's "
                           f"conditioning is {cfg.model.conditioning!r} (set model.conditioning=\"text\")")
    for key, *rule in RANGES:
        section, field_name = key.split(".")
        value = getattr(getattr(cfg, section), field_name)
        if value is not None:
            check_range(key, value, *rule)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then a saved config dict `base`, then a TOML file, then `--set` overrides."""
    cfg = RunConfig()
    if base:
        _merge(cfg, base, "")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DiffusaError(f"config file {p} does not exist")
        try:
            _merge(cfg, tomllib.loads(p.read_text(encoding="utf-8")), "")
        except tomllib.TOMLDecodeError as e:
            raise DiffusaError(f"config file {p} is not valid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise DiffusaError(f"config file {p} is not UTF-8 text: {e.reason}") from None
        except RecursionError:
            raise DiffusaError(f"config file {p} is nested too deeply") from None
    for text in overrides or []:
        _merge(cfg, parse_override(text), "")
    return check_config(cfg)
