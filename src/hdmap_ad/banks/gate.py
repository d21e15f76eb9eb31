"""The cold/warm gate: which condition's sub-bank a map is searched in.

Modes:
- ``mixed``: no gate, one bank.
- ``oracle``: the condition from the test index rule (the best a gate can do).
- ``p90``: a threshold on the map's 90th-percentile intensity, fit on the references only.
- ``random``: a seeded coin per map (a gate that knows nothing).
- ``inverse``: always the other condition's bank (the worst case).
- ``both-min``: search both sub-banks and keep the lower image score; the winning bank is
  recorded per map.
- ``fallback``: the p90 decision, except for maps whose p90 lies within ``margin`` of the
  threshold, which are searched in both (as ``both-min``).
"""

from __future__ import annotations

import numpy as np

COLD, WARM, MIXED, BOTH = "cold", "warm", "mixed", "both"
GATE_MODES = ("mixed", "oracle", "p90", "random", "inverse", "both-min", "fallback")


def fit_threshold_supervised(p90: np.ndarray, is_warm: np.ndarray) -> float:
    """Threshold on p90 that best separates labelled references (warm = above).

    Among the midpoints between consecutive sorted values, take those with the fewest errors
    and return the middle one of them (deterministic, and centred in the best gap).
    """
    order = np.argsort(p90, kind="stable")
    v, w = p90[order], is_warm[order].astype(bool)
    if w.all() or (~w).all():
        raise ValueError("supervised p90 gate needs references of both conditions")
    cands = np.concatenate([[v[0] - 1e-6], (v[:-1] + v[1:]) / 2, [v[-1] + 1e-6]])
    # errors(t) = warm refs at or below t + cold refs above t
    errors = np.array([np.sum(w & (v <= t)) + np.sum(~w & (v > t)) for t in cands])
    best = np.flatnonzero(errors == errors.min())
    return float(cands[best[len(best) // 2]])


def fit_threshold_otsu(p90: np.ndarray) -> float:
    """Unsupervised threshold for unlabelled references: Otsu's two-class split of p90."""
    v = np.sort(p90)
    if len(v) < 2 or v[0] == v[-1]:
        return float(v[-1])
    best_t, best_var = float(v[0]), np.inf
    for i in range(1, len(v)):
        lo, hi = v[:i], v[i:]
        within = lo.var() * len(lo) + hi.var() * len(hi)
        if within < best_var:
            best_var, best_t = within, float((v[i - 1] + v[i]) / 2)
    return best_t


def p90_decisions(p90: np.ndarray, threshold: float) -> np.ndarray:
    """``warm`` where p90 > threshold, else ``cold``; returns an object array of strings."""
    return np.where(np.asarray(p90) > threshold, WARM, COLD).astype(object)


def _oracle(p90: np.ndarray, conditions: np.ndarray, threshold: float | None) -> np.ndarray:
    conditions = np.asarray(conditions, dtype=object)
    out = conditions.copy()
    unknown = ~np.isin(conditions, [COLD, WARM])
    if unknown.any():
        if threshold is None:
            raise ValueError("oracle gate on maps without a condition needs a threshold")
        out[unknown] = p90_decisions(np.asarray(p90)[unknown], threshold)
    return out


def gate_decisions(
    mode: str,
    p90: np.ndarray,
    conditions: np.ndarray,
    threshold: float | None,
    margin: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Sub-bank to search for each map: ``cold``, ``warm``, ``mixed`` or ``both``.

    Args:
        mode: one of ``GATE_MODES`` (see the module docstring).
        p90: ``(N,)`` 90th-percentile intensity per map.
        conditions: ``(N,)`` true condition per map (cold | warm | unknown); used by oracle
            and inverse (maps without one fall back to the p90 decision).
        threshold: the fitted p90 threshold.
        margin: fallback's half-width around the threshold where both banks are searched.
        seed: seeds the random gate.
    """
    n = len(p90)
    p90 = np.asarray(p90, dtype=np.float64)
    if mode == "mixed":
        return np.full(n, MIXED, dtype=object)
    if mode == "both-min":
        return np.full(n, BOTH, dtype=object)
    if mode == "random":
        return np.where(np.random.default_rng(seed).random(n) < 0.5, COLD, WARM).astype(object)
    if mode in ("oracle", "inverse"):
        out = _oracle(p90, conditions, threshold)
        return np.where(out == COLD, WARM, COLD).astype(object) if mode == "inverse" else out
    if mode in ("p90", "fallback"):
        if threshold is None:
            raise ValueError(f"{mode} gate needs a fitted threshold")
        out = p90_decisions(p90, threshold)
        if mode == "fallback":
            out[np.abs(p90 - threshold) < margin] = BOTH
        return out
    raise ValueError(f"unknown gate mode {mode!r}")
