"""Paired bootstrap comparison of two experiments scored on the same test maps.

A hypothesis names two arms: ``A`` (the baseline) and ``B`` (the arm claimed better). Both
score the same test maps, so the comparison is paired: every bootstrap resample draws one set
of image indices and evaluates both arms on it, which cancels the shared difficulty of the
maps and gives much tighter intervals than two independent bootstraps.

Resampling is stratified by class (``fault`` = 1 is the positive class): each resample draws
``n_fault`` faults and ``n_good`` goods with replacement, so AUROC is defined in every resample
and the class balance is that of the test set.

Statistics per resample (always ``B - A``):
- delta AUROC (rank-based Mann-Whitney formula, ties counted as one half, as sklearn does);
- delta accuracy at each arm's deployable threshold (the rule ``score >= threshold``), when
  both thresholds are known.

Intervals are the 2.5 / 97.5 percentiles of the resampled deltas (``np.percentile``, linear
interpolation); point estimates are computed on the full sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from hdmap_ad.metrics.image import accuracy_at, round_floats

#: Percentiles of the reported interval (a 95% percentile bootstrap interval).
PERCENTILES = (2.5, 97.5)
#: Conditions reported first, in this order; any other value follows, sorted.
CONDITION_ORDER = ("cold", "warm")
#: Resampled values ranked at once (memory bound of the vectorised AUROC).
_CHUNK_VALUES = 2_000_000

VERDICT_RULE = (
    "supported: the whole 95% interval of delta AUROC (B - A) lies above +margin; "
    "refuted: it lies entirely below -margin (B clearly worse); otherwise inconclusive"
)


def batched_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of many samples at once by the Mann-Whitney rank formula.

    Row ``b`` is one sample: its positives ``pos[b]`` and negatives ``neg[b]``. With average
    ranks ``R`` of the ``P + Q`` values of a row (ties share their mean rank),
    ``AUROC = (sum(R[positives]) - P (P + 1) / 2) / (P Q)``, equal to
    ``sklearn.metrics.roc_auc_score`` (ties count one half).

    Args:
        pos: ``(B, P)`` scores of the positives (faults), ``P >= 1``.
        neg: ``(B, Q)`` scores of the negatives (goods), ``Q >= 1``.

    Returns:
        ``(B,)`` float64 AUROC per row.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[0] != neg.shape[0]:
        raise ValueError(f"expected (B, P) and (B, Q) arrays, got {pos.shape} and {neg.shape}")
    b, p = pos.shape
    q = neg.shape[1]
    if p == 0 or q == 0:
        raise ValueError("AUROC needs at least one positive and one negative per row")
    out = np.empty(b, dtype=np.float64)
    chunk = max(1, _CHUNK_VALUES // (p + q))
    for start in range(0, b, chunk):
        both = np.concatenate([pos[start : start + chunk], neg[start : start + chunk]], axis=1)
        ranks = rankdata(both, axis=1)  # average ranks for ties
        u = ranks[:, :p].sum(axis=1) - p * (p + 1) / 2.0
        out[start : start + chunk] = u / (p * q)
    return out


def stratified_indices(
    y: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified bootstrap draws of image indices.

    Draw order (what a reimplementation must repeat to get the same resamples):
    ``rng.integers(0, P, size=(n_boot, P))`` over the positives, then
    ``rng.integers(0, Q, size=(n_boot, Q))`` over the negatives, each mapped to positions in
    ``y`` through ``np.flatnonzero(y == 1)`` / ``np.flatnonzero(y == 0)``. A class with no
    member draws nothing.

    Args:
        y: ``(N,)`` 0/1 labels (1 = fault).
        n_boot: number of resamples B.
        rng: the random generator (consumed).

    Returns:
        ``(pos_idx (B, P), neg_idx (B, Q))`` int64 positions into ``y``.
    """
    pos_at = np.flatnonzero(y == 1)
    neg_at = np.flatnonzero(y == 0)
    out = []
    for at in (pos_at, neg_at):
        if len(at):
            out.append(at[rng.integers(0, len(at), size=(n_boot, len(at)))])
        else:
            out.append(np.zeros((n_boot, 0), dtype=np.int64))
    return out[0], out[1]


def _interval(deltas: np.ndarray) -> list[float]:
    lo, hi = np.percentile(deltas, PERCENTILES)
    return [float(lo), float(hi)]


def _group_bootstrap(
    y: np.ndarray,
    s_a: np.ndarray,
    s_b: np.ndarray,
    thr_a: float | None,
    thr_b: float | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Point estimates and intervals of one group of paired maps (its own ``default_rng``)."""
    n_fault = int(y.sum())
    n_good = int(len(y) - n_fault)
    both = n_fault > 0 and n_good > 0
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = stratified_indices(y, n_boot, rng)

    auroc: dict[str, Any] = {"a": None, "b": None, "delta": None, "ci95": None}
    if both:
        a, b = float(roc_auc_score(y, s_a)), float(roc_auc_score(y, s_b))
        boot_a = batched_auroc(s_a[pos_idx], s_a[neg_idx])
        boot_b = batched_auroc(s_b[pos_idx], s_b[neg_idx])
        auroc = {"a": a, "b": b, "delta": b - a, "ci95": _interval(boot_b - boot_a)}

    acc: dict[str, Any] = {"a": None, "b": None, "delta": None, "ci95": None}
    if thr_a is not None and thr_b is not None and len(y):
        a, b = accuracy_at(y, s_a, thr_a), accuracy_at(y, s_b, thr_b)
        assert a is not None and b is not None
        # per-image correctness difference (B - A); a resample's delta is its mean
        diff = ((s_b >= thr_b) == (y == 1)).astype(np.float64) - (
            (s_a >= thr_a) == (y == 1)
        ).astype(np.float64)
        idx = np.concatenate([pos_idx, neg_idx], axis=1)
        acc = {"a": a, "b": b, "delta": b - a, "ci95": _interval(diff[idx].mean(axis=1))}

    return {
        "n": int(len(y)),
        "n_good": n_good,
        "n_fault": n_fault,
        "auroc": auroc,
        "accuracy_deployable": acc,
    }


def _condition_order(values: np.ndarray) -> list[str]:
    present = sorted({str(v) for v in values})
    return [c for c in CONDITION_ORDER if c in present] + [
        c for c in present if c not in CONDITION_ORDER
    ]


def paired_bootstrap(
    y: np.ndarray,
    s_a: np.ndarray,
    s_b: np.ndarray,
    thr_a: float | None,
    thr_b: float | None,
    n_boot: int = 2000,
    seed: int = 0,
    conditions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired, class-stratified bootstrap of delta AUROC and delta deployable accuracy (B - A).

    Each group (all maps, then each condition) is resampled with its own
    ``np.random.default_rng(seed)`` through :func:`stratified_indices`, so the result is a
    pure function of the inputs and the seed.

    Args:
        y: ``(N,)`` 0/1 labels, 1 = fault (the positive class); both classes must occur.
        s_a: ``(N,)`` image scores of arm A on the test maps.
        s_b: ``(N,)`` image scores of arm B on the same maps, in the same order.
        thr_a: deployable threshold of A (``score >= thr`` is fault), or None.
        thr_b: deployable threshold of B, or None; accuracy is reported only when both are
            known.
        n_boot: number of resamples (>= 1).
        seed: seed of ``np.random.default_rng``.
        conditions: optional ``(N,)`` condition per map; adds ``per_condition`` with the same
            statistics per value (``cold``, ``warm`` first, then others sorted). Within a
            condition lacking a class, the AUROC entries are None.

    Returns:
        ``{"n", "n_good", "n_fault", "n_boot", "seed", "auroc", "accuracy_deployable"
        [, "per_condition"]}`` where ``auroc`` and ``accuracy_deployable`` are
        ``{"a", "b", "delta", "ci95": [lo, hi]}`` (values None where undefined) and
        ``per_condition`` maps each condition to ``{"n", "n_good", "n_fault", "auroc",
        "accuracy_deployable"}``. Floats are not rounded.

    Raises:
        ValueError: on mismatched shapes, ``n_boot < 1`` or a single class overall.
    """
    y = np.asarray(y).astype(np.int64)
    s_a = np.asarray(s_a, dtype=np.float64)
    s_b = np.asarray(s_b, dtype=np.float64)
    if y.ndim != 1 or s_a.shape != y.shape or s_b.shape != y.shape:
        raise ValueError(f"y, s_a, s_b must be (N,) alike: {y.shape}, {s_a.shape}, {s_b.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must be 0/1 (1 = fault)")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < y.sum() < len(y):
        raise ValueError(
            f"both classes are needed: {int(y.sum())} fault, {int(len(y) - y.sum())} good"
        )
    thr_a = None if thr_a is None else float(thr_a)
    thr_b = None if thr_b is None else float(thr_b)
    overall = _group_bootstrap(y, s_a, s_b, thr_a, thr_b, n_boot, seed)
    out: dict[str, Any] = {
        "n": overall["n"],
        "n_good": overall["n_good"],
        "n_fault": overall["n_fault"],
        "n_boot": int(n_boot),
        "seed": int(seed),
        "auroc": overall["auroc"],
        "accuracy_deployable": overall["accuracy_deployable"],
    }
    if conditions is not None:
        conditions = np.asarray(conditions).astype(str)
        if conditions.shape != y.shape:
            raise ValueError(f"conditions must be (N,) like y: {conditions.shape} vs {y.shape}")
        per_condition: dict[str, Any] = {}
        for c in _condition_order(conditions):
            m = conditions == c
            per_condition[c] = _group_bootstrap(y[m], s_a[m], s_b[m], thr_a, thr_b, n_boot, seed)
        out["per_condition"] = per_condition
    return out


def verdict(interval: Sequence[float] | None, margin: float = 0.0) -> str:
    """Verdict of a hypothesis "B is better than A" from the 95% interval of delta AUROC.

    Args:
        interval: ``[lo, hi]`` of delta AUROC ``B - A`` (None when undefined).
        margin: smallest difference that counts (>= 0), in AUROC units.

    Returns:
        ``"supported"`` when ``lo > margin`` (B better by more than the margin with 95%
        confidence), ``"refuted"`` when ``hi < -margin`` (B clearly worse), otherwise
        ``"inconclusive"`` (the interval reaches into ``[-margin, margin]``, or is None).
    """
    if interval is None:
        return "inconclusive"
    lo, hi = float(interval[0]), float(interval[1])
    if lo > margin:
        return "supported"
    if hi < -margin:
        return "refuted"
    return "inconclusive"


def _deployable_threshold(scores: pd.DataFrame) -> tuple[float | None, int]:
    cv = scores[scores.role == "reference_cv"]
    return (float(cv.score.max()) if len(cv) else None), int(len(cv))


def _test_rows(scores: pd.DataFrame, arm: str) -> pd.DataFrame:
    test = scores[scores.role == "test"]
    dup = test.image_id[test.image_id.duplicated()]
    if len(dup):
        raise ValueError(f"arm {arm}: duplicate test image_id, e.g. {dup.iloc[0]!r}")
    return test[["image_id", "label", "condition", "score"]]


def compare_experiments(
    scores_a: pd.DataFrame,
    scores_b: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    margin: float = 0.0,
) -> dict[str, Any]:
    """Compare two experiments on the same test maps: paired bootstrap and verdict (B vs A).

    Test rows are aligned by ``image_id`` and sorted by it, so the result does not depend on
    row order. Each arm's deployable threshold is the max score of its own ``reference_cv``
    rows (None when it has none: no accuracy comparison then).

    Args:
        scores_a: scores table of arm A (baseline), columns ``image_id, role, label,
            condition, score`` at least (``patch_scores`` not needed).
        scores_b: scores table of arm B (the arm claimed better).
        n_boot: number of bootstrap resamples.
        seed: bootstrap seed.
        margin: verdict margin in AUROC units (see :func:`verdict`).

    Returns:
        JSON-ready dict, stable key order, floats rounded (``round_floats``): ``verdict``,
        ``verdict_rule``, ``margin``, ``thresholds`` (deployable threshold and reference_cv
        count per arm), then the :func:`paired_bootstrap` fields; each ``per_condition`` entry
        carries its own ``verdict``.

    Raises:
        ValueError: when the test image sets differ (counts named), an image_id repeats, or an
            image's label or condition differs between the arms.
    """
    test_a, test_b = _test_rows(scores_a, "A"), _test_rows(scores_b, "B")
    joined = test_a.merge(test_b, on="image_id", how="inner", suffixes=("_a", "_b"))
    if not (len(joined) == len(test_a) == len(test_b)):
        raise ValueError(
            "test image sets differ: "
            f"A has {len(test_a)}, B has {len(test_b)}, {len(joined)} in common"
        )
    for col in ("label", "condition"):
        bad = joined[joined[f"{col}_a"].astype(str) != joined[f"{col}_b"].astype(str)]
        if len(bad):
            raise ValueError(
                f"{len(bad)} test images differ in {col} between the arms, "
                f"e.g. {bad.image_id.iloc[0]!r}"
            )
    joined = joined.sort_values("image_id", kind="stable").reset_index(drop=True)
    thr_a, n_cv_a = _deployable_threshold(scores_a)
    thr_b, n_cv_b = _deployable_threshold(scores_b)
    boot = paired_bootstrap(
        (joined.label_a.astype(str) != "good").to_numpy().astype(np.int64),
        joined.score_a.to_numpy(np.float64),
        joined.score_b.to_numpy(np.float64),
        thr_a,
        thr_b,
        n_boot=n_boot,
        seed=seed,
        conditions=joined.condition_a.astype(str).to_numpy(),
    )
    per_condition = {
        c: {**grp, "verdict": verdict(grp["auroc"]["ci95"], margin)}
        for c, grp in boot.pop("per_condition").items()
    }
    out: dict[str, Any] = {
        "verdict": verdict(boot["auroc"]["ci95"], margin),
        "verdict_rule": VERDICT_RULE,
        "margin": float(margin),
        "thresholds": {
            "a": {"deployable": thr_a, "reference_cv_scored": n_cv_a},
            "b": {"deployable": thr_b, "reference_cv_scored": n_cv_b},
        },
        **boot,
        "per_condition": per_condition,
    }
    return round_floats(out)


def hypothesis_report(spec: dict[str, Any]) -> dict[str, Any]:
    """The verdict file of one hypothesis.

    Args:
        spec: ``{"key", "a", "b", "description", "n_boot", "seed", "margin", "pairs": [{domain,
            variant_a, variant_b, budget, seed, scores_a, scores_b}]}``; a pair compares the
            scores Parquet files of two concrete runs (same budget and reference seed).

    Returns:
        ``{hypothesis, description, a, b, claim, verdict, results: {domain: [...]}}``; the
        overall verdict is the common verdict of all pairs, or ``mixed: ...``.
    """
    cols = ["image_id", "role", "label", "condition", "score"]
    results: dict[str, list[dict[str, Any]]] = {}
    for pair in spec["pairs"]:
        cmp = compare_experiments(
            pd.read_parquet(pair["scores_a"], columns=cols),
            pd.read_parquet(pair["scores_b"], columns=cols),
            n_boot=spec["n_boot"], seed=spec["seed"], margin=spec["margin"],
        )
        results.setdefault(pair["domain"], []).append(
            {"budget": pair["budget"], "ref_seed": pair["seed"], "a": pair["variant_a"],
             "b": pair["variant_b"], **cmp}
        )
    verdicts = sorted({r["verdict"] for rs in results.values() for r in rs})
    overall = verdicts[0] if len(verdicts) == 1 else "mixed: " + ", ".join(verdicts)
    return round_floats({
        "hypothesis": spec["key"], "description": spec["description"],
        "a": spec["a"], "b": spec["b"], "claim": f"{spec['b']} beats {spec['a']} (AUROC)",
        "verdict": overall, "results": results,
    })
