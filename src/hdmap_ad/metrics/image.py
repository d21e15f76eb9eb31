"""Image-level detection metrics; ``fault`` is the positive class.

Thresholds:
- ``best``: the score threshold with the highest accuracy on the scored maps themselves
  (tuned on test, reported only to compare with the user's figures, which were tuned so).
- ``deployable``: fit on the references alone: the largest score any reference gets from a
  bank built without it (``reference_cv`` rows), so no reference would raise an alarm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def f1_max(y: np.ndarray, s: np.ndarray) -> float:
    """Maximum F1 over all thresholds of the precision-recall curve."""
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(f1.max())


def best_accuracy(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Highest accuracy of the rule ``score >= t`` over every distinct threshold t.

    Returns ``(accuracy, threshold)``; t above every score (all predicted good) is included.
    """
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order].astype(np.int64)
    n, n_pos = len(y), int(y.sum())
    # predicting the first i (highest) as fault: tp = cumsum, tn = negatives not taken
    tp = np.concatenate([[0], np.cumsum(y_sorted)])
    taken = np.arange(n + 1)
    tn = (n - n_pos) - (taken - tp)
    acc = (tp + tn) / n
    # only cut between distinct scores
    valid = np.concatenate([[True], s_sorted[:-1] != s_sorted[1:], [True]])
    acc = np.where(valid, acc, -1.0)
    i = int(np.argmax(acc))
    thr = float(s_sorted[i - 1]) if i > 0 else float(np.inf)
    return float(acc[i]), thr


def accuracy_at(y: np.ndarray, s: np.ndarray, threshold: float | None) -> float | None:
    if threshold is None:
        return None
    return float(np.mean((s >= threshold) == y.astype(bool)))


def detection_metrics(
    y: np.ndarray, s: np.ndarray, best_thr: float | None, deploy_thr: float | None
) -> dict[str, Any]:
    """Metrics of one group of maps. ``y``: 1 = fault; ``s``: image scores.

    Threshold-free and deployable (reference-fit) figures come first; ``f1_max`` and
    ``accuracy_best_threshold`` (listed in :data:`TEST_TUNED`) pick their threshold on these
    very scores and come last.
    """
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(s, dtype=np.float64)
    both = 0 < y.sum() < len(y)
    out: dict[str, Any] = {
        "n_good": int((y == 0).sum()),
        "n_fault": int((y == 1).sum()),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "aupr": float(average_precision_score(y, s)) if both else None,
        "accuracy_deployable": accuracy_at(y, s, deploy_thr),
    }
    if deploy_thr is not None:
        out["false_positive_rate_deployable"] = (
            float(np.mean(s[y == 0] >= deploy_thr)) if (y == 0).any() else None
        )
        out["recall_deployable"] = float(np.mean(s[y == 1] >= deploy_thr)) if y.any() else None
    out["f1_max"] = f1_max(y, s) if both else None
    out["accuracy_best_threshold"] = accuracy_at(y, s, best_thr)
    return out


#: Keys of :func:`detection_metrics` tuned on the test scores themselves (and the metrics
#: JSON's ``thresholds.best``): tables name them ``*_test_tuned`` with a footnote.
TEST_TUNED = ("f1_max", "accuracy_best_threshold")


def round_floats(obj: Any, digits: int = 6) -> Any:
    """Round every float in a nested structure (stable, byte-identical JSON)."""
    if isinstance(obj, float):
        if not np.isfinite(obj):
            return None
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj
