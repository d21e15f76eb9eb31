"""The contract every gate implements: fit on the references, route maps to sub-models.

A *gate* decides which sub-model scores a map. A per-condition gate has one sub-model per
condition (``cold``, ``warm``), each fit on its own condition's references by the
experiment's method (``hdmap_ad.methods``); the ``mixed`` gate has one sub-model of all
references. For each map a gate returns a *decision*: the name of the sub-model to search
(``cold``, ``warm`` or ``mixed``) or ``both`` (search every sub-model, keep the lowest
image score: :func:`hdmap_ad.gating.combine_both`).

Contract:
    ``Gate.fit(refs) -> GateFit``: fitted state from the references only (never test maps);
    the built-in gates fit a threshold on the maps' 90th-percentile intensity (p90).
    ``Gate.assign(refs, fit) -> (N,)``: the sub-model each reference is fit into.
    ``Gate.route(maps, fit, options, ctx) -> (N,)``: the decision for each map.

Arrays: ``p90`` is ``(N,)`` float (intensity units of the maps); ``conditions`` is ``(N,)``
object (``cold`` | ``warm``; anything else, e.g. ``unknown``, means not known); decisions are
``(N,)`` object arrays of strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

COLD, WARM, MIXED, BOTH = "cold", "warm", "mixed", "both"
CONDITIONS = (COLD, WARM)


@dataclass(frozen=True)
class GateFit:
    """The gate's fitted state: the threshold on p90 (None: none fit) and how it was fit
    (``supervised`` | ``otsu`` | ``none``). Written to the model metadata as
    ``gate: {mode, threshold, fit}``."""

    threshold: float | None
    method: str


@dataclass(frozen=True)
class MapStats:
    """What a gate sees of the maps it fits on or routes.

    ``p90``: ``(N,)`` 90th-percentile intensity of each map. ``conditions``: ``(N,)`` true
    condition per map (``cold`` | ``warm`` | other = unknown), or None where no map has one
    (new maps at predict time).
    """

    p90: np.ndarray
    conditions: np.ndarray | None = None

    @classmethod
    def of(cls, rows: Any) -> MapStats:
        """From a frame with ``p90`` and (optionally) ``condition`` columns (a manifest's
        rows, the references)."""
        conditions = rows.condition.to_numpy(dtype=object) if "condition" in rows else None
        return cls(rows.p90.to_numpy(), conditions)

    def __len__(self) -> int:
        return len(self.p90)

    def known(self) -> np.ndarray:
        """``(N,)`` bool: the maps whose condition is known (cold or warm)."""
        if self.conditions is None:
            return np.zeros(len(self), dtype=bool)
        return np.isin(np.asarray(self.conditions, dtype=object), CONDITIONS)


@dataclass(frozen=True)
class RouteContext:
    """What routing may depend on besides the maps and the fit.

    ``seed``: the experiment seed (the random gate's coin). ``start``: the position of the
    first map in the stream of maps routed so far (predict routes batch by batch; a gate
    whose decisions draw from a sequence continues it, so batches give what one call would).
    """

    seed: int = 0
    start: int = 0


@dataclass(frozen=True)
class NoOptions:
    """A gate without options."""


class Gate(ABC):
    """A gate: its name, options type, what it needs, and how it fits and routes.

    Class attributes:
        name: the registry name (``gate`` in params).
        Options: frozen dataclass of its options (see :mod:`hdmap_ad.options`); option
            ``x`` is read from the experiment's params key ``gate_x`` (fallback's ``margin``
            from ``gate_margin``).
        per_condition: one sub-model per condition (``cold``, ``warm``), so the dataset's
            maps must carry conditions (a params error otherwise); False: one ``mixed``
            sub-model, no gate.
        needs_threshold: routes maps of no known condition (every new map at predict time)
            by the fitted p90 threshold, so a model without one cannot route.
        summary: one line for the docs.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    per_condition: ClassVar[bool] = True
    needs_threshold: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    @property
    def sub_models(self) -> tuple[str, ...]:
        """Names of the sub-models a fit of this gate holds (sorted)."""
        return CONDITIONS if self.per_condition else (MIXED,)

    def fit(self, refs: MapStats) -> GateFit:
        """Fit on the references only. Default: the p90 threshold
        (:func:`hdmap_ad.gating.threshold.fit_p90_threshold`)."""
        from hdmap_ad.gating.threshold import fit_p90_threshold

        return fit_p90_threshold(refs)

    def assign(self, refs: MapStats, fit: GateFit) -> np.ndarray:
        """Sub-model of each reference: its known condition, else the p90 decision."""
        from hdmap_ad.gating.threshold import p90_decisions

        if not self.per_condition:
            return np.full(len(refs), MIXED, dtype=object)
        known = refs.known()
        out = np.asarray(refs.conditions if refs.conditions is not None
                         else np.full(len(refs), "unknown"), dtype=object).copy()
        if not known.all():
            out[~known] = p90_decisions(np.asarray(refs.p90)[~known], fit.threshold)
        return out

    @abstractmethod
    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        """``(N,)`` decision per map: a sub-model name or ``both``. ``maps.p90`` is float64."""

    def describe(self, fit: GateFit) -> str:
        """How this gate routes a map, in words (the app's map view)."""
        return self.summary or self.name


def threshold_words(fit: GateFit) -> str:
    """``p90 threshold 0.1234`` (or ``no threshold``), for :meth:`Gate.describe`."""
    return f"p90 threshold {fit.threshold:.4f}" if fit.threshold is not None else "no threshold"
