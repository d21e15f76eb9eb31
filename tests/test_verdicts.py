"""Hypothesis verdicts over reference draws: the two-level bootstrap, the claims, the macro
average over domains, the params that drive them and the report that shows them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from hdmap_ad.config import parse_params
from hdmap_ad.errors import InputError
from hdmap_ad.report.hypothesis import (
    CLAIMS,
    Draw,
    _rng,
    crossed_deltas,
    draw_strata,
    hypothesis_report,
)
from hdmap_ad.report.verdicts import adjust, decide, p_values
from tests.conftest import REPO


def _draw(seed: int, n: int = 30, effect: float = 0.3, thr: float | None = 0.5,
          round_to: int | None = 1) -> Draw:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 0, 1], n // 3)
    cond = np.repeat(["cold", "warm"], n // 2)
    s_a = rng.normal(size=n) + y
    s_b = s_a + rng.normal(0, 0.5, n) + effect * y
    if round_to is not None:  # ties, to exercise the one-half rule
        s_a, s_b = np.round(s_a, round_to), np.round(s_b, round_to)
    return Draw(y, cond, s_a, s_b, thr, None if thr is None else thr + 0.2)


def _auc_delta(d: Draw, idx: np.ndarray, m: np.ndarray) -> float:
    y = d.y[idx][m]
    return roc_auc_score(y, d.s_b[idx][m]) - roc_auc_score(y, d.s_a[idx][m])


def test_crossed_bootstrap_equals_a_brute_force_loop_with_the_same_draws():
    # seed 1 lacks two maps (its held-out references): it evaluates the drawn maps it has
    full = [_draw(i) for i in range(3)]
    keep = np.ones(len(full[1].y), bool)
    keep[[4, 7]] = False
    d1 = full[1]
    draws = [full[0], Draw(d1.y[keep], d1.conditions[keep], d1.s_a[keep], d1.s_b[keep],
                           d1.thr_a, d1.thr_b, np.flatnonzero(keep)), full[2]]
    n_boot, n_seeds = 60, len(draws)
    fast, singles = crossed_deltas(draws, n_boot, np.random.default_rng(5))

    # the documented draw order, replayed: one map resample over the union's strata, then
    # the seeds; every drawn seed evaluated on the same maps with sklearn
    rng = np.random.default_rng(5)
    union = full[0]  # ids "0".."29": the union's sorted order is the string order
    order = np.argsort(union.map_ids.astype(str))
    sorted_union = Draw(union.y[order], union.conditions[order], union.s_a[order],
                        union.s_b[order], map_ids=union.map_ids[order])
    parts = [at[rng.integers(0, len(at), size=(n_boot, len(at)))]
             for at in draw_strata(sorted_union)]
    maps = sorted_union.map_ids[np.concatenate(parts, axis=1)]  # (B, N) drawn map ids
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    slow = {c: np.zeros((n_boot, n_seeds)) for c in (*CLAIMS, "accuracy")}
    for b in range(n_boot):
        for j in range(n_seeds):
            d = draws[picks[b, j]]
            pos = {m: k for k, m in enumerate(d.map_ids)}
            idx = np.array([pos[m] for m in maps[b] if m in pos])
            cond = d.conditions[idx]
            slow["pooled"][b, j] = _auc_delta(d, idx, np.ones(len(idx), bool))
            slow["cold"][b, j] = _auc_delta(d, idx, cond == "cold")
            slow["warm"][b, j] = _auc_delta(d, idx, cond == "warm")
            slow["condition_macro"][b, j] = (slow["cold"][b, j] + slow["warm"][b, j]) / 2
            y = d.y[idx]
            slow["accuracy"][b, j] = (np.mean((d.s_b[idx] >= d.thr_b) == y)
                                      - np.mean((d.s_a[idx] >= d.thr_a) == y))
    for c in CLAIMS:
        assert np.allclose(fast["auroc"][c], slow[c].mean(axis=1), atol=1e-12), c
    assert np.allclose(fast["accuracy"]["pooled"], slow["accuracy"].mean(axis=1), atol=1e-12)
    # the single-draw deltas are each seed on the same map resamples
    for k, d in enumerate(draws):
        pos = {m: i for i, m in enumerate(d.map_ids)}
        one = [_auc_delta(d, np.array([pos[m] for m in maps[b] if m in pos]),
                          np.ones(sum(m in pos for m in maps[b]), bool)) for b in range(n_boot)]
        assert np.allclose(singles[k]["auroc"]["pooled"], one, atol=1e-12)


def test_crossed_bootstrap_agrees_in_distribution_with_a_naive_loop():
    """An independent textbook implementation (other generator, class-and-condition strata
    drawn map by map, one map resample shared by the drawn seeds) gives the same resampling
    distribution within Monte Carlo error."""
    draws = [_draw(10 + i, n=36, effect=0.2 * i, round_to=None) for i in range(4)]
    fast = crossed_deltas(draws, 4000, np.random.default_rng(0))[0]["auroc"]["pooled"]

    def auc(y, s):  # Mann-Whitney by pairwise comparison, ties one half
        p, q = s[y == 1][:, None], s[y == 0][None, :]
        return np.mean(p > q) + 0.5 * np.mean(p == q)

    rng = np.random.default_rng(123)
    naive = []
    strata = draw_strata(draws[0])  # all draws score the same maps in the same order
    for _ in range(1500):
        idx = np.concatenate([rng.choice(at, len(at)) for at in strata])
        deltas = [auc(draws[s].y[idx], draws[s].s_b[idx]) - auc(draws[s].y[idx],
                                                                draws[s].s_a[idx])
                  for s in rng.integers(0, len(draws), len(draws))]
        naive.append(np.mean(deltas))
    naive = np.asarray(naive)
    assert abs(fast.mean() - naive.mean()) < 0.2 * naive.std()
    assert 0.8 < fast.std() / naive.std() < 1.25
    assert np.allclose(np.percentile(fast, [2.5, 97.5]), np.percentile(naive, [2.5, 97.5]),
                       atol=0.35 * naive.std())


def test_crossed_bootstrap_is_deterministic_and_widens_with_the_draw_spread():
    # two reference draws where b changes nothing, one where b separates the classes
    draws = [_draw(i, n=60, round_to=None) for i in range(3)]
    draws = [Draw(d.y, d.conditions, d.s_a, d.s_a + (3.0 * d.y if i == 2 else 0.0))
             for i, d in enumerate(draws)]
    one, singles = crossed_deltas(draws, 500, np.random.default_rng(3))
    two, _ = crossed_deltas(draws, 500, np.random.default_rng(3))
    assert all(np.array_equal(one["auroc"][c], two["auroc"][c]) for c in CLAIMS)
    other, _ = crossed_deltas(draws, 500, np.random.default_rng(4))
    assert not np.array_equal(one["auroc"]["pooled"], other["auroc"]["pooled"])
    # the draws disagree: the crossed interval is wider than that of the same mean over
    # seeds with the seeds held fixed (test maps resampled only)
    width = np.ptp(np.percentile(one["auroc"]["pooled"], [2.5, 97.5]))
    fixed = np.mean([s["auroc"]["pooled"] for s in singles], axis=0)
    assert width > 1.5 * np.ptp(np.percentile(fixed, [2.5, 97.5]))


def test_identical_copies_of_one_draw_give_the_single_draw_interval():
    """Seeds that score alike carry no seed variance: five copies of one draw must give that
    draw's own interval (the nested scheme narrowed it about sqrt(5)-fold)."""
    d = _draw(3, n=60, round_to=None)
    crossed, singles = crossed_deltas([d] * 5, 800, np.random.default_rng(11))
    for metric in ("auroc", "accuracy"):
        for c in CLAIMS:
            assert np.allclose(np.percentile(crossed[metric][c], [2.5, 97.5]),
                               np.percentile(singles[0][metric][c], [2.5, 97.5]),
                               rtol=0, atol=1e-9), (metric, c)


def test_draws_must_agree_on_a_shared_map():
    d = _draw(0)
    flipped = Draw(1 - d.y, d.conditions, d.s_a, d.s_b)
    with pytest.raises(ValueError, match="label or condition differs"):
        crossed_deltas([d, flipped], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="map_ids repeat"):
        Draw(d.y[:4], d.conditions[:4], d.s_a[:4], d.s_b[:4], map_ids=["a", "a", "b", "c"])


def test_undefined_claims_are_none():
    d = _draw(0, thr=None)
    out, _ = crossed_deltas([d], 50, np.random.default_rng(0))
    assert all(v is None for v in out["accuracy"].values())
    y = np.array([0, 1, 0, 1, 0, 0])
    cond = np.array(["cold", "cold", "cold", "cold", "warm", "warm"])  # warm: goods only
    d = Draw(y, cond, np.arange(6.0), np.arange(6.0)[::-1], 1.0, 1.0)
    out, _ = crossed_deltas([d], 20, np.random.default_rng(0))
    assert out["auroc"]["warm"] is None and out["auroc"]["condition_macro"] is None
    assert out["auroc"]["cold"] is not None and out["accuracy"]["warm"] is not None


# -- verdict files from scores tables ---------------------------------------------------------
def _scores(y, cond, s, thr=None, gate=None):
    n = len(y)
    test = pd.DataFrame({"image_id": [f"m{i:04d}" for i in range(n)], "role": "test",
                         "label": np.where(np.asarray(y) == 1, "fault", "good"),
                         "condition": cond, "score": s,
                         "gate": cond if gate is None else gate})
    cv = pd.DataFrame({"image_id": ["r0"], "role": "reference_cv", "label": "good",
                       "condition": "cold", "score": [s.max() + 1 if thr is None else thr],
                       "gate": "cold"})
    return pd.concat([test, cv], ignore_index=True)


def _spec(tmp_path, tables, gates=("mixed", "p90"), claim="condition_macro", seed=0,
          n_boot=400, default=True):
    pairs = []
    for (domain, s), (ta, tb) in tables.items():
        pa, pb = tmp_path / f"{domain}_a_{s}.parquet", tmp_path / f"{domain}_b_{s}.parquet"
        ta.to_parquet(pa)
        tb.to_parquet(pb)
        pairs.append({"domain": domain, "budget": 4, "seed": s, "variant_a": f"a_b4_s{s}",
                      "variant_b": f"b_b4_s{s}", "scores_a": str(pa), "scores_b": str(pb)})
    seeds = sorted({s for _, s in tables})
    protocol = {"domains": sorted({d for d, _ in tables}), "budgets": [4], "seeds": seeds,
                "references": {"protocol": "test_good_holdout", "pick": "random",
                               "per_budget": [{"budget": 4, "n_cold": 4, "n_warm": 4}]},
                "arms": {"a": {"experiment": "a", "gate": gates[0], "method": "patchcore"},
                         "b": {"experiment": "b", "gate": gates[1], "method": "patchcore"}}}
    return {"key": "H", "a": "a", "b": "b", "oracle": None, "description": "b beats a",
            "n_boot": n_boot, "seed": seed, "margin": 0.0, "claim": claim,
            "claim_default": default, "protocol": protocol, "pairs": pairs}


def _calibration_case(seed: int, n: int = 120):
    """Arm b is arm a with the warm offset removed: every condition's ranking (so its AUROC)
    is identical between the arms, but only b's cold and warm scores line up, so one
    threshold serves both conditions: a pooled gain from calibration alone."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    cond = np.repeat(["cold", "warm"], n // 2)
    base = rng.normal(size=n) + 1.5 * y
    warm = (cond == "warm").astype(float)
    s_a = base + 3.0 * warm
    s_b = base.copy()
    return y, cond, s_a, s_b


def test_a_pooled_gain_from_calibration_alone_is_not_a_condition_macro_gain(tmp_path):
    tables = {}
    for s in range(3):
        y, cond, s_a, s_b = _calibration_case(s)
        tables[("C", s)] = (_scores(y, cond, s_a, thr=2.5), _scores(y, cond, s_b, thr=1.0))
    h = hypothesis_report(_spec(tmp_path, tables))
    entry = h["results"]["C"][0]
    claims = entry["claims"]
    for c in ("cold", "warm", "condition_macro"):
        assert claims[c]["auroc"]["delta"] == 0.0 and claims[c]["auroc"]["ci95"] == [0.0, 0.0]
        assert claims[c]["verdict"] == "inconclusive"
    assert claims["pooled"]["auroc"]["delta"] > 0.05
    assert claims["pooled"]["verdict"] == "supported"
    # the hypothesis is about detection within a condition: inconclusive
    assert h["claim"] == entry["claim"] == "condition_macro"
    assert h["verdict"] == entry["verdict"] == "inconclusive"
    assert entry["auroc"] == claims["condition_macro"]["auroc"]
    assert entry["seeds"] == [0, 1, 2] and len(entry["per_seed"]) == 3
    assert entry["per_condition"]["cold"]["verdict"] == "inconclusive"
    # the same data judged on the pooled claim
    pooled = hypothesis_report(_spec(tmp_path, tables, claim="pooled", default=False))
    assert pooled["verdict"] == "supported"
    assert pooled["claim_rule"].startswith("set in params")


def test_report_numbers_match_the_bootstrap_and_are_deterministic(tmp_path):
    tables = {}
    for s in range(3):
        d = _draw(s, n=60, round_to=None)
        tables[("C", s)] = (_scores(d.y, d.conditions, d.s_a, thr=0.5),
                            _scores(d.y, d.conditions, d.s_b, thr=0.7))
    spec = _spec(tmp_path, tables, seed=7)
    h = hypothesis_report(spec)
    assert h == hypothesis_report(spec)
    assert hypothesis_report({**spec, "seed": 8}) != h
    entry = h["results"]["C"][0]
    draws = [Draw(*(np.asarray(x) for x in (
        (t[0][t[0].role == "test"].label == "fault").astype(int),
        t[0][t[0].role == "test"].condition, t[0][t[0].role == "test"].score,
        t[1][t[1].role == "test"].score)), 0.5, 0.7, t[0][t[0].role == "test"].image_id)
        for t in tables.values()]
    boot, singles = crossed_deltas(draws, 400, _rng(7, "C", 4, 0))
    for c in CLAIMS:
        ci = np.percentile(boot["auroc"][c], [2.5, 97.5])
        assert np.allclose(entry["claims"][c]["auroc"]["ci95"], ci, atol=1e-6)
        per = [p["auroc"][c]["delta"] for p in entry["per_seed"]]
        assert np.isclose(entry["claims"][c]["auroc"]["delta"], np.mean(per), atol=1e-6)
        assert np.allclose(entry["per_seed"][1]["auroc"][c]["ci95"],
                           np.percentile(singles[1]["auroc"][c], [2.5, 97.5]), atol=1e-6)
        # p-values and verdicts: the family is the 4 claims of this one domain x budget
        raw = p_values(boot["auroc"][c], entry["claims"][c]["auroc"]["delta"], 0.0,
                       "normal")  # 400 resamples cannot resolve 2.5% / 4
        assert entry["claims"][c]["p_raw"] == pytest.approx(raw, abs=1e-5)  # 5 decimals
    assert h["family_size"] == 4 and h["correction"] == "holm" and h["p_method"] == "normal"
    adjusted = adjust([entry["claims"][c]["p_raw"] for c in CLAIMS], "holm")
    for c, adj in zip(CLAIMS, adjusted, strict=True):
        assert entry["claims"][c]["p_adjusted"] == pytest.approx(adj, abs=1e-5)
        assert entry["claims"][c]["verdict"] == decide(entry["claims"][c]["p_adjusted"])
    y = draws[0].y
    expect = roc_auc_score(y, draws[0].s_b) - roc_auc_score(y, draws[0].s_a)
    assert np.isclose(entry["per_seed"][0]["auroc"]["pooled"]["delta"], expect, atol=1e-6)
    assert entry["claims"]["pooled"]["auroc"]["single_draw"]["ref_seed"] == 0
    assert h["bootstrap"]["citation"].startswith("Owen (2007)")
    assert "interaction" in h["bootstrap"]["covers"]


def test_macro_row_averages_domains_with_independent_resamples(tmp_path):
    tables = {}
    for domain, effect in (("A", 0.0), ("C", 0.6)):
        for s in range(2):
            d = _draw(s + (10 if domain == "C" else 0), n=60, effect=effect, round_to=None)
            tables[(domain, s)] = (_scores(d.y, d.conditions, d.s_a, thr=0.5),
                                   _scores(d.y, d.conditions, d.s_b, thr=0.7))
    h = hypothesis_report(_spec(tmp_path, tables, claim="pooled", default=False))
    assert set(h["results"]) == {"A", "C"}
    (macro,) = h["macro"]
    assert macro["domains"] == ["A", "C"] and macro["budget"] == 4
    for c in CLAIMS:
        per = [h["results"][d][0]["claims"][c]["auroc"]["delta"] for d in ("A", "C")]
        assert np.isclose(macro["claims"][c]["auroc"]["delta"], np.mean(per), atol=1e-6)
    # its interval: the per-domain crossed resamples (independent streams) averaged
    boots = []
    for domain in ("A", "C"):
        draws = []
        for s in range(2):
            ta, tb = (t[t.role == "test"] for t in tables[(domain, s)])
            draws.append(Draw((ta.label == "fault").astype(int), ta.condition, ta.score,
                              tb.score, 0.5, 0.7, ta.image_id))
        boots.append(crossed_deltas(draws, 400, _rng(0, domain, 4, 0))[0]["auroc"]["pooled"])
    ci = np.percentile(np.mean(boots, axis=0), [2.5, 97.5])
    assert np.allclose(macro["claims"]["pooled"]["auroc"]["ci95"], ci, atol=1e-6)
    assert macro["verdict"] == macro["claims"]["pooled"]["verdict"]
    assert h["verdict_macro"] == macro["verdict"]
    # a domain's numbers do not depend on which other domains are compared
    alone = hypothesis_report(_spec(tmp_path, {k: v for k, v in tables.items() if k[0] == "C"},
                                    claim="pooled", default=False))
    # (its numbers, not its verdicts: those are adjusted over the family, which grew)
    def numbers(x):
        if isinstance(x, dict):
            return {k: numbers(v) for k, v in x.items() if k not in ("verdict", "p_adjusted")}
        return [numbers(v) for v in x] if isinstance(x, list) else x

    assert numbers(alone["results"]["C"]) == numbers(h["results"]["C"]) and "macro" not in alone
    assert alone["family_size"] == 4 and h["family_size"] == 12


def test_gate_routing_is_split_by_condition_and_label(tmp_path):
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1] * 3)
    cond = np.repeat(["cold", "warm"], 12)
    s = np.linspace(0, 1, 24) + y
    routed = np.where((cond == "cold") & (y == 1), "warm", cond)  # cold faults misrouted
    tables = {("C", 0): (_scores(y, cond, s), _scores(y, cond, s * 1.1, gate=routed))}
    entry = hypothesis_report(_spec(tmp_path, tables))["results"]["C"][0]
    routing = entry["gate_routing"]["b"]
    assert set(entry["gate_routing"]) == {"b"}  # a is mixed: no routing
    assert routing["decisions"]["cold/fault"] == {"to_cold": 0, "to_warm": 6}
    assert routing["misrouted"] == {"cold/fault": 1.0, "cold/good": 0.0, "warm/fault": 0.0,
                                    "warm/good": 0.0}
    assert routing["accuracy"] == 0.75


# -- params: seeds, claims, oracle --------------------------------------------------------------
def _raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_hypothesis_seeds_expand_the_arms_and_reuse_the_base_run():
    p = parse_params(_raw())
    plan = p.hypothesis_plans["H2_gating"]
    assert plan.seeds == (0, 1, 2, 3, 4)
    assert [v.key for v in plan.b] == ["gated", "gated_s1", "gated_s2", "gated_s3", "gated_s4"]
    e = p.experiments["ungated_s3"]
    assert (e.seed, e.references.seed, e.references.n_cold) == (3, 3, 16)
    assert e.gate == "mixed" and p.experiments["gated_s3"].gate == "p90"
    assert "ungated_s3" not in p.target_experiments
    assert p.hypotheses["H2_gating"].domains == ("A", "B", "C", "D")
    raw = _raw()
    raw["hypotheses"]["H2_gating"]["seeds"] = [3, 5]
    plan = parse_params(raw).hypothesis_plans["H2_gating"]
    assert [v.key for v in plan.a] == ["ungated_s3", "ungated_s5"]


def test_claim_defaults_and_choices():
    raw = _raw()
    p = parse_params(raw)
    assert p.hypothesis_plans["H2_gating"].claim == "condition_macro"  # arms differ in gate
    assert p.hypothesis_plans["H2_gating"].claim_default
    raw["hypotheses"]["H_same_gate"] = {"a": "ungated", "b": "ungated", "seeds": [0, 1]}
    raw["hypotheses"]["H_cold"] = {"a": "ungated", "b": "gated", "claim": "cold"}
    p = parse_params(raw)
    assert p.hypothesis_plans["H_same_gate"].claim == "pooled"
    assert p.hypothesis_plans["H_cold"].claim == "cold"
    assert not p.hypothesis_plans["H_cold"].claim_default
    raw["hypotheses"]["H_cold"]["claim"] = "median"
    with pytest.raises(InputError, match="hypotheses.H_cold.claim"):
        parse_params(raw)


def test_sweep_seeds_are_the_hypothesis_seeds_and_clashes_are_named():
    raw = _raw()
    for arm in ("ungated", "gated"):
        raw["experiments"][arm].update(budgets=[1, 4], seeds=[0, 2])
    plan = parse_params(raw).hypothesis_plans["H2_gating"]
    assert plan.seeds == (0, 2) and len(plan.a) == 4
    raw["hypotheses"]["H2_gating"]["seeds"] = [0, 1]
    with pytest.raises(InputError, match=r"hypotheses.H2_gating.seeds: .* give them in one"):
        parse_params(raw)
    raw = _raw()
    raw["experiments"]["gated_s1"] = {**raw["experiments"]["gated"], "gate": "oracle"}
    with pytest.raises(InputError, match="'gated_s1' for seed 1 of 'gated' clashes"):
        parse_params(raw)


def test_oracle_arm_must_be_oracle_gated():
    raw = _raw()
    raw["hypotheses"]["H2_gating"]["oracle"] = "gated_oracle"
    plan = parse_params(raw).hypothesis_plans["H2_gating"]
    assert [v.key for v in plan.oracle][:2] == ["gated_oracle", "gated_oracle_s1"]
    raw["hypotheses"]["H2_gating"]["oracle"] = "gated"
    with pytest.raises(InputError, match="hypotheses.H2_gating.oracle: 'gated' is not oracle"):
        parse_params(raw)


def test_user_study_gating_hypotheses_run_budgets_1_4_16_over_five_seeds():
    from hdmap_ad.config import load_params

    p = load_params(REPO / "presets" / "user_study.yaml")
    for key in ("H2_oracle_vs_mixed", "H2_p90_vs_mixed", "H2_soft_vs_mixed"):
        plan = p.hypothesis_plans[key]
        assert plan.claim == "condition_macro" and len(plan.seeds) >= 5
        assert sorted({v.budget for v in plan.b}) == [1, 4, 16]
    assert p.hypothesis_plans["H2_p90_vs_mixed"].oracle is not None


# -- the report -------------------------------------------------------------------------------
def test_report_paragraph_table_and_forest_plot(tmp_path):
    from hdmap_ad.report.build import _hypothesis_lines, hypothesis_paragraph, methods_gate_lines

    tables = {}
    for domain in ("A", "C"):
        for s in range(2):
            y, cond, s_a, s_b = _calibration_case(s + (5 if domain == "C" else 0))
            tables[(domain, s)] = (_scores(y, cond, s_a, thr=2.5), _scores(y, cond, s_b, thr=1.0))
    h = hypothesis_report(_spec(tmp_path, tables))
    path = tmp_path / "H.json"
    path.write_text(json.dumps(h))
    text = hypothesis_paragraph(h)
    for needle in ("condition-macro AUROC", "`claim: condition_macro`", "2 reference seeds",
                   "held out of scoring", "4 cold + 4 warm", "budgets 4", "domains A, C",
                   "Owen 2007", "single draw, seed 0", "macro average over domains",
                   "margin of 0 AUROC", "Holm-adjusted over a family of 12 verdicts",
                   "**inconclusive**"):
        assert needle in text, needle
    lines = _hypothesis_lines(str(path), tmp_path / "figures", tmp_path)
    md = "\n".join(lines)
    assert "| macro (A, C) | 4 |" in md and "**+0.0000 [+0.0000, +0.0000] inconclusive**" in md
    assert "| C | 4 | b: `b` (p90) |" in md  # routing of the gated arm
    plot = tmp_path / "figures" / "hypothesis_H_forest.png"
    assert plot.read_bytes()[:4] == b"\x89PNG" and "hypothesis_H_forest.png" in md
    # the methods x gates table reads the claimed verdict of the new layout
    entries = [{"domain": "C", "label": "domainC", "experiment": x, "method": "patchcore",
                "gate": g, "metrics": str(tmp_path / f"{x}.json")}
               for x, g in (("a", "mixed"), ("b", "p90"))]
    for e in entries:
        (tmp_path / f"{e['experiment']}.json").write_text(json.dumps(
            {"metrics": {"auroc": 0.9}, "per_condition": {"cold": {"auroc": 0.8},
                                                          "warm": {"auroc": 1.0}}}))
    gate_md = "\n".join(methods_gate_lines(entries, [str(path)]))
    assert "condition_macro" in gate_md and "+0.0000 [+0.0000, +0.0000] inconclusive" in gate_md


def test_summary_names_test_tuned_figures_and_puts_them_last():
    from hdmap_ad.metrics.summary import COLUMNS, markdown

    names = [c for c, _ in COLUMNS]
    tuned = [c for c in names if c.endswith("_test_tuned")]
    assert tuned == ["f1_max_test_tuned", "accuracy_best_threshold_test_tuned"]
    assert names.index("accuracy_deployable") < min(names.index(c) for c in tuned)
    assert names[-len(tuned):] == tuned
    md = markdown({"x": {"method": "patchcore", **dict.fromkeys(names, 0.5)}})
    assert "accuracy_best_threshold_test_tuned\\*" in md and "\\* tuned on the test" in md


def test_app_table_shows_the_margin_the_correction_and_the_adjusted_p(tmp_path):
    from hdmap_ad.app.data import Run

    tables = {}
    for s in range(2):
        d = _draw(s, n=60, effect=1.5, round_to=None)
        tables[("C", s)] = (_scores(d.y, d.conditions, d.s_a, thr=0.5),
                            _scores(d.y, d.conditions, d.s_b, thr=0.7))
    h = hypothesis_report({**_spec(tmp_path, tables, claim="pooled", default=False),
                           "margin": 0.01})
    (tmp_path / "results" / "hypotheses").mkdir(parents=True)
    (tmp_path / "results" / "hypotheses" / "H.json").write_text(json.dumps(h))
    row = Run(tmp_path).hypotheses_table().iloc[0]
    assert row["margin"] == 0.01 and row["correction"] == "holm over 4"
    assert row["verdict"] == "supported"
    entry = h["results"]["C"][0]
    assert row["p_adjusted"] == entry["claims"]["pooled"]["p_adjusted"]["supported"] < 0.025
