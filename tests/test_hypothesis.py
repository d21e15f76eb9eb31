import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hdmap_ad.report.hypothesis import (
    batched_auroc,
    compare_experiments,
    paired_bootstrap,
    stratified_indices,
)
from hdmap_ad.report.verdicts import LEVEL, adjust, decide, holm, p_method, p_values


def verdict(boot, estimate, margin=0.0, method="bootstrap"):
    """The verdict of one comparison (a family of one)."""
    return decide(p_values(boot, estimate, margin, method))


def _data(seed=0, n=120, shift=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], [n - n // 3, n // 3])
    s_a = rng.normal(0, 1, n) + shift * y
    s_b = s_a + rng.normal(0, 0.5, n) + 0.3 * y
    cond = np.where(rng.random(n) < 0.5, "cold", "warm")
    return y, s_a, s_b, cond


def test_identical_scores_give_exact_zero():
    y, s, _, cond = _data()
    out = paired_bootstrap(y, s, s.copy(), 0.5, 0.5, n_boot=300, seed=1, conditions=cond)
    assert out["auroc"]["delta"] == 0.0
    assert out["auroc"]["ci95"] == [0.0, 0.0]
    assert out["accuracy_deployable"]["delta"] == 0.0
    assert out["accuracy_deployable"]["ci95"] == [0.0, 0.0]
    out = paired_bootstrap(y, s, s.copy(), 0.5, 0.5, n_boot=300, seed=1, with_resamples=True)
    # identical arms: no difference at all, so equivalent at any positive margin
    assert verdict(out["auroc"]["resamples"], 0.0, margin=0.005) == "equivalent"
    assert verdict(out["auroc"]["resamples"], 0.0, margin=0.005, method="normal") \
        == "equivalent"
    assert verdict(out["auroc"]["resamples"], 0.0, margin=0.0) == "inconclusive"


def test_perfect_vs_random_supported_and_reversed_refuted():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], [60, 40])
    random = rng.random(100)
    perfect = y + rng.random(100) * 0.5
    out = paired_bootstrap(y, random, perfect, None, None, n_boot=500, seed=0,
                           with_resamples=True)
    lo, hi = out["auroc"]["ci95"]
    assert 0 < lo <= hi
    assert verdict(out["auroc"]["resamples"], out["auroc"]["delta"]) == "supported"
    assert out["accuracy_deployable"] == {"a": None, "b": None, "delta": None, "ci95": None}
    rev = paired_bootstrap(y, perfect, random, None, None, n_boot=500, seed=0,
                           with_resamples=True)
    assert rev["auroc"]["ci95"][1] < 0
    assert verdict(rev["auroc"]["resamples"], rev["auroc"]["delta"]) == "refuted"
    assert "resamples" not in paired_bootstrap(y, random, perfect, None, None, n_boot=50)["auroc"]


def _normal_boot(center, sd=0.01, n=4000, seed=0):
    return np.random.default_rng(seed).normal(center, sd, n)


@pytest.mark.parametrize("method", ["bootstrap", "normal"])
def test_four_verdicts_against_the_margin(method):
    # sd 0.01: a one-sided 2.5% test needs about 1.96 sd between the estimate and the bound
    assert verdict(_normal_boot(0.04), 0.04, 0.005, method) == "supported"
    assert verdict(_normal_boot(0.015), 0.015, 0.005, method) == "inconclusive"
    assert verdict(_normal_boot(-0.04), -0.04, 0.005, method) == "refuted"
    assert verdict(_normal_boot(0.0, sd=0.002), 0.0, 0.005, method) == "equivalent"
    # a tiny consistent gain is equivalent, not supported, once a margin counts
    assert verdict(_normal_boot(0.0002, sd=0.00005), 0.0002, 0.0, method) == "supported"
    assert verdict(_normal_boot(0.0002, sd=0.00005), 0.0002, 0.005, method) == "equivalent"
    # equivalence needs both sides: a wide distribution around 0 is inconclusive
    assert verdict(_normal_boot(0.0, sd=0.02), 0.0, 0.005, method) == "inconclusive"


def test_bootstrap_p_values_count_the_null_side_with_add_one():
    boot = np.array([-0.02, -0.01, 0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    p = p_values(boot, 0.02, margin=0.005)
    assert p["supported"] == pytest.approx((1 + 3) / 10)  # -0.02, -0.01, 0.0 <= 0.005
    assert p["refuted"] == pytest.approx((1 + 7) / 10)  # 0.0 .. 0.06 are >= -0.005
    assert p["equivalent"] == pytest.approx(max((1 + 6) / 10, (1 + 2) / 10))


def test_p_method_switches_to_normal_when_the_corrected_level_is_unresolved():
    assert p_method(2000, 1) == "bootstrap"
    assert p_method(2000, 5) == "bootstrap"  # 2001 * 0.025 / 5 = 10 resamples in the tail
    assert p_method(2000, 6) == "normal"
    assert p_method(100000, 20) == "bootstrap"


def test_holm_matches_a_worked_example():
    # Holm (1979): p sorted 0.01, 0.02, 0.03, 0.04 with m = 4 -> 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    raw = [{"supported": 0.01, "refuted": 0.9, "equivalent": 0.5},
           {"supported": 0.02, "refuted": 0.8, "equivalent": 0.001}]
    adj = adjust(raw, "holm")
    assert adj[0]["supported"] == pytest.approx(0.02)
    assert adj[1]["supported"] == pytest.approx(0.02)
    assert adj[1]["equivalent"] == pytest.approx(0.002)
    assert adjust(raw, "none") == raw
    # a raw 0.01 supports alone, not in a family of four at the one-sided 2.5% level
    assert decide(raw[0]) == "supported"
    assert decide(adjust([raw[0]] * 4, "holm")[0]) == "inconclusive"
    assert LEVEL == 0.025


def test_point_estimate_matches_sklearn():
    y, s_a, s_b, _ = _data(5)
    out = paired_bootstrap(y, s_a, s_b, 0.3, 0.6, n_boot=50, seed=0)
    a, b = roc_auc_score(y, s_a), roc_auc_score(y, s_b)
    assert np.isclose(out["auroc"]["a"], a)
    assert np.isclose(out["auroc"]["delta"], b - a)
    acc_a = np.mean((s_a >= 0.3) == y)
    acc_b = np.mean((s_b >= 0.6) == y)
    assert np.isclose(out["accuracy_deployable"]["delta"], acc_b - acc_a)


def test_batched_auroc_matches_sklearn_with_ties():
    y, s, _, _ = _data(7, n=60)
    s = np.round(s, 1)  # plenty of ties
    pos_idx, neg_idx = stratified_indices(y, 5, np.random.default_rng(0))
    fast = batched_auroc(s[pos_idx], s[neg_idx])
    for b in range(5):
        yy = np.r_[np.ones(pos_idx.shape[1]), np.zeros(neg_idx.shape[1])]
        ss = np.r_[s[pos_idx[b]], s[neg_idx[b]]]
        assert np.isclose(fast[b], roc_auc_score(yy, ss))


def test_stratified_resamples_keep_class_counts():
    y = np.array([0, 1, 0, 0, 1, 0])
    pos_idx, neg_idx = stratified_indices(y, 10, np.random.default_rng(0))
    assert pos_idx.shape == (10, 2) and neg_idx.shape == (10, 4)
    assert (y[pos_idx] == 1).all() and (y[neg_idx] == 0).all()


def test_deterministic_per_seed():
    y, s_a, s_b, cond = _data(2)
    one = paired_bootstrap(y, s_a, s_b, 0.5, 0.5, n_boot=200, seed=4, conditions=cond)
    two = paired_bootstrap(y, s_a, s_b, 0.5, 0.5, n_boot=200, seed=4, conditions=cond)
    other = paired_bootstrap(y, s_a, s_b, 0.5, 0.5, n_boot=200, seed=5, conditions=cond)
    assert one == two
    assert one["auroc"]["ci95"] != other["auroc"]["ci95"]
    assert one["auroc"]["delta"] == other["auroc"]["delta"]


def test_interval_matches_slow_loop_with_same_draws():
    y, s_a, s_b, _ = _data(9, n=40)
    thr_a, thr_b, n_boot, seed = 0.2, 0.8, 150, 11
    out = paired_bootstrap(y, s_a, s_b, thr_a, thr_b, n_boot=n_boot, seed=seed)
    # the documented draw order: positives then negatives, one default_rng(seed)
    rng = np.random.default_rng(seed)
    pos_at, neg_at = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos = pos_at[rng.integers(0, len(pos_at), size=(n_boot, len(pos_at)))]
    neg = neg_at[rng.integers(0, len(neg_at), size=(n_boot, len(neg_at)))]
    d_auc, d_acc = [], []
    for b in range(n_boot):
        idx = np.r_[pos[b], neg[b]]
        yy = y[idx]
        d_auc.append(roc_auc_score(yy, s_b[idx]) - roc_auc_score(yy, s_a[idx]))
        d_acc.append(np.mean((s_b[idx] >= thr_b) == yy) - np.mean((s_a[idx] >= thr_a) == yy))
    assert np.allclose(out["auroc"]["ci95"], np.percentile(d_auc, [2.5, 97.5]))
    assert np.allclose(out["accuracy_deployable"]["ci95"], np.percentile(d_acc, [2.5, 97.5]))


def test_interval_of_a_constant_statistic_is_exact():
    # A constant (AUROC 0.5 in every resample), B perfectly separating (AUROC 1): delta 0.5
    y = np.repeat([0, 1], [7, 5])
    s_a = np.zeros(12)
    s_b = y.astype(float)
    out = paired_bootstrap(y, s_a, s_b, 1.0, 0.5, n_boot=100, seed=0)
    assert out["auroc"]["delta"] == 0.5
    assert out["auroc"]["ci95"] == [0.5, 0.5]
    # A predicts all good (7/12 right), B all right: every stratified resample has delta 5/12
    assert np.allclose(out["accuracy_deployable"]["ci95"], [5 / 12, 5 / 12])


def test_per_condition_present():
    y, s_a, s_b, cond = _data(1)
    out = paired_bootstrap(y, s_a, s_b, 0.5, 0.5, n_boot=100, seed=0, conditions=cond)
    assert list(out["per_condition"]) == ["cold", "warm"]
    for c in ("cold", "warm"):
        grp = out["per_condition"][c]
        m = cond == c
        assert grp["n"] == int(m.sum())
        assert np.isclose(
            grp["auroc"]["delta"], roc_auc_score(y[m], s_b[m]) - roc_auc_score(y[m], s_a[m])
        )
        assert len(grp["auroc"]["ci95"]) == 2
    assert "per_condition" not in paired_bootstrap(y, s_a, s_b, None, None, n_boot=10)


def test_per_condition_with_one_class_has_no_auroc():
    y = np.array([0, 1, 0, 1, 0, 0])
    s = np.arange(6.0)
    cond = np.array(["cold", "cold", "cold", "cold", "warm", "warm"])
    out = paired_bootstrap(y, s, s[::-1], 1.0, 1.0, n_boot=20, seed=0, conditions=cond)
    assert out["per_condition"]["warm"]["auroc"]["ci95"] is None
    assert out["per_condition"]["warm"]["accuracy_deployable"]["delta"] is not None


def test_rejects_single_class():
    with pytest.raises(ValueError, match="both classes"):
        paired_bootstrap(np.zeros(5), np.arange(5.0), np.arange(5.0), None, None, n_boot=10)


def _table(seed, ids, labels, conds, shift, cv_max):
    rng = np.random.default_rng(seed)
    y = (np.asarray(labels) != "good").astype(float)
    test = pd.DataFrame({
        "image_id": ids,
        "role": "test",
        "label": labels,
        "condition": conds,
        "score": rng.normal(0, 1, len(ids)) + shift * y,
    })
    cv = pd.DataFrame({
        "image_id": ["r0", "r1", "r2"],
        "role": "reference_cv",
        "label": "good",
        "condition": ["cold", "warm", "cold"],
        "score": [cv_max - 1.0, cv_max, cv_max - 0.5],
    })
    return pd.concat([test, cv], ignore_index=True)


def _pair():
    n = 60
    ids = [f"img{i:03d}" for i in range(n)]
    labels = ["good" if i % 3 else "fault" for i in range(n)]
    conds = ["cold" if i % 2 else "warm" for i in range(n)]
    return _table(0, ids, labels, conds, 1.0, 1.5), _table(1, ids, labels, conds, 2.5, 2.0)


def test_compare_experiments_aligns_by_image_id():
    a, b = _pair()
    ref = compare_experiments(a, b, n_boot=200, seed=0)
    shuffled = compare_experiments(
        a.sample(frac=1.0, random_state=1), b.sample(frac=1.0, random_state=2),
        n_boot=200, seed=0,
    )
    assert ref == shuffled
    assert ref["thresholds"]["a"] == {"deployable": 1.5, "reference_cv_scored": 3}
    assert ref["thresholds"]["b"]["deployable"] == 2.0
    assert ref["n"] == 60 and ref["n_fault"] == 20
    assert list(ref) == [
        "verdict", "verdict_rule", "margin", "correction", "family_size", "p_method", "level",
        "thresholds", "n", "n_good", "n_fault", "n_boot", "seed", "auroc",
        "accuracy_deployable", "p_raw", "p_adjusted", "per_condition",
    ]
    assert ref["family_size"] == 3 and ref["correction"] == "holm" and ref["margin"] == 0.005
    assert set(ref["per_condition"]) == {"cold", "warm"}
    assert all({"verdict", "p_raw", "p_adjusted"} <= set(g)
               for g in ref["per_condition"].values())
    # the point estimate is that of the aligned scores
    ta, tb = a[a.role == "test"], b[b.role == "test"]
    y = (ta.label != "good").to_numpy()
    expect = roc_auc_score(y, tb.score) - roc_auc_score(y, ta.score)
    assert np.isclose(ref["auroc"]["delta"], expect, atol=1e-6)
    assert ref["verdict"] == decide(ref["p_adjusted"])


def test_compare_experiments_rejects_different_sets():
    a, b = _pair()
    b = b.drop(index=[0, 1])
    with pytest.raises(ValueError, match="A has 60, B has 58, 58 in common"):
        compare_experiments(a, b, n_boot=10, seed=0)


def test_compare_experiments_rejects_label_mismatch():
    a, b = _pair()
    b.loc[1, "label"] = "fault" if b.loc[1, "label"] == "good" else "good"
    with pytest.raises(ValueError, match="differ in label"):
        compare_experiments(a, b, n_boot=10, seed=0)
