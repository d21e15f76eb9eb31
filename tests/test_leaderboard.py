"""Leaderboards (``hdmap_ad.report.leaderboard``): Demšar's worked example, untestable
Wilcoxon pairs, params errors, and the CLI step on hand-made metrics JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import friedmanchisquare

from hdmap_ad.cli import main as cli
from hdmap_ad.config import load_params, parse_params
from hdmap_ad.errors import InputError
from hdmap_ad.report.leaderboard import (
    critical_difference,
    leaderboard,
    min_attainable_p,
    report_lines,
)
from tests.conftest import REPO

#: Demšar (2006), Table 6: AUC of C4.5 with its parameters tuned (m: minimal examples in a
#: leaf, cf: confidence of pruning) on 14 UCI data sets, columns C4.5, C4.5+m, C4.5+cf,
#: C4.5+m+cf. The paper ranks sonar (row 13) 4, 1, 2, 3, where the printed AUCs tie at 0.975
#: (rounded in print): 0.97501 keeps the paper's ranks.
DEMSAR_NAMES = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
DEMSAR_AUC = np.array([
    [0.763, 0.768, 0.771, 0.798],  # adult (sample)
    [0.599, 0.591, 0.590, 0.569],  # breast cancer
    [0.954, 0.971, 0.968, 0.967],  # breast cancer wisconsin
    [0.628, 0.661, 0.654, 0.657],  # cmc
    [0.882, 0.888, 0.886, 0.898],  # ionosphere
    [0.936, 0.931, 0.916, 0.931],  # iris
    [0.661, 0.668, 0.609, 0.685],  # liver disorders
    [0.583, 0.583, 0.563, 0.625],  # lung cancer
    [0.775, 0.838, 0.866, 0.875],  # lymphography
    [1.000, 1.000, 1.000, 1.000],  # mushroom
    [0.940, 0.962, 0.965, 0.962],  # primary tumor
    [0.619, 0.666, 0.614, 0.669],  # rheum
    [0.972, 0.981, 0.97501, 0.975],  # voting
    [0.957, 0.978, 0.946, 0.970],  # wine
])


def test_demsar_table6_worked_example():
    """Demšar 2006, section 3.2.2 on Table 6 (the raw AUC table, ties as the paper ranks
    them): average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28, F_F = 3.69 (df 3, 39);
    q_0.05 = 2.569 and CD = 1.25 for k = 4, N = 14; at alpha 0.10, CD = 1.12. Nemenyi then
    separates no pair at 0.05 (the largest rank difference is 1.179)."""
    res = leaderboard(DEMSAR_AUC, DEMSAR_NAMES, [f"d{i}" for i in range(14)])
    avg = {r["experiment"]: r["average_rank"] for r in res["ranking"]}
    assert [avg[n] for n in DEMSAR_NAMES] == pytest.approx([3.143, 2.000, 2.893, 1.964],
                                                           abs=5e-4)
    assert [r["experiment"] for r in res["ranking"]] == ["C4.5+m+cf", "C4.5+m", "C4.5+cf",
                                                          "C4.5"]
    assert res["friedman"]["chi2"] == pytest.approx(9.28, abs=0.005)
    assert res["friedman"]["df"] == 3
    iman = res["iman_davenport"]
    assert iman["F"] == pytest.approx(3.69, abs=0.005)
    assert (iman["df1"], iman["df2"]) == (3, 39)
    # both reject at 0.05 (the paper's critical values 7.8 and 2.85); F_F is less conservative
    assert iman["p"] < res["friedman"]["p"] < 0.05
    assert res["nemenyi"]["q_alpha"] == pytest.approx(2.569, abs=5e-4)
    assert res["nemenyi"]["critical_difference"] == pytest.approx(1.25, abs=0.005)
    assert critical_difference(4, 14, 0.10)[1] == pytest.approx(1.12, abs=0.005)
    assert not any(p["nemenyi_significant"] for p in res["pairwise"])
    # the library's Nemenyi p agrees with the CD: p < alpha exactly when the ranks differ by
    # more than CD (here none; checked both ways on random tables below)
    assert all(p["nemenyi_p"] >= 0.05 for p in res["pairwise"])


def test_friedman_matches_scipy_without_ties_and_nemenyi_matches_cd():
    """Without ties Demšar's chi2_F is scipy's Friedman statistic; a pair's Nemenyi p is below
    alpha exactly when its average ranks differ by more than the critical difference."""
    rng = np.random.default_rng(3)
    for n, k in ((10, 4), (7, 6), (25, 3)):
        table = rng.normal(size=(n, k)) + np.linspace(0, 1.5, k)
        res = leaderboard(table, [f"e{c}" for c in range(k)], [f"d{r}" for r in range(n)])
        ref = friedmanchisquare(*table.T)
        assert res["friedman"]["chi2"] == pytest.approx(ref.statistic, rel=1e-9)
        assert res["friedman"]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        for p in res["pairwise"]:
            assert p["nemenyi_significant"] == (p["nemenyi_p"] < 0.05)


def test_holm_adjusts_the_raw_wilcoxon_p_values():
    rng = np.random.default_rng(5)
    table = rng.normal(size=(9, 5)) + np.linspace(0, 2, 5)
    res = leaderboard(table, list("abcde"), [f"d{r}" for r in range(9)])
    raw = np.array([p["wilcoxon_p"] for p in res["pairwise"]])
    m = len(raw)
    order = np.argsort(raw, kind="stable")
    holm = np.empty(m)
    holm[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * raw[order]))
    assert [p["wilcoxon_p_holm"] for p in res["pairwise"]] == pytest.approx(holm, rel=1e-12)
    assert all(p["wilcoxon_p_holm"] >= p["wilcoxon_p"] for p in res["pairwise"])


def _ordered(n_domains: int) -> np.ndarray:
    """a > b > c on every domain, every difference distinct (the most extreme data)."""
    base = np.linspace(0.6, 0.9, n_domains)
    steps = np.arange(1, n_domains + 1) * 0.01
    return np.stack([base + 2 * steps, base + steps, base], axis=1)


def test_pairs_are_untestable_below_six_domains():
    """With 5 domains the exact two-sided Wilcoxon p cannot fall below 2 / 2^5 = 0.0625 even
    when one experiment wins every domain: the pair is marked untestable, never significant.
    With 6 the floor is 0.03125 < 0.05: testable. A zero difference drops a domain."""
    assert [min_attainable_p(n) for n in (0, 4, 5, 6)] == pytest.approx(
        [1.0, 0.125, 0.0625, 0.03125])
    five = leaderboard(_ordered(5), ["a", "b", "c"], list("ABCDE"))
    for p in five["pairwise"]:
        assert p["untestable"] and not p["wilcoxon_significant"]
        assert p["min_attainable_p"] == pytest.approx(0.0625)
        assert p["wilcoxon_p"] == pytest.approx(0.0625)  # the extreme data reach the floor
        assert p["better"] == p["a"]
    six = leaderboard(_ordered(6), ["a", "b", "c"], list("ABCDEF"))
    for p in six["pairwise"]:
        assert not p["untestable"]
        assert p["wilcoxon_p"] == pytest.approx(0.03125)
        assert p["wilcoxon_p_holm"] == pytest.approx(3 * 0.03125)  # Holm over 3 pairs
    tied = _ordered(6)
    tied[0, 1] = tied[0, 0]  # a and b tie on one domain: 5 non-zero differences left
    pair = leaderboard(tied, ["a", "b", "c"], list("ABCDEF"))["pairwise"][0]
    assert (pair["a"], pair["b"], pair["n_nonzero"]) == ("a", "b", 5)
    assert pair["untestable"] and pair["min_attainable_p"] == pytest.approx(0.0625)


def test_lower_is_better_reverses_the_ranks_and_identical_rankings_have_infinite_f():
    table = _ordered(4)
    best_first = leaderboard(table, ["a", "b", "c"], list("ABCD"))
    low_first = leaderboard(table, ["a", "b", "c"], list("ABCD"), higher_is_better=False)
    assert [r["experiment"] for r in best_first["ranking"]] == ["a", "b", "c"]
    assert [r["experiment"] for r in low_first["ranking"]] == ["c", "b", "a"]
    # every domain ranks alike: chi2_F = N (k - 1), F_F is infinite (None), its p 0
    assert best_first["friedman"]["chi2"] == pytest.approx(8.0)
    assert best_first["iman_davenport"]["F"] is None
    assert best_first["iman_davenport"]["p"] == 0.0


# -- params ---------------------------------------------------------------------------------
def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("board,needle", [
    ({"experiments": ["gated", "nope"]}, "leaderboards.x.experiments: unknown experiment"),
    ({"experiments": ["gated"]}, "leaderboards.x.experiments: a leaderboard ranks at least 2"),
    ({"experiments": ["gated", "gated"]}, "leaderboards.x.experiments: ['gated'] listed more"),
    ({"experiments": ["gated", "ungated"], "domains": ["C"]},
     "leaderboards.x.domains: a leaderboard ranks over at least 2 domains"),
    ({"experiments": ["gated", "ungated"], "domains": ["C", "Q"]},
     "leaderboards.x.domains: ['Q'] not in domains"),
    ({"experiments": ["gated", "ungated"], "alpha": 1.5}, "params: leaderboards.x.alpha"),
    ({"experiments": ["gated", "ungated"], "metric": "metrics/auroc"},
     "params: leaderboards.x.metric"),
])
def test_bad_leaderboards_name_the_key(board, needle):
    raw = _raw()
    raw["leaderboards"] = {"x": board}
    with pytest.raises(InputError, match=needle.replace(".", r"\.").replace("[", r"\[")):
        parse_params(raw)


def test_a_sweep_ranks_its_variants_and_one_domain_in_params_is_refused():
    raw = _raw()
    raw["experiments"]["swept"] = {**raw["experiments"]["gated"], "seeds": [0, 1]}
    raw["leaderboards"] = {"x": {"experiments": ["gated", "swept"]}}
    assert parse_params(raw).leaderboards["x"].experiments == ("gated", "swept_s0", "swept_s1")
    raw["leaderboards"] = {"x": {"experiments": ["swept_s1", "swept"]}}
    with pytest.raises(InputError, match=r"leaderboards\.x\.experiments: \['swept_s1'\] "
                                         "listed more than once"):
        parse_params(raw)
    raw = _raw()
    raw["domains"] = ["C"]
    raw["hypotheses"]["H2_gating"]["domains"] = ["C"]
    raw["leaderboards"] = {"x": {"experiments": ["gated", "ungated"]}}
    with pytest.raises(InputError, match=r"leaderboards\.x\.domains: .*params has \['C'\]"):
        parse_params(raw)


def test_shipped_leaderboards_rank_targets_only():
    """The demo's leaderboard ranks experiments it already runs on every domain (no new fit
    or score job); the methods preset's ranks every method x gate it defines."""
    demo = load_params(REPO / "params.yaml")
    (board,) = demo.leaderboards.values()
    assert len(board.experiments) >= 3
    assert set(board.experiments) <= set(demo.target_experiments)
    assert board.domains == demo.domains and len(demo.domains) == 4
    preset = load_params(REPO / "presets" / "methods.yaml")
    (full,) = preset.leaderboards.values()
    assert sorted(full.experiments) == sorted(preset.target_experiments)
    assert len({(e.method.name, e.gate) for e in map(preset.experiments.get, full.experiments)}
               ) == len(full.experiments)


# -- the step -------------------------------------------------------------------------------
AUROC = {  # domain -> experiment -> pooled AUROC (hand-made)
    "A": {"ungated": 0.91, "gated": 0.95, "gated_oracle": 0.97},
    "B": {"ungated": 0.80, "gated": 0.78, "gated_oracle": 0.85},
    "C": {"ungated": 0.70, "gated": 0.76, "gated_oracle": 0.76},
    "D": {"ungated": 0.66, "gated": 0.71, "gated_oracle": 0.74},
}


def _spec(tmp_path: Path, **extra) -> dict:
    results = {}
    for d, row in AUROC.items():
        for e, auc in row.items():
            path = tmp_path / "results" / f"domain{d}_{e}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"experiment": e, "metrics": {"auroc": auc}}))
            results.setdefault(d, {})[e] = str(path)
    return {"key": "gates", "experiments": ["ungated", "gated", "gated_oracle"],
            "domains": list(AUROC), "metric": "metrics.auroc", "alpha": 0.05,
            "higher_is_better": True, "results": results, **extra}


def _run(spec: dict, out: Path) -> int:
    return cli(["leaderboard", "--spec", json.dumps(spec), "--out", str(out)])


def test_cli_writes_json_markdown_and_diagram_deterministically(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "results" / "leaderboards" / "gates.json"
    assert _run(spec, out) == 0
    md = out.with_suffix(".md")
    png = out.with_name("gates_critical_difference.png")
    first = {p: p.read_bytes() for p in (out, md, png)}
    res = json.loads(first[out])
    assert res["leaderboard"] == "gates" and res["metric"] == "metrics.auroc"
    assert res["alpha"] == 0.05
    assert res["table"]["C"] == AUROC["C"]
    assert [r["experiment"] for r in res["ranking"]] == ["gated_oracle", "gated", "ungated"]
    assert res["ranks"]["C"] == {"ungated": 3.0, "gated": 1.5, "gated_oracle": 1.5}
    assert [r["average_rank"] for r in res["ranking"]] == [1.125, 2.125, 2.75]
    assert len(res["pairwise"]) == 3 and all(p["untestable"] for p in res["pairwise"])
    assert {"wilcoxon_p", "wilcoxon_p_holm", "nemenyi_p", "min_attainable_p"} <= set(
        res["pairwise"][0])
    text = first[md].decode()
    assert "| 1 | `gated_oracle` | 1.125 |" in text
    assert "untestable" in text and "](gates_critical_difference.png)" in text
    assert first[png].startswith(b"\x89PNG") and b"Software" not in first[png]
    assert _run(spec, out) == 0
    assert {p: p.read_bytes() for p in first} == first  # byte-identical on a second run
    lines = report_lines([{"json": str(out), "md": str(md), "figure": str(png)}], tmp_path)
    assert "### gates" in lines
    assert "![critical difference diagram: gates](results/leaderboards/"\
           "gates_critical_difference.png)" in lines
    from hdmap_ad.app.data import Run

    (board,) = Run(tmp_path).leaderboards()
    assert board["name"] == "gates" and board["figure"] == png
    assert list(board["ranking"].experiment) == ["gated_oracle", "gated", "ungated"]


@pytest.mark.parametrize("breaks,needle", [
    (lambda s: s["results"]["B"].pop("gated"), "results.B.gated: no metrics JSON given"),
    (lambda s: Path(s["results"]["B"]["gated"]).unlink(), "domainB_gated.json: metrics JSON "
                                                            "not found"),
    (lambda s: Path(s["results"]["B"]["gated"]).write_text('{"experiment": "gated"}'),
     "domainB_gated.json: no key 'metrics.auroc'"),
    (lambda s: Path(s["results"]["B"]["gated"]).write_text(
        '{"experiment": "gated", "metrics": {"auroc": null}}'), "metrics.auroc is null"),
    (lambda s: Path(s["results"]["B"]["gated"]).write_text('{"experiment": "ungated"}'),
     "holds experiment 'ungated', expected 'gated'"),
    (lambda s: s.update(experiments=["gated"]), "leaderboards.gates.experiments"),
])
def test_bad_step_input_is_one_line_and_writes_nothing(tmp_path, capsys, breaks, needle):
    spec = _spec(tmp_path)
    breaks(spec)
    out = tmp_path / "lb" / "gates.json"
    assert _run(spec, out) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lb").exists() or not any((tmp_path / "lb").iterdir())


def test_output_onto_an_input_is_refused(tmp_path, capsys):
    spec = _spec(tmp_path)
    target = Path(spec["results"]["A"]["gated"])
    before = target.read_bytes()
    assert _run(spec, target) == 2
    assert "is one of the metrics JSONs ranked" in capsys.readouterr().err
    assert target.read_bytes() == before
