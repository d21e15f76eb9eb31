import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hdmap_ad.report.figures import (
    anomaly_map_grid,
    gate_p90_figure,
    roc_figure,
    score_histograms,
    worst_cases,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.load()
        w, h = img.size
    assert 200 <= w <= 3000 and 100 <= h <= 4000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def _scores(conditions=True, n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n) % 4 == 0, "fault", "good")
    cond = np.where(np.arange(n) % 2 == 0, "cold", "warm") if conditions else "unknown"
    test = pd.DataFrame({
        "image_id": [f"t{i:02d}" for i in range(n)],
        "role": "test",
        "label": labels,
        "condition": cond,
        "score": rng.normal(0, 1, n) + 2.0 * (labels == "fault"),
    })
    cv = pd.DataFrame({"image_id": ["r0", "r1"], "role": "reference_cv", "label": "good",
                       "condition": "cold", "score": [0.5, 1.0]})
    return pd.concat([test, cv], ignore_index=True)


@pytest.mark.parametrize("conditions", [True, False])
def test_score_histograms(tmp_path, conditions):
    path = tmp_path / "out" / "hist.png"
    score_histograms(_scores(conditions), {"best": 0.8, "deployable": None}, path, "scores")
    _check_png(path)


def test_score_histograms_infinite_threshold(tmp_path):
    path = tmp_path / "hist.png"
    score_histograms(_scores(), {"best": float("inf"), "deployable": 1.0}, path, "scores")
    _check_png(path)


def test_roc_figure(tmp_path):
    s = _scores()
    t = s[s.role == "test"]
    y = (t.label != "good").to_numpy().astype(int)
    path = tmp_path / "roc.png"
    roc_figure({"A": (y, t.score.to_numpy()), "B": (y, -t.score.to_numpy()),
                "one class": (np.zeros(5), np.arange(5.0))}, path, "ROC")
    _check_png(path)


@pytest.mark.parametrize("threshold", [0.3, None])
def test_gate_p90_figure(tmp_path, threshold):
    rng = np.random.default_rng(0)
    groups = {"cold/good": rng.normal(0, 1, 20), "cold/fault": rng.normal(0.2, 1, 5),
              "warm/good": rng.normal(2, 1, 20), "warm/fault": np.array([]),
              "references": rng.normal(1, 1, 6)}
    path = tmp_path / "gate.png"
    gate_p90_figure(groups, threshold, path, "gate p90")
    _check_png(path)


def test_anomaly_map_grid(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.random((31, 95)), rng.random((31, 95)), rng.random((31, 95, 3))]
    heat = [rng.random((8, 24)) for _ in maps]
    path = tmp_path / "grid.png"
    anomaly_map_grid(maps, heat, ["FN a", "FP b", "rgb"], path, "worst cases")
    _check_png(path)
    with Image.open(path) as img:
        assert img.size[0] > img.size[1]  # three wide rows stay landscape-ish


def test_anomaly_map_grid_empty_and_mismatch(tmp_path):
    path = tmp_path / "grid.png"
    anomaly_map_grid([], [], [], path, "no cases")
    _check_png(path)
    with pytest.raises(ValueError, match="differ in length"):
        anomaly_map_grid([np.zeros((3, 3))], [], [], tmp_path / "x.png", "bad")


def test_existing_file_is_replaced(tmp_path):
    path = tmp_path / "hist.png"
    path.write_bytes(b"old")
    score_histograms(_scores(), {"deployable": 1.0}, path, "scores")
    _check_png(path)


def test_worst_cases():
    table = pd.DataFrame({
        "image_id": ["f1", "f2", "f3", "f4", "g1", "g2", "g3", "g4", "r1"],
        "role": ["test"] * 8 + ["reference_cv"],
        "label": ["fault", "scratch", "fault", "fault", "good", "good", "good", "good", "good"],
        "score": [0.1, 0.5, 0.3, 2.0, 1.5, 1.0, 3.0, 0.2, 9.0],
    })
    fn, fp = worst_cases(table, threshold=1.0, k=2)
    assert fn == ["f1", "f3"]  # lowest-scoring faults below 1.0 (f2 third, f4 detected)
    assert fp == ["g3", "g1"]  # highest goods at or above 1.0; r1 is not a test row
    fn, fp = worst_cases(table, threshold=1.0, k=10)
    assert fn == ["f1", "f3", "f2"]
    assert fp == ["g3", "g1", "g2"]  # g2 == threshold counts as a false positive
    assert worst_cases(table, threshold=10.0, k=0) == ([], [])


def test_forest_plot(tmp_path):
    from hdmap_ad.report.figures import forest_plot

    rows = [{"group": g, "claim": c, "delta": d, "ci95": ci, "claimed": c == "condition_macro",
             "verdict": "inconclusive", "single": single}
            for g in ("C", "macro")
            for c, d, ci, single in (("pooled", 0.02, [0.01, 0.03], [0.0, 0.04]),
                                     ("condition_macro", 0.0, [-0.01, 0.01], None),
                                     ("cold", None, None, None),
                                     ("warm", -0.001, [-0.002, 0.0], [-0.003, 0.001]))]
    path = tmp_path / "forest.png"
    forest_plot(rows, path, "H2: delta AUROC", margin=0.005)
    _check_png(path)
    empty = tmp_path / "e" / "forest.png"
    forest_plot([], empty, "nothing")
    _check_png(empty)
