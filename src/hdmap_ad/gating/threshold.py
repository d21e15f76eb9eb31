"""The p90 threshold the built-in gates fit on the references and route by.

A map's p90 is its 90th-percentile intensity; warm maps run hotter. References of known
condition (test/good hold-outs) give a supervised threshold; unlabelled references (train
maps) give Otsu's two-class split.
"""

from __future__ import annotations

import numpy as np

from hdmap_ad.gating.base import COLD, WARM, GateFit, MapStats


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


def fit_p90_threshold(refs: MapStats) -> GateFit:
    """The p90 threshold from the references only (never test labels): supervised when every
    reference has a known condition and both occur, else Otsu's split."""
    p90 = np.asarray(refs.p90)
    if refs.conditions is not None and refs.known().all() and len(set(refs.conditions)) == 2:
        is_warm = np.asarray(refs.conditions, dtype=object) == WARM
        return GateFit(fit_threshold_supervised(p90, is_warm), "supervised")
    return GateFit(fit_threshold_otsu(p90), "otsu")


def p90_decisions(p90: np.ndarray, threshold: float | None) -> np.ndarray:
    """``warm`` where p90 > threshold, else ``cold``; returns an object array of strings."""
    if threshold is None:
        raise ValueError("routing by p90 needs a fitted threshold")
    return np.where(np.asarray(p90) > threshold, WARM, COLD).astype(object)
