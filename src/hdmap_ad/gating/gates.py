"""The built-in gates (registered in :mod:`hdmap_ad.gating`).

- ``mixed``: no gate, one sub-model of all references.
- ``oracle``: the map's true condition (the best a gate can do); the p90 decision for maps
  without one.
- ``p90``: a threshold on the map's 90th-percentile intensity, fit on the references only.
- ``random``: a seeded coin per map (a gate that knows nothing).
- ``inverse``: always the other condition's sub-model (the worst case).
- ``both-min``: search both sub-models and keep the lower image score; the winning sub-model
  is recorded per map.
- ``fallback``: the p90 decision, except for maps whose p90 lies within ``margin`` (params
  ``gate_margin``) of the threshold, which are searched in both (as ``both-min``).

Every gate but ``mixed`` fits the p90 threshold (recorded with the model even where its
routing does not read it) and assigns each reference to its known condition's sub-model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.gating.base import (
    BOTH,
    COLD,
    MIXED,
    WARM,
    Gate,
    GateFit,
    MapStats,
    RouteContext,
    threshold_words,
)
from hdmap_ad.gating.threshold import p90_decisions


class Mixed(Gate):
    name = "mixed"
    per_condition = False
    summary = "one mixed sub-model, no gate"

    def fit(self, refs: MapStats) -> GateFit:
        return GateFit(None, "none")

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        return np.full(len(maps), MIXED, dtype=object)


class P90(Gate):
    name = "p90"
    needs_threshold = True
    summary = "warm above the references' p90 threshold, cold at or below"

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        if fit.threshold is None:
            raise ValueError(f"{self.name} gate needs a fitted threshold")
        return p90_decisions(maps.p90, fit.threshold)

    def describe(self, fit: GateFit) -> str:
        return f"{threshold_words(fit)}: warm above, cold at or below"


@dataclass(frozen=True)
class FallbackOptions:
    margin: float = field(default=0.02, metadata={
        "min": 0, "doc": "half-width around the p90 threshold where both sub-models are "
                         "searched (params key gate_margin)"})


class Fallback(P90):
    name = "fallback"
    Options = FallbackOptions
    summary = "the p90 decision; both sub-models searched within gate_margin of the threshold"

    def route(self, maps: MapStats, fit: GateFit, options: FallbackOptions,
              ctx: RouteContext) -> np.ndarray:
        out = super().route(maps, fit, options, ctx)
        out[np.abs(maps.p90 - fit.threshold) < options.margin] = BOTH
        return out

    def describe(self, fit: GateFit) -> str:
        return f"{threshold_words(fit)}: warm above, cold below; both searched near the threshold"


class Oracle(Gate):
    name = "oracle"
    needs_threshold = True  # new maps know no condition
    summary = "the map's true condition (the p90 decision for maps without one)"

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        known = maps.known()
        out = (np.asarray(maps.conditions, dtype=object).copy() if maps.conditions is not None
               else np.full(len(maps), "unknown", dtype=object))
        if not known.all():
            if fit.threshold is None:
                raise ValueError("oracle gate on maps without a condition needs a threshold")
            out[~known] = p90_decisions(maps.p90[~known], fit.threshold)
        return out

    def describe(self, fit: GateFit) -> str:
        return f"true condition ({threshold_words(fit)} for maps without one)"


class Inverse(Oracle):
    name = "inverse"
    summary = "the other condition's sub-model (the worst case)"

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        out = super().route(maps, fit, options, ctx)
        return np.where(out == COLD, WARM, COLD).astype(object)

    def describe(self, fit: GateFit) -> str:
        return f"the other condition's sub-model ({threshold_words(fit)} for maps without one)"


class Random(Gate):
    name = "random"
    summary = "a seeded coin (a control)"

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        rng = np.random.default_rng(ctx.seed)
        # one double per map: maps [start, start + N) of the stream draw what one call over
        # the whole stream would (PCG64 advances one step per double)
        rng.bit_generator.advance(ctx.start)
        return np.where(rng.random(len(maps)) < 0.5, COLD, WARM).astype(object)


class BothMin(Gate):
    name = "both-min"
    summary = "both sub-models searched, the lower score kept"

    def route(self, maps: MapStats, fit: GateFit, options: Any, ctx: RouteContext
              ) -> np.ndarray:
        return np.full(len(maps), BOTH, dtype=object)
