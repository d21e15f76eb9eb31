"""The gate registry: every cold/warm gate, by its params name, and the one routing rule.

Adding a gate = one module (a :class:`~hdmap_ad.gating.base.Gate` subclass with its options
dataclass) plus one line in ``_REGISTERED`` below (or :func:`register_gate` at run time). The
params schema's ``gate`` enum derives from this registry; the fit step fits and assigns with
:meth:`Gate.fit` / :meth:`Gate.assign`; scoring, predict and the app route with
:func:`route` and keep the lowest score of a ``both`` decision with :func:`combine_both`.
Nothing else branches on a gate's name.

Layering: gating sits above ``methods`` and below ``banks``/``scoring``; it imports neither
(nor metrics, report, deploy, app or the CLI). Only numpy is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.gating.base import (
    BOTH,
    COLD,
    CONDITIONS,
    MIXED,
    WARM,
    Gate,
    GateFit,
    MapStats,
    NoOptions,
    RouteContext,
)
from hdmap_ad.gating.gates import P90, BothMin, Fallback, Inverse, Mixed, Oracle, Random
from hdmap_ad.options import build_options
from hdmap_ad.registry import Registry

_REGISTERED: tuple[Gate, ...] = (
    Mixed(),
    Oracle(),
    P90(),
    Random(),
    Inverse(),
    BothMin(),
    Fallback(),
)

_REGISTRY: Registry[Gate] = Registry("gate", _REGISTERED)
GATES: dict[str, Gate] = _REGISTRY.entries
DEFAULT_GATE = "mixed"
#: Experiment params keys of gate options start with this (``gate_margin`` -> ``margin``).
OPTION_PREFIX = "gate_"


def register_gate(gate: Gate) -> Gate:
    """Add ``gate`` to the registry at run time (a plugin, a test's toy gate); the params
    schema built afterwards accepts its name. Returns it.

    Raises:
        ValueError: the gate has no name, or a gate of that name is registered already.
    """
    return _REGISTRY.register(gate)


def unregister_gate(name: str) -> None:
    """Remove a gate added with :func:`register_gate` (built-in gates stay)."""
    _REGISTRY.unregister(name)


def gate_names() -> tuple[str, ...]:
    """Registered gate names, built-ins first in their order (the schema's enum)."""
    return _REGISTRY.names()


def get_gate(name: str, where: str = "gate") -> Gate:
    """The registered gate called ``name``; an unknown name is an ``InputError``."""
    return _REGISTRY.get(name, where)


def is_per_condition(name: str) -> bool:
    """Whether gate ``name`` fits one sub-model per condition (False for ``mixed`` and for a
    name no longer registered that is ``mixed``)."""
    gate = GATES.get(name)
    return gate.per_condition if gate is not None else name != MIXED


@dataclass(frozen=True)
class GateConfig:
    """An experiment's gate: its name, its options and the seed a coin draws from."""

    name: str = DEFAULT_GATE
    options: Any = None
    seed: int = 0

    @classmethod
    def build(cls, name: str, values: Mapping[str, Any] | None = None, seed: int = 0,
              where: str = "experiment") -> GateConfig:
        """From the experiment's params: ``values`` holds its ``gate_*`` keys; a gate reads
        those its options name and ignores the rest (``gate_margin`` of a p90 gate)."""
        gate = get_gate(name, f"{where}.gate")
        wanted = {f.name for f in dataclasses.fields(gate.Options)}
        opts = {k[len(OPTION_PREFIX):]: v for k, v in (values or {}).items()
                if k.startswith(OPTION_PREFIX) and k[len(OPTION_PREFIX):] in wanted}
        try:
            options = build_options(gate.Options, opts, where)
        except InputError as exc:  # name the params key (gate_margin), not the field
            message = str(exc)
            for key in opts:
                message = message.replace(f"{where}.{key}:", f"{where}.{OPTION_PREFIX}{key}:")
            raise InputError(message) from None
        return cls(name, options, seed)

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", get_gate(self.name).Options())

    @property
    def gate(self) -> Gate:
        return get_gate(self.name)


def route(gate: GateConfig, fit: GateFit, maps: MapStats, start: int = 0) -> np.ndarray:
    """The one routing rule: ``(N,)`` decision per map (``cold``, ``warm``, ``mixed`` or
    ``both``), as the score step, predict and the app route.

    Args:
        gate: the experiment's gate (:meth:`ExperimentConfig.gate_config`).
        fit: the gate's fitted state (the model metadata's ``gate`` block).
        maps: the maps' p90 ``(N,)`` and, where known, conditions ``(N,)``.
        start: position of the first map in the stream routed so far (predict's batches).
    """
    maps = MapStats(np.asarray(maps.p90, dtype=np.float64), maps.conditions)
    return gate.gate.route(maps, fit, gate.options, RouteContext(gate.seed, start))


def searched(decision: str, sub_models: Iterable[str]) -> list[str]:
    """The sub-models a map routed to ``decision`` is scored with: every one for ``both``
    (sorted), else the one it names."""
    return sorted(sub_models) if decision == BOTH else [decision]


def combine_both(scored: Mapping[str, tuple[np.ndarray, np.ndarray]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The both -> min rule: per map, the lowest image score over the searched sub-models.

    Args:
        scored: sub-model name -> ``(image scores (B,), patch scores (B, H, W))``.

    Returns:
        ``(scores (B,) float32, patch scores (B, H, W) float32, kept sub-model (B,))``:
        sub-models are compared in sorted name order and the first wins a tie; a map whose
        every score is NaN keeps ``inf``, zero patches and ``None`` (callers refuse it).
    """
    names = sorted(scored)
    first_scores, first_patches = scored[names[0]]
    b = len(first_scores)
    best = np.full(b, np.inf, dtype=np.float32)
    patches = np.zeros((b, *np.shape(first_patches)[1:]), dtype=np.float32)
    kept = np.empty(b, dtype=object)
    for name in names:
        s, ps = scored[name]
        better = s < best
        best[better], patches[better], kept[better] = s[better], ps[better], name
    return best, patches, kept


def describe_gate(mode: str, threshold: float | None) -> str:
    """How gate ``mode`` routes a map, in words (an unregistered name is echoed)."""
    gate = GATES.get(mode)
    return gate.describe(GateFit(threshold, "")) if gate is not None else str(mode)


__all__ = [
    "BOTH", "COLD", "CONDITIONS", "DEFAULT_GATE", "GATES", "MIXED", "WARM", "Gate", "GateConfig",
    "GateFit", "MapStats", "NoOptions", "RouteContext", "combine_both", "describe_gate",
    "gate_names", "get_gate", "is_per_condition", "register_gate", "route", "searched",
    "unregister_gate",
]
