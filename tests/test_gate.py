"""The gate registry (``hdmap_ad.gating``): threshold fits, every built-in gate's decisions,
the one routing rule and the both -> min rule, and a gate added at run time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from hdmap_ad.errors import InputError
from hdmap_ad.gating import (
    COLD,
    GATES,
    Gate,
    GateConfig,
    GateFit,
    MapStats,
    combine_both,
    gate_names,
    get_gate,
    register_gate,
    route,
    searched,
    unregister_gate,
)
from hdmap_ad.gating.threshold import fit_threshold_otsu, fit_threshold_supervised
from tests.conftest import REPO


def _route(name, p90, cond, threshold, margin=0.02, seed=0, start=0):
    gate = GateConfig.build(name, {"gate_margin": margin}, seed)
    return route(gate, GateFit(threshold, "x"), MapStats(np.asarray(p90), cond), start).tolist()


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
    assert _route("mixed", p90, cond, None) == ["mixed"] * 4
    assert _route("p90", p90, cond, 0.3) == ["cold", "warm", "cold", "warm"]
    # oracle trusts the true condition, and the threshold only where there is none
    assert _route("oracle", p90, cond, 0.3) == ["cold", "cold", "warm", "warm"]
    # new maps (predict) know no condition: the p90 decision for each
    assert _route("oracle", p90, None, 0.3) == ["cold", "warm", "cold", "warm"]
    with pytest.raises(ValueError, match="p90 gate needs a fitted threshold"):
        _route("p90", p90, cond, None)
    with pytest.raises(ValueError, match="oracle gate on maps without a condition"):
        _route("oracle", p90, cond, None)


def test_fit_and_assign_use_references_only_and_labels_when_known():
    from hdmap_ad.banks.bank import assign_references, fit_gate

    refs = pd.DataFrame({"p90": [0.2, 0.21, 0.4, 0.41],
                         "condition": ["cold", "cold", "warm", "warm"]})
    fit = fit_gate(refs, "p90")
    assert fit.method == "supervised" and 0.21 < fit.threshold < 0.4
    unlabelled = refs.assign(condition="unknown")
    fit_u = fit_gate(unlabelled, "p90")
    assert fit_u.method == "otsu"
    assert assign_references(unlabelled, "p90", fit_u).tolist() == ["cold", "cold", "warm", "warm"]
    assert fit_gate(refs, "mixed") == GateFit(None, "none")
    assert assign_references(refs, "mixed", GateFit(None, "none")).tolist() == ["mixed"] * 4
    # every per-condition gate records the same p90 fit with the model
    assert {fit_gate(refs, g) for g in gate_names() if g != "mixed"} == {fit}


def test_random_inverse_fallback_and_both_min_decisions():
    p90 = np.array([0.20, 0.29, 0.31, 0.50])
    cond = np.array(["cold", "cold", "warm", "warm"], dtype=object)
    r1 = _route("random", p90, cond, 0.3, seed=1)
    assert set(r1) <= {"cold", "warm"}
    assert r1 == _route("random", p90, cond, 0.3, seed=1)
    many = np.array(_route("random", np.zeros(200), np.full(200, "cold", object), 0.3, seed=2))
    assert 60 < (many == "warm").sum() < 140
    assert _route("inverse", p90, cond, 0.3) == ["warm", "warm", "cold", "cold"]
    assert _route("fallback", p90, cond, 0.3, margin=0.02) == ["cold", "both", "both", "warm"]
    assert _route("fallback", p90, cond, 0.3, margin=0.0) == ["cold", "cold", "warm", "warm"]
    assert _route("both-min", p90, cond, 0.3) == ["both"] * 4


def test_random_gate_in_batches_draws_what_one_call_draws():
    """predict routes batch by batch: the coin continues over the batches (``start``)."""
    p90 = np.linspace(0.1, 0.5, 37)
    whole = _route("random", p90, None, 0.3, seed=5)
    parts, start = [], 0
    for size in (1, 8, 0, 20, 8):
        parts += _route("random", p90[start : start + size], None, 0.3, seed=5, start=start)
        start += size
    assert parts == whole and len(set(whole)) == 2
    assert whole != _route("random", p90, None, 0.3, seed=6)


def test_gate_options_come_from_the_gate_keys_of_the_experiment():
    assert GateConfig.build("fallback", {"gate_margin": 0.5}).options.margin == 0.5
    assert GateConfig.build("fallback").options.margin == 0.02  # the params default
    assert GateConfig.build("p90", {"gate_margin": 0.5}).options == get_gate("p90").Options()
    bad_margin = r"^experiments\.e\.gate_margin: -1(\.0)? must be >= 0"  # the params key
    with pytest.raises(InputError, match=bad_margin):
        GateConfig.build("fallback", {"gate_margin": -1}, where="experiments.e")
    with pytest.raises(InputError, match=r"experiments\.e\.gate: 'p91' is not one of \("):
        GateConfig.build("p91", where="experiments.e")


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


def test_combine_both_keeps_the_lowest_and_the_first_on_ties():
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 2, 3), dtype=np.float32), rng.random((6, 2, 3), dtype=np.float32)
    sa = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)
    sb = np.array([2.0, 1.0, 3.0, 5.0, 4.0, np.nan], np.float32)
    best, patches, kept = combine_both({"warm": (sb, b), "cold": (sa, a)})
    # the brute-force rule: the lowest score, cold (first in name order) on the tie and NaN
    assert kept.tolist() == ["cold", "warm", "cold", "cold", "warm", "cold"]
    assert best.tolist() == [1.0, 1.0, 3.0, 4.0, 4.0, 6.0] and best.dtype == np.float32
    want = np.where((kept == "cold")[:, None, None], a, b)
    assert np.array_equal(patches, want)
    assert searched("both", {"warm": 0, "cold": 0}) == ["cold", "warm"]
    assert searched("warm", {"warm": 0, "cold": 0}) == ["warm"]


# -- a gate added at run time -----------------------------------------------------------------


class AlwaysCold(Gate):
    """A toy gate: every map to the cold sub-model (one class + one registration)."""

    name = "always-cold"
    summary = "every map to the cold sub-model"

    def route(self, maps, fit, options, ctx):
        return np.full(len(maps), COLD, dtype=object)


@pytest.fixture
def always_cold():
    gate = register_gate(AlwaysCold())
    yield gate
    unregister_gate(gate.name)
    assert gate.name not in GATES


def test_a_gate_registered_at_run_time_routes_in_score_and_predict_and_passes_params(
        always_cold):
    from hdmap_ad.config import ExperimentConfig, parse_params
    from hdmap_ad.deploy.predict import Predictor
    from hdmap_ad.methods.patchcore import PatchCoreModel, PatchCoreOptions
    from hdmap_ad.scoring.score import experiment_decisions, score_routed

    # params validation: the schema's enum and the experiment config accept it
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    name = next(iter(raw["experiments"]))
    raw["experiments"][name]["gate"] = "always-cold"
    unregister_gate(always_cold.name)  # unregistered, the same params are refused
    with pytest.raises(InputError, match=f"experiments.{name}.gate: 'always-cold' is not one"):
        parse_params(raw)
    register_gate(always_cold)
    assert gate_names()[-1] == "always-cold"
    exp = parse_params(raw).experiments[name]
    assert exp.gate == "always-cold" and exp.gate_config.gate is always_cold

    # score's routing and scoring, on tiny arrays
    rows = pd.DataFrame({"p90": [0.1, 0.9, 0.5], "condition": ["cold", "warm", "unknown"]})
    fit = GateFit(0.4, "supervised")
    decisions = experiment_decisions(exp, rows, fit)
    assert decisions.tolist() == ["cold"] * 3
    opts = PatchCoreOptions(num_neighbors=1)
    src = np.zeros((2, 2), np.int64)
    models = {"cold": PatchCoreModel(np.zeros((2, 2), np.float32), src, opts),
              "warm": PatchCoreModel(np.full((2, 2), 5.0, np.float32), src, opts)}
    desc = np.arange(6, dtype=np.float32).reshape(3, 1, 1, 2)
    s, _, used = score_routed(lambda sel: desc[sel], decisions, models)
    assert used.tolist() == ["cold"] * 3
    np.testing.assert_allclose(s, np.linalg.norm(desc.reshape(3, 2), axis=1), rtol=1e-6)

    # predict's routing and scoring (a predictor's gate parts, without a backbone)
    predictor = SimpleNamespace(exp=exp, bundle=SimpleNamespace(gate=fit, models=models),
                                _routed=0)
    routed = Predictor.decide(predictor, np.array([0.1, 0.9]))
    assert routed.tolist() == ["cold", "cold"] and predictor._routed == 2
    ps, _, kept, each = Predictor.score(predictor, desc, "cold")
    assert kept.tolist() == ["cold"] * 3 and set(each) == {"cold"}
    np.testing.assert_array_equal(ps, s)

    # and a model folder's check takes the gate's sub-models from the registry
    assert always_cold.sub_models == ("cold", "warm") and not always_cold.needs_threshold
    assert isinstance(exp, ExperimentConfig)
