"""Summaries over a sweep's variants: mean and spread over seeds, per reference budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from hdmap_ad.metrics.image import round_floats
from hdmap_ad.metrics.summary import COLUMNS, _get


def _stats(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def summarize_sweep(
    sweep: str, variants: list[dict[str, Any]], metrics: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per budget, mean / std (ddof 1) / min / max over seeds of every summary column.

    Args:
        sweep: the sweep's experiment name.
        variants: ``[{"key", "budget", "seed"}]``, aligned with ``metrics``.
        metrics: the variants' metrics JSONs.
    """
    by_budget: dict[str, list[int]] = {}
    for i, v in enumerate(variants):
        by_budget.setdefault(str(v["budget"]), []).append(i)
    budgets = {}
    for budget, idx in by_budget.items():
        budgets[budget] = {
            "seeds": [variants[i]["seed"] for i in idx],
            "variants": [variants[i]["key"] for i in idx],
            **{c: _stats([_get(metrics[i], p) for i in idx]) for c, p in COLUMNS},
        }
    return round_floats({"experiment": sweep, "kind": "sweep", "budgets": budgets})


def sweep_step(spec: dict[str, Any], inputs: list[str], out: str) -> None:
    """The ``sweep`` step: the variants' metrics JSONs (in ``spec["variants"]`` order) ->
    the sweep's summary JSON."""
    from hdmap_ad.io import read_json, write_json

    write_json(out, summarize_sweep(spec["sweep"], spec["variants"],
                                    [read_json(p) for p in inputs]))
