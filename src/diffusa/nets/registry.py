"""The one registry of network kinds (DESIGN.md "Layers": nets/).

A kind ("unet", "mlp", "text_unet", ...) is a `NetworkKind`: it owns its default config for given data
(`config(request)`), its checks (`check(cfg)`, one-line DiffusaErrors), how to build it (`build(cfg)`), and
what conditioning it accepts (`accepts`: a subset of CONDITIONS), so that no caller tests a kind's name.
Shipped models and saved runs rebuild their network with `build_network(kind, cfg)` from config.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from diffusa.errors import DiffusaError

CONDITIONS = ("labels", "text", "image")  # what a kind can be conditioned on (fields of diffusa.cond.Cond)
AUTO = {"image": "unet", "points": "mlp"}  # model.kind = "auto": the kind for each data kind


@dataclass(frozen=True)
class NetRequest:
    """What a network is asked to model: the data and the conditioning options (a RunConfig's `model`).

    data_kind: "image" (C, H, W) or "points" (D,); None reads it from the shape's rank. conditioning: none |
    class | text. cond_channels: channels of an image concatenated to the input (0: none); image_level: with the
    level of its noise-conditioning augmentation (cond.image_level, Ho et al. 2022). net, text: the user's
    overrides of the network's and the text encoder's defaults.
    """

    data_shape: tuple[int, ...]
    data_kind: str | None = None
    num_classes: int = 0
    learned_variance: bool = False
    conditioning: str = "none"
    cond_channels: int = 0
    image_level: bool = False
    net: Mapping[str, Any] = field(default_factory=dict)
    text: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind_of_data(self) -> str:
        """The data kind, "image" for a 3-D shape and "points" otherwise when not given."""
        if self.data_kind is not None:
            return self.data_kind
        return "image" if len(self.data_shape) == 3 else "points"


class NetworkKind:
    """A kind of network: its defaults for given data, its checks, its builder and the conditioning it reads."""

    name: str = ""
    accepts: frozenset[str] = frozenset()  # subset of CONDITIONS
    text_kind: str | None = None  # the kind that adds text conditioning to this one (unet -> text_unet)

    def config(self, request: NetRequest) -> dict[str, Any]:
        """The full config for the request: defaults for the data, the user's overrides, the conditioning."""
        raise NotImplementedError

    def check(self, cfg: Mapping[str, Any]) -> None:
        """Raise a one-line DiffusaError for a config this kind cannot build."""

    def build(self, cfg: Mapping[str, Any]) -> nn.Module:
        """The network (untrained) for a config that passed `check`."""
        raise NotImplementedError

    def classifier_unet(self, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
        """The U-Net config a noise-aware classifier for this network's runs copies its encoder from (Dhariwal &
        Nichol 2021, Sec. 4); None for kinds classifier guidance does not serve."""
        return None

    def image_channels(self, cfg: Mapping[str, Any]) -> int:
        """Channels of the condition image this network concatenates to its input (cond.image); 0 for none."""
        return 0

    def guidance_input(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """`cfg` with the guidance scale as an input (cond.guidance), for a guided consistency student (Luo et al.
        2023); a DiffusaError for kinds that cannot take it."""
        raise DiffusaError(f"network {self.name!r} cannot take the guidance scale as an input")


_KINDS: dict[str, NetworkKind] = {}


def register(kind: str, network: NetworkKind) -> None:
    """Add a kind to the registry (a second registration of a name replaces the first)."""
    if not kind or not isinstance(network, NetworkKind):
        raise TypeError(f"register needs a name and a NetworkKind, got {kind!r}, {type(network).__name__}")
    if not set(network.accepts) <= set(CONDITIONS):
        raise ValueError(f"kind {kind!r} accepts {sorted(network.accepts)}; known conditions: {', '.join(CONDITIONS)}")
    network.name = kind
    _KINDS[kind] = network


def kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_KINDS)


def network_kind(kind: str) -> NetworkKind:
    """The registered kind `kind`; a DiffusaError listing the known ones otherwise."""
    if kind not in _KINDS:
        raise DiffusaError(f"unknown network {kind!r}; known: {', '.join(kinds())}")
    return _KINDS[kind]


def accepts(kind: str) -> frozenset[str]:
    """What a kind can be conditioned on: a subset of {"labels", "text", "image"}."""
    return network_kind(kind).accepts


def network_config(kind: str, request: NetRequest) -> tuple[str, dict[str, Any]]:
    """(kind, full config) for a request: "auto" is the data kind's default, text conditioning moves to the
    kind's text wrapper; the config is checked."""
    if kind == "auto":
        data_kind = request.kind_of_data
        if data_kind not in AUTO:
            raise DiffusaError(f"no default network for {data_kind!r} data; set model.kind: {', '.join(kinds())}")
        kind = AUTO[data_kind]
    elif kind not in _KINDS:
        raise DiffusaError(f"unknown network {kind!r}; known: auto, {', '.join(kinds())}")
    net = _KINDS[kind]
    if request.conditioning == "text" and "text" not in net.accepts and net.text_kind is not None:
        kind, net = net.text_kind, network_kind(net.text_kind)
    cfg = net.config(request)
    net.check(cfg)
    return kind, cfg


def build_network(kind: str, cfg: Mapping[str, Any]) -> nn.Module:
    """Build a network from its kind and its config dict (e.g. config.json's "network"), after its checks."""
    from diffusa.limits import build_within_budget

    if not isinstance(kind, str):
        raise DiffusaError(f"a network kind is a name, got {kind!r}")
    net = network_kind(kind)
    net.check(cfg)
    try:  # built on the meta device first: a network too large for this machine is refused before allocation
        return build_within_budget(lambda: net.build(cfg), f"network {kind!r}")
    except (TypeError, KeyError) as e:
        raise DiffusaError(f"bad settings for network {kind!r}: {e}") from None


# ---- helpers for the kinds' checks: one-line DiffusaErrors naming the setting ----


def check_keys(kind: str, cfg: Mapping[str, Any], known: Iterable[str], required: Iterable[str] = ()) -> None:
    """Unknown or missing settings."""
    if not isinstance(cfg, Mapping):
        raise DiffusaError(f"the settings of network {kind!r} must be a table of key = value, got {cfg!r}")
    known = list(known)
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise DiffusaError(f"unknown setting(s) {', '.join(unknown)} for network {kind!r}; known: "
                           f"{', '.join(sorted(known))}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise DiffusaError(f"network {kind!r} needs the setting(s) {', '.join(missing)}")


def check_int(kind: str, cfg: Mapping[str, Any], key: str, low: int = 1, none_ok: bool = False) -> None:
    """cfg[key] (when present) is an integer >= low (or None when `none_ok`)."""
    if key not in cfg or (none_ok and cfg[key] is None):
        return
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise DiffusaError(f"network {kind!r}: {key} must be an integer, got {v!r}")
    if v < low:
        raise DiffusaError(f"network {kind!r}: {key} must be >= {low}, got {v}")


def check_ints(kind: str, cfg: Mapping[str, Any], key: str, low: int = 1, empty_ok: bool = True) -> None:
    """cfg[key] (when present) is a list of integers >= low."""
    if key not in cfg:
        return
    v = cfg[key]
    if not isinstance(v, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
        raise DiffusaError(f"network {kind!r}: {key} must be a list of integers, got {v!r}")
    if not v and not empty_ok:
        raise DiffusaError(f"network {kind!r}: {key} must not be empty")
    if any(i < low for i in v):
        raise DiffusaError(f"network {kind!r}: every {key} entry must be >= {low}, got {list(v)}")


def check_float(kind: str, cfg: Mapping[str, Any], key: str, low: float, high: float) -> None:
    """cfg[key] (when present) is a number in [low, high)."""
    if key not in cfg:
        return
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v < high:
        raise DiffusaError(f"network {kind!r}: {key} must be a number in [{low:g}, {high:g}), got {v!r}")


def label_conditioning(spec: dict[str, Any], request: NetRequest) -> None:
    """Set num_classes for conditioning "class" (the data's classes) or "none" (0 unless the user set it)."""
    if request.conditioning == "class":
        if not request.num_classes:
            raise DiffusaError("model.conditioning=\"class\" needs labelled data; this dataset has no labels")
        spec["num_classes"] = request.num_classes
    elif request.conditioning != "none":
        raise DiffusaError(f"unknown model.conditioning {request.conditioning!r}; known: none, class, text")
    elif "num_classes" not in request.net:
        spec["num_classes"] = 0  # unconditional unless asked


__all__ = [
    "AUTO",
    "CONDITIONS",
    "NetRequest",
    "NetworkKind",
    "accepts",
    "build_network",
    "kinds",
    "network_config",
    "network_kind",
    "register",
]
