"""The benchmark scripts run (tiny sizes) and write the figures they promise.

Timings are printed by the scripts, never asserted here; these tests keep the harness working.
"""

from __future__ import annotations

import json
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
