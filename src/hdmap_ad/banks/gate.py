"""Deprecated: the gates moved to :mod:`hdmap_ad.gating` (a registry, as methods have).

A thin re-export so that code written against the old module keeps importing; new code
imports ``hdmap_ad.gating`` (routing: :func:`hdmap_ad.gating.route`). ``GATE_MODES`` lists
the gates registered when this module was first imported (:func:`hdmap_ad.gating.gate_names`
is current).
"""

from __future__ import annotations

from hdmap_ad.gating import BOTH, COLD, MIXED, WARM, gate_names
from hdmap_ad.gating.threshold import (
    fit_threshold_otsu,
    fit_threshold_supervised,
    p90_decisions,
)

GATE_MODES = gate_names()

__all__ = ["BOTH", "COLD", "GATE_MODES", "MIXED", "WARM", "fit_threshold_otsu",
           "fit_threshold_supervised", "p90_decisions"]
