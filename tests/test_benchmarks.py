"""The benchmark scripts run (tiny sizes) and write the figures they promise.

Timings are printed by the scripts, never asserted here; these tests keep the harness working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_search_recall_reports_exact_flat_and_measured_approximations(tmp_path):
    _bench("search_recall.py", "--bank", "3000", "--queries", "300", "--dim", "16",
           "--out-dir", str(tmp_path))
    result = json.loads((tmp_path / "search_recall.json").read_text())
    rows = {r["index"]: r for r in result["rows"]}
    assert rows["flat"]["recall_at_1"] == 1.0
    assert rows["flat"]["mean_rel_distance_error"] == 0.0
    assert all(0.5 <= r["recall_at_1"] <= 1.0 for r in rows.values())
    assert (tmp_path / "search_recall.md").read_text().count("| hnsw") == 2


def test_scoring_memory_runs_the_real_steps_at_two_sizes(tmp_path):
    _bench("scoring_memory.py", "--n-test", "64", "--factor", "2", "--out-dir", str(tmp_path))
    result = json.loads((tmp_path / "scoring_memory.json").read_text())
    assert [r["n_test"] for r in result["runs"]] == [64, 128]
    big, small = result["runs"][1], result["runs"][0]
    assert big["feature_cache_mb"] > 1.8 * small["feature_cache_mb"]
    assert result["score_peak_rss_ratio"] > 0


def test_coreset_scale_without_anomalib_env(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import coreset_scale

    monkeypatch.setattr(coreset_scale, "ANOMALIB_PY", tmp_path / "absent")
    assert coreset_scale.main(["--sizes", "3000", "--dim", "32", "--ratio", "0.02",
                               "--out-dir", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "coreset_scale.json").read_text())["sizes"][0]
    assert row["k"] == 60 and row["anomalib"] is None and row["ours"]["coverage_radius"] > 0
    x = coreset_scale.patch_like(500, 8)
    assert x.shape == (500, 8) and x.dtype.name == "float32" and (x >= 0).all()


def test_vs_anomalib_reuses_only_a_matching_anomalib_run_and_tables_it():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import vs_anomalib

    ds = {"backbone": {"key": "b", "layers": ["x"]}}
    data = {"root": "r", "kind": "mvtec", "n_train": 2, "n_test": 3, "train_patches": 8,
            "maps_sha256": "ab"}
    prev = {"data": data, "backbone": ds["backbone"], "bank_size": {"anomalib": 5}}
    assert vs_anomalib._reusable(prev, ds, data, 5) is prev
    assert vs_anomalib._reusable(prev, ds, {**data, "root": "other/clone"}, 5) is prev
    assert vs_anomalib._reusable(prev, ds, {**data, "maps_sha256": "cd"}, 5) is None
    no_hash = {k: v for k, v in data.items() if k != "maps_sha256"}  # older JSON: re-measure
    assert vs_anomalib._reusable({**prev, "data": no_hash}, ds, no_hash, 5) is None
    assert vs_anomalib._reusable(prev, ds, data, 6) is None
    assert vs_anomalib._reusable(prev, ds, {**data, "n_test": 4}, 5) is None
    assert vs_anomalib._reusable(None, ds, data, 5) is None
    phase = {"wall_s": 2.0, "peak_rss_mb": 100.0}
    entry = {"data": data, "bank_size": {"ours": 5, "anomalib": 5},
             "ours": dict.fromkeys(("extraction", "coreset", "scoring", "total"), phase),
             "anomalib": dict.fromkeys(("extraction", "coreset", "scoring", "total"),
                                       {"wall_s": 50.0, "peak_rss_mb": 300.0}),
             "ratio_anomalib_over_ours": dict.fromkeys(
                 ("extraction", "coreset", "scoring", "total"), {"wall": 25.0}),
             "auroc": {"ours": 0.9, "anomalib": 0.902, "abs_diff": 0.002},
             "targets_met": {"coreset_speedup": True}}
    md = vs_anomalib.markdown({"machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1},
                               "datasets": {"toy": entry}})
    assert "| coreset | 2.0 | 50.0 | 25.0x | 100 | 300 |" in md
    assert "AUROC: ours 0.9000, anomalib 0.9020" in md


def test_scale_quick_tables_every_step_of_the_study(tmp_path):
    # tiny sizes: the children's own interpreters dwarf the descriptors, so the bank step's
    # RSS target (< 3x its input) can be missed here and the script exit 1; the figures are
    # checked, not the verdict. One BLAS thread: tiny ops on a busy machine stall otherwise.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick", "--sizes", "3000",
         "6000", "--ratios", "0.1", "--input-size", "28", "--extract-maps", "2",
         "--metric-maps", "40", "--target-n", "2000", "--target-dim", "16",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    est = result["estimate"]
    assert [(s["step"], s["ratio"]) for s in est["steps"]] == [
        ("extraction", None), ("bank", 0.1), ("scoring", 0.1), ("metrics", None)]
    for s in est["steps"]:
        assert s["cpu_s"] > 0 and s["gpu_s"] > 0 and s["peak_rss_bytes"] > 0, s
        assert s["study_cpu_s"] == 4 * s["cpu_s"]
    assert set(est["totals"]) == set(est["reference_cv"]) == {"0.1"}
    assert est["patches_per_map"] == 4 and est["train_patches"] == 4000
    ext = result["extraction"]
    assert ext["grid"] == [2, 2] and ext["dim"] == 768 and ext["maps"] == 2
    tokens, width = 5, 384  # 2 x 2 patches + CLS; ViT-S: 12 blocks, MLP 4x
    vit = 12 * (24 * tokens * width**2 + 4 * tokens**2 * width) + 2 * 4 * 3 * 14 * 14 * width
    assert abs(ext["flops_per_map"] - vit) < 1e-6 * vit
    assert result["scoring"]["0.1"]["bank_rows"] == 400 and result["metrics"]["maps"] == 40
    rows = result["bank"] + [result["target_row"]]
    assert [(r["n"], r["dim"]) for r in rows] == [(3000, 768), (6000, 768), (2000, 16)]
    for r in rows:
        assert r["picks"] == r["n"] // 10 and 0 < r["passes_per_pick"] <= 1
        assert r["rss_ok"] == (r["peak_rss_bytes"] / r["input_bytes"] < 3.0)
    assert result["target_row"]["time_ok"] is True
    assert proc.returncode == (0 if all(result["targets"].values()) else 1)
    md = (tmp_path / "scale.md").read_text()
    assert "| **study total** | 10% |" in md and "(estimate)" in md and "random init" in md


def test_bank_step_benchmark_runs_the_fit_code_in_a_child():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bank_step

    row = bank_step.bank_step_benchmark(4096, 16, 0.05, threads=1)
    assert row["picks"] == 205 and row["peak_rss_bytes"] > row["input_bytes"] > 0
    assert 0 < row["passes"] and row["passes_per_pick"] == row["passes"] / row["picks"]


def test_verdict_coverage_prints_the_grid(tmp_path):
    _bench("verdict_coverage.py", "--replicates", "8", "--n-boot", "50", "--per-stratum", "10",
           "--out-dir", str(tmp_path))
    result = json.loads((tmp_path / "verdict_coverage.json").read_text())
    # 2 sigma_t x (S=1 at sigma_r 0, then S in 3, 5, 10 at 4 seed effects)
    assert len(result["rows"]) == 2 * (1 + 3 * 4)
    assert all(0 <= r["coverage"] <= 1 and r["lower"] <= r["coverage"] <= r["upper"]
               for r in result["rows"])
    assert (tmp_path / "verdict_coverage.md").read_text().count("\n| ") == 1 + 26


def test_selection_real_part_params_ties_and_table(tmp_path):
    # the real-data part's pieces, without the pipeline: its params parse (few-shot train/good
    # references, gate mixed, the same grids and recipes), and ties give tau n/a, not 0
    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection

    from hdmap_ad.config import parse_params

    for quick, k, size, grids in ((False, 16, 256, selection.GRIDS),
                                  (True, 4, 128, selection.QUICK_REAL_GRIDS)):
        params = selection.real_params(quick, root=tmp_path)
        p = parse_params(params)
        assert (p.dataset.kind, p.domains) == ("mvtec", (selection.REAL_DOMAIN,))
        assert p.backbones["effnet_lite2"].input_size == size
        assert set(p.selections) == {f"{m}_{r}" for m in grids for r in selection.RECIPES}
        assert selection.grids_of(params) == grids
        for plan in p.selections.values():
            for point in plan.points:
                exp = p.experiments[point.key]
                assert (exp.gate, exp.references.protocol, exp.references.k) == (
                    "mixed", "train", k)
    tau, why = selection.kendall_tau_b([0.9, 0.8, 0.7], [0.5, 0.7, 0.6])
    assert abs(tau + 1 / 3) < 1e-12 and why is None
    assert selection.kendall_tau_b([0.9, 0.8], [1.0, 1.0]) == (
        None, "test AUROC the same at every point")
    assert selection.kendall_tau_b([1.0, 1.0], [1.0, 1.0])[0] is None

    rows = [{"dataset": "mvtec_bottle", "domain": selection.REAL_DOMAIN, "method": "patchcore",
             "recipe": "cutpaste", "strength": "all", "validation_auroc": [1.0, 1.0],
             "test_auroc": [1.0, 1.0], "points": [{}, {}], "default": 0,
             **selection.grid_figures([1.0, 1.0], [1.0, 1.0], [20, 10], 0)}]
    assert rows[0]["regret"] == 0 and rows[0]["chosen"] == 1  # the tie rule: smaller model
    [s] = selection.summarize(rows)
    assert (s["tau"], s["tau_domains"], s["test_tied"], s["validation_saturated"]) == (
        None, 0, 1, 1)
    real = {"dataset": "mvtec_bottle", "status": "ran", "reason": None, "mode": "quick",
            "root": str(tmp_path), "domain": selection.REAL_DOMAIN,
            "references": {"k": 4, "pick": "random", "seed": 0, "protocol": "train"},
            "deploy_folds": 4, "gate": "mixed", "layers": ["blocks.2"], "input_size": 128,
            "per_reference": 3, "grids": selection.QUICK_REAL_GRIDS, "wall_s": 1.0}
    result = {"mode": "quick", "machine": "m", "date": "d", "wall_s": 1.0, "domains": ["C"],
              "grids": {}, "real": real, "summary": [s], "rows": rows}
    md = selection.markdown(result)
    assert ("| mvtec_bottle | patchcore | cutpaste | all | n/a (0) | 0.000 | 0.000 | 0.000 "
            "| 1/1 | 1/1 | 1/1 |") in md
    assert "validation and test AUROC the same at every point" in md
    assert "| method | recipe | C | mvtec_bottle |" in md
    skipped = {"dataset": "mvtec_bottle", "status": "skipped", "reason": "x not found"}
    assert "mvtec_bottle: skipped (x not found)." in selection.markdown(
        {**result, "real": skipped, "summary": [], "rows": []})


def test_selection_real_part_skips_with_one_line(tmp_path, monkeypatch, capsys):
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection

    monkeypatch.setattr(selection, "REAL_ROOT", tmp_path / "absent")
    args = argparse.Namespace(no_real=False, collect_only=False, real_project=None,
                              project=str(tmp_path / "bench"), cores=1)
    rows, info = selection.real_part(args, quick=True)
    assert rows == [] and info["status"] == "skipped" and "not found" in info["reason"]
    rows, info = selection.real_part(argparse.Namespace(**{**vars(args), "no_real": True}),
                                     quick=True)
    assert rows == [] and info["reason"] == "--no-real given"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("real data (mvtec_bottle): skipped: ")
                                 for e in err)
    assert not (tmp_path / "bench-real").exists()  # nothing laid out, nothing run
