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
