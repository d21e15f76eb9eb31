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

A hypothesis's verdict (:func:`hypothesis_report`) also accounts for the draw of the references:
each arm runs over several reference seeds, and every seed scores (nearly) the same test maps,
so seeds and maps are **crossed**. A **pigeonhole bootstrap** (Owen 2007) resamples the seeds
and, once per resample, the test maps (paired between the arms, stratified by condition x
class), applying the same maps to every drawn seed; the statistic of one resample is the mean
over its drawn seeds of delta (:func:`crossed_deltas`, which says which variance components
the interval covers). Each verdict is given on four claims (:data:`CLAIMS`): the pooled AUROC,
the condition-macro AUROC (mean of cold and warm AUROC: detection within a condition, blind to
whether one threshold serves both), and each condition; the verdicts are tests against a
margin with a family-wise correction (:mod:`hdmap_ad.report.verdicts`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from hdmap_ad.config import CLAIMS
from hdmap_ad.gating import is_per_condition
from hdmap_ad.metrics.experiment import gate_summary
from hdmap_ad.metrics.image import accuracy_at, round_floats
from hdmap_ad.report import verdicts

#: Percentiles of the reported interval (a 95% percentile bootstrap interval).
PERCENTILES = (2.5, 97.5)
#: Conditions reported first, in this order; any other value follows, sorted.
CONDITION_ORDER = ("cold", "warm")
#: Resampled values ranked at once (memory bound of the vectorised AUROC).
_CHUNK_VALUES = 2_000_000

CLAIM_TEXT = {
    "pooled": "AUROC over all test maps (cold and warm pooled)",
    "condition_macro": "condition-macro AUROC (mean of the cold and the warm AUROC)",
    "cold": "AUROC on the cold test maps",
    "warm": "AUROC on the warm test maps",
}
BOOTSTRAP_METHOD = (
    "crossed (pigeonhole) paired bootstrap over reference seeds x test maps: each resample "
    "draws the reference seeds with replacement and one resample of the test maps (stratified "
    "by condition x class, the same maps for both arms and for every drawn seed; a seed lacking "
    "a drawn map, one of its own held-out references, evaluates the drawn maps it has); its "
    "statistic is the mean over the drawn seeds of delta (B - A); 95% percentile interval"
)
BOOTSTRAP_CITATION = (
    "Owen (2007), The pigeonhole bootstrap, Ann. Appl. Stat. 1(2):386-411; McCullagh (2000), "
    "Resampling and exchangeable arrays, Bernoulli 6(2):285-301"
)
#: Which variance components the interval covers (see :func:`crossed_deltas`).
BOOTSTRAP_COVERS = (
    "covers the reference draw (seed effect), the test maps (map effect shared by all seeds) "
    "and their interaction (over-counted: mildly conservative); leaves out a new test "
    "population beyond these maps and variability the seeds do not vary. With few seeds the "
    "seed component is estimated from their spread only (an interval over 3 seeds cannot "
    "cover a large seed effect); with one seed the interval is conditional on that draw"
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
        auroc = {"a": a, "b": b, "delta": b - a, "ci95": _interval(boot_b - boot_a),
                 "resamples": boot_b - boot_a}

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
    with_resamples: bool = False,
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
        with_resamples: keep each group's ``(n_boot,)`` resampled delta AUROC as
            ``auroc.resamples`` (for tests on them; not JSON).

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
    if not with_resamples:
        for group in (out, *out.get("per_condition", {}).values()):
            group["auroc"].pop("resamples", None)
    return out


def _deployable_threshold(scores: pd.DataFrame) -> tuple[float | None, int]:
    cv = scores[scores.role == "reference_cv"]
    return (float(cv.score.max()) if len(cv) else None), int(len(cv))


def _test_rows(scores: pd.DataFrame, arm: str) -> pd.DataFrame:
    test = scores[scores.role == "test"]
    dup = test.image_id[test.image_id.duplicated()]
    if len(dup):
        raise ValueError(f"arm {arm}: duplicate test image_id, e.g. {dup.iloc[0]!r}")
    return test[["image_id", "label", "condition", "score"]]


def align_test_rows(scores_a: pd.DataFrame, scores_b: pd.DataFrame,
                    names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Test rows of two arms joined on ``image_id`` (columns ``image_id, label_a, label_b,
    condition_a, condition_b, score_a, score_b``), sorted by ``image_id``.

    Raises:
        ValueError: when the test image sets differ (counts named), an image_id repeats, or an
            image's label or condition differs between the arms.
    """
    na, nb = names
    test_a, test_b = _test_rows(scores_a, na), _test_rows(scores_b, nb)
    joined = test_a.merge(test_b, on="image_id", how="inner", suffixes=("_a", "_b"))
    if not (len(joined) == len(test_a) == len(test_b)):
        raise ValueError(
            "test image sets differ: "
            f"{na} has {len(test_a)}, {nb} has {len(test_b)}, {len(joined)} in common"
        )
    for col in ("label", "condition"):
        bad = joined[joined[f"{col}_a"].astype(str) != joined[f"{col}_b"].astype(str)]
        if len(bad):
            raise ValueError(
                f"{len(bad)} test images differ in {col} between the arms, "
                f"e.g. {bad.image_id.iloc[0]!r}"
            )
    return joined.sort_values("image_id", kind="stable").reset_index(drop=True)


def compare_experiments(
    scores_a: pd.DataFrame,
    scores_b: pd.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    margin: float = verdicts.DEFAULT_MARGIN,
    correction: str = "holm",
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
        margin: verdict margin in AUROC units (``hdmap_ad.report.verdicts``).
        correction: family-wise correction over the verdicts reported here (all maps and each
            condition): ``holm`` or ``none``.

    Returns:
        JSON-ready dict, stable key order, floats rounded (``round_floats``): ``verdict``,
        ``verdict_rule``, ``margin``, ``correction``, ``family_size``, ``p_method``,
        ``level``, ``thresholds`` (deployable threshold and reference_cv count per arm), then
        the :func:`paired_bootstrap` fields, with ``p_raw`` and ``p_adjusted``; each
        ``per_condition`` entry carries its own ``verdict`` and p-values.

    Raises:
        ValueError: when the test image sets differ (counts named), an image_id repeats, or an
            image's label or condition differs between the arms.
    """
    joined = align_test_rows(scores_a, scores_b)
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
        with_resamples=True,
    )
    per_condition = boot.pop("per_condition")
    groups = [boot, *per_condition.values()]
    family = [g for g in groups if g["auroc"]["delta"] is not None]
    method = verdicts.p_method(n_boot, len(family))
    raw = [verdicts.p_values(g["auroc"]["resamples"], g["auroc"]["delta"], margin, method)
           for g in family]
    for g, r, a in zip(family, raw, verdicts.adjust(raw, correction), strict=True):
        g.update(verdict=verdicts.decide(a), p_raw=r, p_adjusted=a)
    for g in groups:
        g["auroc"].pop("resamples", None)
        g.setdefault("verdict", "inconclusive")
    out: dict[str, Any] = {
        "verdict": boot.pop("verdict"),
        "verdict_rule": verdicts.VERDICT_RULE,
        "margin": float(margin),
        "correction": correction,
        "family_size": len(family),
        "p_method": method,
        "level": verdicts.LEVEL,
        "thresholds": {
            "a": {"deployable": thr_a, "reference_cv_scored": n_cv_a},
            "b": {"deployable": thr_b, "reference_cv_scored": n_cv_b},
        },
        **boot,
        "per_condition": per_condition,
    }
    return round_floats(out)


# -- crossed bootstrap over reference draws x test maps --------------------------------------
@dataclass(frozen=True)
class Draw:
    """One reference draw of a hypothesis: both arms scored on the same test maps.

    ``y`` (N,) 0/1 with 1 = fault; ``conditions`` (N,) str (``cold``/``warm``; one value
    everywhere when the data has none); ``s_a``/``s_b`` (N,) scores of arms A and B;
    ``thr_a``/``thr_b`` their deployable thresholds (None: no accuracy comparison);
    ``map_ids`` (N,) the maps' ids (str), which align the draws of one domain (default: the
    positions, for draws that score the same maps in the same order).
    """

    y: np.ndarray
    conditions: np.ndarray
    s_a: np.ndarray
    s_b: np.ndarray
    thr_a: float | None = None
    thr_b: float | None = None
    map_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        y = np.asarray(self.y).astype(np.int64)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "conditions", np.asarray(self.conditions).astype(str))
        object.__setattr__(self, "s_a", np.asarray(self.s_a, dtype=np.float64))
        object.__setattr__(self, "s_b", np.asarray(self.s_b, dtype=np.float64))
        ids = np.arange(len(y)) if self.map_ids is None else np.asarray(self.map_ids)
        object.__setattr__(self, "map_ids", ids.astype(str))
        if y.ndim != 1 or any(np.shape(x) != y.shape
                              for x in (self.conditions, self.s_a, self.s_b, self.map_ids)):
            raise ValueError("a draw's y, conditions, s_a, s_b and map_ids must be (N,) alike")
        if len(np.unique(self.map_ids)) != len(y):
            raise ValueError("a draw's map_ids repeat")
        if not 0 < y.sum() < len(y):
            raise ValueError(f"both classes are needed: {int(y.sum())} fault, "
                             f"{int(len(y) - y.sum())} good")


def draw_strata(draw: Draw) -> list[np.ndarray]:
    """Positions of the resampling strata of a draw, in draw order: for each condition
    (``cold``, ``warm``, then others sorted), its faults, then its goods."""
    out = []
    for c in _condition_order(draw.conditions):
        m = draw.conditions == c
        out += [np.flatnonzero(m & (draw.y == 1)), np.flatnonzero(m & (draw.y == 0))]
    return out


def stratified_counts(strata: list[np.ndarray], n_maps: int, n_rows: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``(n_rows, n_maps)`` multiplicities of the maps in ``n_rows`` stratified resamples.

    Draw order: for each stratum in turn, ``rng.integers(0, n, size=(n_rows, n))`` over its
    ``n`` positions (an empty stratum draws nothing); each stratum keeps its size.
    """
    counts = np.zeros((n_rows, n_maps), dtype=np.int64)
    offsets = (np.arange(n_rows, dtype=np.int64) * n_maps)[:, None]
    for at in strata:
        if len(at):
            idx = at[rng.integers(0, len(at), size=(n_rows, len(at)))]
            counts += np.bincount((offsets + idx).ravel(),
                                  minlength=n_rows * n_maps).reshape(n_rows, n_maps)
    return counts


class _Deltas:
    """Delta AUROC / deployable accuracy (B - A) of one draw under resampling weights.

    With multiplicities ``w`` of the maps, a resample's AUROC is the AUROC of the multiset:
    ``sum_ij w_i w_j K[i, j] / (sum_i w_i * sum_j w_j)`` over positives i and negatives j,
    ``K = 1[s_i > s_j] + 1/2 1[s_i == s_j]`` (the Mann-Whitney statistic, ties one half, as
    sklearn); both arms see the same ``w``, so delta AUROC is the same form over ``K_b - K_a``:
    one matrix product per condition gives every claim of every resample at once. The
    denominators are the resample's own weights (not the draw's counts) because a resample of
    the union of several seeds' test maps can draw a map this seed did not score (one of its
    held-out references): the seed then evaluates the drawn maps it has. A claim whose
    resample holds no positive or no negative is NaN in that resample.
    """

    def __init__(self, draw: Draw):
        self.draw = draw
        pos, neg = draw.y == 1, draw.y == 0
        self.pos_at, self.neg_at = np.flatnonzero(pos), np.flatnonzero(neg)
        self.conds = _condition_order(draw.conditions)
        self.pos_cond = draw.conditions[self.pos_at]
        self.neg_cond = draw.conditions[self.neg_at]

        def kernel(s: np.ndarray) -> np.ndarray:
            p, q = s[self.pos_at][:, None], s[self.neg_at][None, :]
            return (p > q).astype(np.float64) + 0.5 * (p == q)

        self.k_delta = kernel(draw.s_b) - kernel(draw.s_a)  # (P, Q)
        self.correct = None
        if draw.thr_a is not None and draw.thr_b is not None:
            self.correct = ((draw.s_b >= draw.thr_b) == (draw.y == 1)).astype(np.float64) - (
                (draw.s_a >= draw.thr_a) == (draw.y == 1)).astype(np.float64)

    def __call__(self, counts: np.ndarray) -> dict[str, dict[str, np.ndarray | None]]:
        """``{"auroc": {claim: (R,)}, "accuracy": {claim: (R,)}}`` for ``(R, N)`` counts;
        a claim undefined on this draw (a condition without both classes, no thresholds,
        no cold/warm for the macro) is None."""
        w = counts.astype(np.float64)
        wp, wn = w[:, self.pos_at], w[:, self.neg_at]
        auroc: dict[str, np.ndarray | None] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            m = wp @ self.k_delta  # (R, Q): every positive against each negative
            auroc["pooled"] = (m * wn).sum(axis=1) / (wp.sum(axis=1) * wn.sum(axis=1))
            for c in self.conds:
                pc, nc = self.pos_cond == c, self.neg_cond == c
                auroc[c] = ((wp[:, pc] @ self.k_delta[np.ix_(pc, nc)] * wn[:, nc]).sum(axis=1)
                            / (wp[:, pc].sum(axis=1) * wn[:, nc].sum(axis=1))
                            if pc.any() and nc.any() else None)
            accuracy: dict[str, np.ndarray | None] = dict.fromkeys(auroc)
            if self.correct is not None:
                accuracy["pooled"] = w @ self.correct / w.sum(axis=1)
                for c in self.conds:
                    at = self.draw.conditions == c
                    accuracy[c] = w[:, at] @ self.correct[at] / w[:, at].sum(axis=1)
        out = {"auroc": auroc, "accuracy": accuracy}
        for stats in out.values():
            cold, warm = stats.get("cold"), stats.get("warm")
            stats["condition_macro"] = (None if cold is None or warm is None
                                        else (cold + warm) / 2.0)
            for c in CLAIMS:
                stats.setdefault(c, None)
        return out


Deltas = dict[str, dict[str, "np.ndarray | None"]]


def _union_maps(draws: Sequence[Draw]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 list[np.ndarray]]:
    """The union of the draws' test maps: ``(ids, y, conditions, positions)``, ids sorted,
    and for each draw the union position of each of its maps. Raises ValueError when a map's
    label or condition differs between draws."""
    ids = np.unique(np.concatenate([d.map_ids for d in draws]))
    y = np.full(len(ids), -1, dtype=np.int64)
    cond = np.empty(len(ids), dtype=object)
    positions = []
    for k, d in enumerate(draws):
        at = np.searchsorted(ids, d.map_ids)
        seen = y[at] >= 0
        if (y[at][seen] != d.y[seen]).any() or (cond[at][seen] != d.conditions[seen]).any():
            raise ValueError(f"reference draw {k}: a test map's label or condition differs "
                             "from another draw's")
        y[at], cond[at] = d.y, d.conditions
        positions.append(at)
    return ids, y, cond.astype(str), positions


def crossed_deltas(
    draws: Sequence[Draw], n_boot: int, rng: np.random.Generator
) -> tuple[Deltas, list[Deltas]]:
    """Paired bootstrap of delta AUROC and delta deployable accuracy (B - A) over reference
    seeds crossed with test maps.

    Every reference seed scores (nearly) the same test maps: seeds and maps are crossed, not
    nested. Each resample therefore draws the seeds with replacement **and one** stratified
    resample of the test maps (condition x class strata over the union of the seeds' maps,
    the same maps for both arms), applies that same multiset of maps to every drawn seed, and
    takes the mean over the drawn seeds of delta. A seed lacking a drawn map (one of its own
    held-out references) evaluates the drawn maps it has (:class:`_Deltas`). This is the
    pigeonhole bootstrap of Owen (2007), *The pigeonhole bootstrap*, Ann. Appl. Stat. 1(2):
    386-411, for a two-factor crossed random-effects design (seeds x maps), and the scheme
    McCullagh (2000), *Resampling and exchangeable arrays*, Bernoulli 6(2), shows to be
    mildly conservative.

    Variance components: with ``delta[s, t] = mu + r_s + m_t + e_st`` (seed effect, map
    effect shared by all seeds, seed x map interaction), the mean over S seeds and T maps has
    variance ``s_r^2 / S + s_m^2 / T + s_e^2 / (S T)``. The resampled means carry about
    ``s_r^2 / S + s_m^2 / T + 3 s_e^2 / (S T)`` (Owen 2007, Theorem 2): all three components
    are covered, the interaction over-counted (conservative). Left out: the sampling of the
    test set's own distribution beyond these maps (a new recording campaign), the choice of
    training maps the references are drawn from, and the method's variability beyond what the
    seeds vary. With few seeds the seed component is estimated from S values only: a
    percentile bootstrap over S seeds cannot put an interval wider than their spread, so a
    seed effect large against the map-level standard error is under-covered at S = 3
    (``make bench-verdicts`` shows it); with one seed the interval is conditional on that
    draw. The interval narrows with more seeds only through the seed and interaction
    components: S identical copies of one draw give exactly that draw's interval.

    Draw order (what a reimplementation must repeat to get the same numbers): first the maps,
    :func:`stratified_counts` of ``n_boot`` rows over the union's strata (:func:`draw_strata`
    of the union, ids sorted); then the seeds, ``rng.integers(0, S, size=(n_boot, S))``.

    Args:
        draws: the reference draws (seeds), each with both arms' scores and map ids.
        n_boot: resamples (>= 1).
        rng: the generator (consumed).

    Returns:
        ``(crossed, per_seed)``: ``crossed`` is ``{"auroc": {claim: (n_boot,) | None},
        "accuracy": {claim: ...}}`` for every claim of :data:`CLAIMS` (None where a claim is
        undefined on some draw); ``per_seed[k]`` holds draw k's deltas under the same map
        resamples (its single-draw bootstrap, the reference draw held fixed).
    """
    if not draws:
        raise ValueError("no draws to resample")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    ids, y, cond, positions = _union_maps(draws)
    union = Draw(y, cond, np.zeros(len(y)), np.zeros(len(y)), map_ids=ids)
    counts = stratified_counts(draw_strata(union), len(ids), n_boot, rng)
    n_seeds = len(draws)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    weight = np.stack([(picks == s).sum(axis=1) for s in range(n_seeds)], axis=1)  # (B, S)
    per_seed = [_Deltas(d)(counts[:, at]) for d, at in zip(draws, positions, strict=True)]
    crossed: Deltas = {}
    for metric in ("auroc", "accuracy"):
        crossed[metric] = {}
        for c in CLAIMS:
            vals = [p[metric][c] for p in per_seed]
            if any(v is None for v in vals):
                crossed[metric][c] = None
                continue
            v = np.stack(vals, axis=1)  # (B, S)
            w = np.where(np.isnan(v), 0, weight)
            with np.errstate(invalid="ignore"):
                crossed[metric][c] = (np.where(w > 0, v, 0.0) * w).sum(axis=1) / w.sum(axis=1)
    return crossed, per_seed


def _aurocs(y: np.ndarray, s: np.ndarray, cond: np.ndarray) -> dict[str, float | None]:
    """Full-sample AUROC of one arm per claim."""
    def auc(m: np.ndarray) -> float | None:
        return float(roc_auc_score(y[m], s[m])) if 0 < y[m].sum() < m.sum() else None

    out = {"pooled": auc(np.ones(len(y), bool)),
           **{c: auc(cond == c) for c in ("cold", "warm")}}
    out["condition_macro"] = (None if out["cold"] is None or out["warm"] is None
                              else (out["cold"] + out["warm"]) / 2.0)
    return out


def _accuracies(y: np.ndarray, s: np.ndarray, thr: float | None,
                cond: np.ndarray) -> dict[str, float | None]:
    if thr is None:
        return dict.fromkeys(CLAIMS)
    out = {"pooled": accuracy_at(y, s, thr),
           **{c: accuracy_at(y[cond == c], s[cond == c], thr) if (cond == c).any() else None
              for c in ("cold", "warm")}}
    out["condition_macro"] = (None if out["cold"] is None or out["warm"] is None
                              else (out["cold"] + out["warm"]) / 2.0)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _rng(seed: int, domain: str, budget: int | None, stream: int) -> np.random.Generator:
    """Independent, reproducible stream per hypothesis seed x domain x budget x use (0: the
    crossed bootstrap, whose map resamples also give each seed's single-draw interval)."""
    key = zlib.crc32(str(domain).encode())
    return np.random.default_rng([int(seed), key, 0 if budget is None else int(budget),
                                  int(stream)])


def _ci(boot: np.ndarray | None) -> list[float] | None:
    return None if boot is None else _interval(boot)


def routing_by_label(tests: Sequence[pd.DataFrame]) -> dict[str, Any]:
    """The gate's routing of test maps summed over draws, split by condition x label
    (``hdmap_ad.metrics.experiment.gate_summary``), with the share sent to the other condition's
    sub-model per group and the overall gate accuracy."""
    decisions: dict[str, dict[str, int]] = {}
    for test in tests:
        for group, d in gate_summary(test, True).get("decisions", {}).items():
            tot = decisions.setdefault(group, {"to_cold": 0, "to_warm": 0})
            tot["to_cold"] += d["to_cold"]
            tot["to_warm"] += d["to_warm"]
    misrouted, right, total = {}, 0, 0
    for group, d in decisions.items():
        cond = group.split("/")[0]
        n = d["to_cold"] + d["to_warm"]
        wrong = d["to_warm"] if cond == "cold" else d["to_cold"]
        misrouted[group] = wrong / n if n else None
        right, total = right + n - wrong, total + n
    return {"decisions": decisions, "misrouted": misrouted,
            "accuracy": right / total if total else None}


def _test_frame(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[scores.role == "test"]


def budget_verdicts(
    pairs: Sequence[dict[str, Any]], tables: dict[str, pd.DataFrame], n_boot: int, seed: int,
    claim: str, domain: str,
) -> tuple[dict[str, Any], Deltas]:
    """The entry of one domain x budget over its reference seeds, without its verdicts (they
    depend on the whole family: :func:`apply_verdicts`).

    Args:
        pairs: the spec's pairs of this domain and budget, one per reference seed, in seed
            order (``variant_a/b[/oracle]``, ``scores_a/b[/oracle]``, ``seed``, ``budget``).
        tables: scores path -> scores table (``image_id, role, label, condition, score``,
            ``gate`` where gated).
        n_boot, seed, claim: the hypothesis's bootstrap size, seed and claim.
        domain: the domain (keys the random stream).

    Returns:
        ``(entry, boot)``: the JSON entry (see :func:`hypothesis_report`) and the crossed
        resampled deltas (:func:`crossed_deltas`; for the verdicts and the macro over domains).
    """
    budget = pairs[0]["budget"]
    draws, per_seed = [], []
    for pair in pairs:
        sa, sb = tables[pair["scores_a"]], tables[pair["scores_b"]]
        j = align_test_rows(sa, sb)
        thr_a, n_cv_a = _deployable_threshold(sa)
        thr_b, n_cv_b = _deployable_threshold(sb)
        draw = Draw((j.label_a.astype(str) != "good").to_numpy(), j.condition_a.astype(str),
                    j.score_a.to_numpy(np.float64), j.score_b.to_numpy(np.float64),
                    thr_a, thr_b, j.image_id.astype(str).to_numpy())
        draws.append(draw)
        au_a, au_b = (_aurocs(draw.y, s, draw.conditions) for s in (draw.s_a, draw.s_b))
        ac_a = _accuracies(draw.y, draw.s_a, thr_a, draw.conditions)
        ac_b = _accuracies(draw.y, draw.s_b, thr_b, draw.conditions)

        def block(a: dict, b: dict) -> dict[str, Any]:
            return {c: {"a": a[c], "b": b[c],
                        "delta": None if a[c] is None or b[c] is None else b[c] - a[c]}
                    for c in CLAIMS}

        per_seed.append({
            "ref_seed": pair["seed"], "a": pair["variant_a"], "b": pair["variant_b"],
            "n": int(len(draw.y)), "n_good": int((draw.y == 0).sum()),
            "n_fault": int(draw.y.sum()),
            "thresholds": {"a": {"deployable": thr_a, "reference_cv_scored": n_cv_a},
                           "b": {"deployable": thr_b, "reference_cv_scored": n_cv_b}},
            "auroc": block(au_a, au_b),
            "accuracy_deployable": block(ac_a, ac_b),
        })
    boot, singles = crossed_deltas(draws, n_boot, _rng(seed, domain, budget, 0))
    for entry_k, single in zip(per_seed, singles, strict=True):
        for metric, key in (("auroc", "auroc"), ("accuracy", "accuracy_deployable")):
            for c in CLAIMS:
                entry_k[key][c]["ci95"] = _ci(single[metric][c])

    claims: dict[str, Any] = {}
    for c in CLAIMS:
        entry: dict[str, Any] = {}
        for metric, key in (("auroc", "auroc"), ("accuracy", "accuracy_deployable")):
            seeds = [p[key][c] for p in per_seed]
            deltas = [x["delta"] for x in seeds]
            entry[key] = {
                "a": _mean([x["a"] for x in seeds]), "b": _mean([x["b"] for x in seeds]),
                "delta": _mean(deltas), "ci95": _ci(boot[metric][c]),
                "seed_deltas": deltas,
                "single_draw": {"ref_seed": per_seed[0]["ref_seed"],
                                "delta": seeds[0]["delta"], "ci95": seeds[0]["ci95"]},
            }
        claims[c] = entry

    first = per_seed[0]
    out: dict[str, Any] = {
        "budget": budget,
        "seeds": [p["seed"] for p in pairs],
        "ref_seed": None,
        "a": pairs[0]["arm_a"], "b": pairs[0]["arm_b"],
        "variants_a": [p["variant_a"] for p in pairs],
        "variants_b": [p["variant_b"] for p in pairs],
        "n": first["n"], "n_good": first["n_good"], "n_fault": first["n_fault"],
        "claim": claim,
        "claims": claims,
        "per_condition": {
            c: {"n": int((draws[0].conditions == c).sum()),
                "n_good": int(((draws[0].conditions == c) & (draws[0].y == 0)).sum()),
                "n_fault": int(((draws[0].conditions == c) & (draws[0].y == 1)).sum())}
            for c in ("cold", "warm") if (draws[0].conditions == c).any()
        },
    }
    routing: dict[str, Any] = {}
    for arm, gate_key, path_key in (("a", "gate_a", "scores_a"), ("b", "gate_b", "scores_b"),
                                    ("oracle", "gate_oracle", "scores_oracle")):
        gate = pairs[0].get(gate_key)
        if gate and is_per_condition(gate) and path_key in pairs[0]:
            routing[arm] = {"experiment": pairs[0].get(f"arm_{arm}"), "gate": gate,
                            **routing_by_label([_test_frame(tables[p[path_key]])
                                                for p in pairs])}
    if routing:
        out["gate_routing"] = routing
    if "scores_oracle" in pairs[0]:
        oracle_auroc, delta_vs_b = [], []
        for p in pairs:
            jo = align_test_rows(tables[p["scores_b"]], tables[p["scores_oracle"]],
                                 ("B", "oracle"))
            y = (jo.label_a.astype(str) != "good").to_numpy().astype(np.int64)
            cond = jo.condition_a.astype(str).to_numpy()
            au_o = _aurocs(y, jo.score_b.to_numpy(np.float64), cond)
            au_b = _aurocs(y, jo.score_a.to_numpy(np.float64), cond)
            oracle_auroc.append(au_o)
            delta_vs_b.append({c: None if au_o[c] is None or au_b[c] is None
                               else au_o[c] - au_b[c] for c in CLAIMS})
        out["oracle"] = {
            "experiment": pairs[0].get("arm_oracle"),
            "variants": [p["variant_oracle"] for p in pairs],
            "auroc": {c: _mean([x[c] for x in oracle_auroc]) for c in CLAIMS},
            "delta_vs_b": {c: _mean([x[c] for x in delta_vs_b]) for c in CLAIMS},
        }
    out["per_seed"] = per_seed
    return out, boot


def macro_verdicts(
    entries: dict[str, dict[str, Any]], boots: dict[str, Deltas], claim: str,
) -> tuple[dict[str, Any], Deltas]:
    """The macro average over domains of one budget: the mean of the per-domain deltas, and
    its interval from the per-domain crossed resamples (independent streams per domain: the
    domains' test maps and references are disjoint) averaged resample by resample.

    Args:
        entries: domain -> its :func:`budget_verdicts` entry for this budget.
        boots: domain -> its resampled deltas (same ``n_boot``).
        claim: as the hypothesis.

    Returns:
        ``(entry, boot)`` as :func:`budget_verdicts`, without verdicts.
    """
    domains = list(entries)
    claims: dict[str, Any] = {}
    macro_boot: Deltas = {"auroc": {}, "accuracy": {}}
    for c in CLAIMS:
        block = {}
        for metric, key in (("auroc", "auroc"), ("accuracy", "accuracy_deployable")):
            per = [entries[d]["claims"][c][key] for d in domains]
            bs = [boots[d][metric][c] for d in domains]
            boot = None if any(b is None for b in bs) else np.mean(bs, axis=0)
            macro_boot[metric][c] = boot
            block[key] = {"a": _mean([x["a"] for x in per]), "b": _mean([x["b"] for x in per]),
                          "delta": _mean([x["delta"] for x in per]), "ci95": _ci(boot),
                          "domain_deltas": {d: x["delta"] for d, x in zip(domains, per,
                                                                           strict=True)}}
        claims[c] = block
    first = entries[domains[0]]
    return ({"budget": first["budget"], "domains": domains, "seeds": first["seeds"],
             "claim": claim, "claims": claims}, macro_boot)


def apply_verdicts(
    family: Sequence[tuple[dict[str, Any], Deltas]], margin: float, correction: str,
    n_boot: int,
) -> dict[str, Any]:
    """Decide every verdict of one hypothesis's family at once (``hdmap_ad.report.verdicts``).

    The family is every claim of every entry (domain x budget rows and macro rows) whose
    delta AUROC is defined. Each claim gains ``verdict``, ``p_raw`` and ``p_adjusted``
    (``{supported, refuted, equivalent}``); each entry gains its claimed ``verdict``,
    ``auroc`` and ``accuracy_deployable`` (before ``claims``) and its ``per_condition``
    verdicts. Entries are updated in place.

    Returns:
        ``{"correction", "family_size", "p_method", "level"}`` for the hypothesis's JSON.
    """
    slots = [(entry, c, boot["auroc"][c]) for entry, boot in family for c in CLAIMS
             if boot["auroc"][c] is not None and entry["claims"][c]["auroc"]["delta"] is not None]
    method = verdicts.p_method(n_boot, len(slots))
    raw = [verdicts.p_values(b, entry["claims"][c]["auroc"]["delta"], margin, method)
           for entry, c, b in slots]
    adjusted = verdicts.adjust(raw, correction)
    decided = {(id(entry), c): (r, a) for (entry, c, _), r, a in zip(slots, raw, adjusted,
                                                                     strict=True)}
    for entry, _ in family:
        for c in CLAIMS:
            r, a = decided.get((id(entry), c), (None, None))
            entry["claims"][c] = {"verdict": verdicts.decide(a), "p_raw": r, "p_adjusted": a,
                                  **entry["claims"][c]}
        claimed = entry["claims"][entry["claim"]]
        rebuilt: dict[str, Any] = {}
        for key, value in entry.items():
            if key == "claims":
                rebuilt.update(verdict=claimed["verdict"], auroc=claimed["auroc"],
                               accuracy_deployable=claimed["accuracy_deployable"])
            rebuilt[key] = value
        for c, counts in rebuilt.get("per_condition", {}).items():
            counts["verdict"] = entry["claims"][c]["verdict"]
        entry.clear()
        entry.update(rebuilt)
    return {"correction": correction, "family_size": len(slots), "p_method": method,
            "level": verdicts.LEVEL}


HELD_OUT = {
    "test_good_holdout": "the references are test/good maps held out of scoring (every other "
                         "test map is scored)",
    "user_leaky": "the references are the extreme test/good maps and are scored again "
                  "(leaky: the user's protocol)",
    "train": "the references are train/good maps; every test map is scored",
    "full": "all train/good maps are the references; every test map is scored",
}


def _seed_effect(refs: dict[str, Any]) -> str:
    if refs["protocol"] == "train" or (refs["protocol"] == "test_good_holdout"
                                       and refs["pick"] == "random"):
        return ("each seed re-draws the references and the method's seed (e.g. the coreset "
                "start)")
    return ("the references are the same for every seed (pick: extremes, user_leaky or full); "
            "the seeds vary the method's seed only")


def _overall(verdicts: Sequence[str]) -> str | None:
    found = sorted(set(verdicts))
    if not found:
        return None
    return found[0] if len(found) == 1 else "mixed: " + ", ".join(found)


def hypothesis_report(spec: dict[str, Any]) -> dict[str, Any]:
    """The verdict file of one hypothesis.

    Args:
        spec: ``{"key", "a", "b", "oracle", "description", "n_boot", "seed", "margin",
            "claim", "claim_default", "protocol", "pairs": [{domain, budget, seed, variant_a,
            variant_b, scores_a, scores_b[, variant_oracle, scores_oracle]}]}``; a pair
            compares the scores Parquet files of two concrete runs of the same budget and
            reference seed. ``protocol`` (``hdmap_ad.config.Params.hypothesis_protocol``) is
            copied into the result with the held-out rule in words.

    Returns:
        ``{hypothesis, description, a, b, claim, claim_rule, verdict, verdict_macro,
        verdict_rule, margin, correction, family_size, p_method, level, bootstrap, protocol,
        results: {domain: [entry per budget]},
        macro: [entry per budget]}``. An entry holds ``claims`` (each of :data:`CLAIMS`:
        ``verdict``, ``auroc`` and ``accuracy_deployable`` as ``{a, b, delta, ci95,
        seed_deltas, single_draw}``: means over seeds, the crossed interval, each seed's
        delta, and the first seed's single-draw interval under the same map resamples;
        ``p_raw``/``p_adjusted`` of the three tests), the claimed ones again as
        ``verdict``/``auroc``/``accuracy_deployable``, ``per_condition`` counts and verdicts,
        ``gate_routing`` (gated arms: decisions by condition x label summed over seeds),
        ``oracle`` (when given) and ``per_seed``. ``verdict`` is the common claimed verdict of
        all domain x budget entries (``mixed: ...`` otherwise); ``verdict_macro`` that of the
        macro rows (None with one domain).
    """
    import pyarrow.parquet as pq

    claim = spec.get("claim") or "pooled"
    protocol = dict(spec.get("protocol") or {})
    arms = protocol.get("arms", {})
    cols = ["image_id", "role", "label", "condition", "score"]
    tables: dict[str, pd.DataFrame] = {}
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for pair in spec["pairs"]:
        pair = {**pair, "arm_a": spec["a"], "arm_b": spec["b"],
                "arm_oracle": spec.get("oracle"),
                **{f"gate_{arm}": arms.get(arm, {}).get("gate") for arm in ("a", "b", "oracle")}}
        for key in ("scores_a", "scores_b", "scores_oracle"):
            path = pair.get(key)
            if path and path not in tables:
                have = set(pq.read_schema(path).names)
                tables[path] = pd.read_parquet(path, columns=cols + (["gate"] if "gate" in have
                                                                     else []))
        groups.setdefault((pair["domain"], pair["budget"]), []).append(pair)
    results: dict[str, list[dict[str, Any]]] = {}
    boots: dict[Any, dict[str, Any]] = {}
    for (domain, budget), pairs in groups.items():
        entry, boot = budget_verdicts(pairs, tables, spec["n_boot"], spec["seed"], claim,
                                      domain)
        results.setdefault(domain, []).append(entry)
        boots.setdefault(budget, {})[domain] = (entry, boot)
    family = [eb for by_domain in boots.values() for eb in by_domain.values()]
    macro = []
    if len(results) > 1:
        for by_domain in boots.values():
            m_entry, m_boot = macro_verdicts({d: e for d, (e, _) in by_domain.items()},
                                             {d: b for d, (_, b) in by_domain.items()}, claim)
            macro.append(m_entry)
            family.append((m_entry, m_boot))
    margin = float(spec.get("margin", verdicts.DEFAULT_MARGIN))
    correction = spec.get("correction") or "holm"
    tests = apply_verdicts(family, margin, correction, int(spec["n_boot"]))
    refs = protocol.get("references")
    if refs:
        protocol["held_out"] = HELD_OUT.get(refs["protocol"], "")
        protocol["seed_effect"] = _seed_effect(refs)
    rule = ("default: the arms differ in gate, so the claim is detection within a condition"
            if claim == "condition_macro" and spec.get("claim_default") else
            "default: the arms do not differ in gate" if spec.get("claim_default") else
            "set in params (hypotheses.<key>.claim)")
    out: dict[str, Any] = {
        "hypothesis": spec["key"], "description": spec["description"],
        "a": spec["a"], "b": spec["b"],
        **({"oracle": spec["oracle"]} if spec.get("oracle") else {}),
        "claim": claim,
        "claim_text": CLAIM_TEXT[claim],
        "claim_rule": rule,
        "verdict": _overall([r["verdict"] for rs in results.values() for r in rs]),
        "verdict_macro": _overall([m["verdict"] for m in macro]),
        "verdict_rule": verdicts.VERDICT_RULE,
        "margin": margin,
        **tests,
        "bootstrap": {"method": BOOTSTRAP_METHOD, "citation": BOOTSTRAP_CITATION,
                      "covers": BOOTSTRAP_COVERS,
                      "n_boot": int(spec["n_boot"]), "seed": int(spec["seed"]),
                      "single_draw": "single_draw: the first seed's test maps resampled alone "
                                     "(the reference draw held fixed), for comparison"},
        "protocol": protocol,
        "results": results,
    }
    if macro:
        out["macro"] = macro
    return round_floats(out)
