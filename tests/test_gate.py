import numpy as np
import pandas as pd
import pytest

from hdmap_ad.banks.bank import assign_references, fit_gate
from hdmap_ad.banks.gate import (
    fit_threshold_otsu,
    fit_threshold_supervised,
    gate_decisions,
)


def test_supervised_threshold_centres_in_the_gap():
    p90 = np.array([0.20, 0.22, 0.25, 0.40, 0.42])
    warm = np.array([0, 0, 0, 1, 1])
    assert fit_threshold_supervised(p90, warm) == pytest.approx(0.325)


def test_supervised_threshold_minimises_errors_with_overlap():
    p90 = np.array([0.1, 0.2, 0.35, 0.3, 0.5, 0.6])
    warm = np.array([0, 0, 0, 1, 1, 1])  # 0.35 cold sits above 0.3 warm: one error minimum
    t = fit_threshold_supervised(p90, warm)
    errors = np.sum((p90 > t) != warm.astype(bool))
    assert errors == 1


def test_otsu_splits_two_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.25, 0.01, 20), rng.normal(0.40, 0.01, 20)])
    t = fit_threshold_otsu(v)
    assert 0.28 < t < 0.37


def test_gate_modes():
    p90 = np.array([0.2, 0.5, 0.2, 0.5])
    cond = np.array(["cold", "cold", "warm", "unknown"], dtype=object)
    assert gate_decisions("mixed", p90, cond, None).tolist() == ["mixed"] * 4
    assert gate_decisions("p90", p90, cond, 0.3).tolist() == ["cold", "warm", "cold", "warm"]
    # oracle trusts the true condition, and the threshold only where there is none
    assert gate_decisions("oracle", p90, cond, 0.3).tolist() == ["cold", "cold", "warm", "warm"]
    with pytest.raises(ValueError):
        gate_decisions("p90", p90, cond, None)


def test_fit_gate_uses_references_only_and_labels_when_known():
    refs = pd.DataFrame({"p90": [0.2, 0.21, 0.4, 0.41],
                         "condition": ["cold", "cold", "warm", "warm"]})
    fit = fit_gate(refs, "p90")
    assert fit.method == "supervised" and 0.21 < fit.threshold < 0.4
    unlabelled = refs.assign(condition="unknown")
    fit_u = fit_gate(unlabelled, "p90")
    assert fit_u.method == "otsu"
    assert assign_references(unlabelled, "p90", fit_u).tolist() == ["cold", "cold", "warm", "warm"]
    assert fit_gate(refs, "mixed").threshold is None


def test_random_inverse_fallback_and_both_min_decisions():
    p90 = np.array([0.20, 0.29, 0.31, 0.50])
    cond = np.array(["cold", "cold", "warm", "warm"], dtype=object)
    r1 = gate_decisions("random", p90, cond, 0.3, seed=1)
    assert set(r1) <= {"cold", "warm"}
    assert r1.tolist() == gate_decisions("random", p90, cond, 0.3, seed=1).tolist()
    many = gate_decisions("random", np.zeros(200), np.full(200, "cold", object), 0.3, seed=2)
    assert 60 < (many == "warm").sum() < 140
    assert gate_decisions("inverse", p90, cond, 0.3).tolist() == ["warm", "warm", "cold", "cold"]
    assert gate_decisions("fallback", p90, cond, 0.3, margin=0.02).tolist() == [
        "cold", "both", "both", "warm"]
    assert gate_decisions("both-min", p90, cond, 0.3).tolist() == ["both"] * 4


def test_both_routing_keeps_the_lower_score_and_records_the_winner():
    from hdmap_ad.methods.patchcore import PatchCoreModel, PatchCoreOptions
    from hdmap_ad.scoring.score import score_routed

    cold = np.zeros((4, 2), np.float32)
    warm = np.full((4, 2), 10.0, np.float32)
    desc = np.array([[[[1.0, 0.0]]], [[[9.0, 10.0]]]], np.float32)  # (2 maps, 1x1 grid, 2)
    opts = PatchCoreOptions(num_neighbors=1)
    src = np.zeros((4, 2), np.int64)
    indexes = {"cold": PatchCoreModel(cold, src, opts), "warm": PatchCoreModel(warm, src, opts)}
    s, patches, used = score_routed(lambda sel: desc[sel], np.array(["both", "both"], object),
                                    indexes)
    assert used.tolist() == ["cold", "warm"]
    assert np.allclose(s, [1.0, 1.0]) and patches.shape == (2, 1, 1)
    s2, _, used2 = score_routed(lambda sel: desc[sel], np.array(["warm", "cold"], object),
                                indexes)
    assert used2.tolist() == ["warm", "cold"] and np.all(s2 > 9)
