"""The web app's pages through Streamlit's own testing API (``AppTest``), on ``deploy_run``.

Results page: the metrics and hypothesis tables hold the run's numbers, the curves are drawn,
the side by side counts the maps that changed verdict. Map page: a test map's score,
threshold, verdict and gate decision are the run's, the nearest reference patch is a patch of
a reference of the sub-model that scored it (found through the bank's ``sources``); an
uploaded map is scored as ``predict`` scores it; a bad upload is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("streamlit", reason="the app needs Streamlit: pip install -e '.[app]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

from hdmap_ad.app.data import Inspector, Run, Target, compare  # noqa: E402
from hdmap_ad.cli import main as cli  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "src/hdmap_ad/app/main.py"


def _app(run: Path, monkeypatch, **query: str) -> AppTest:
    monkeypatch.setenv("HDMAP_AD_ROOT", str(run))
    at = AppTest.from_file(str(SCRIPT), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at: AppTest, column: str) -> pd.DataFrame:
    """The first table shown that has ``column``."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def _scores(run: Path, exp: str) -> pd.DataFrame:
    return pq.read_table(run / f"work/scores/domain_C/{exp}.parquet").drop_columns(
        ["patch_scores"]).to_pandas()


def test_results_page(deploy_run: Path, monkeypatch):
    at = _app(deploy_run, monkeypatch)
    assert at.title[0].value == "Results"
    metrics = _table(at, "auroc_cold").set_index("target")
    assert sorted(metrics.index) == ["domainC_gated", "domainC_soft"]
    for target in metrics.index:
        m = json.loads((deploy_run / f"results/{target}.json").read_text())
        assert metrics.loc[target, "auroc"] == m["metrics"]["auroc"]
        assert metrics.loc[target, "auroc_cold"] == m["per_condition"]["cold"]["auroc"]
        assert metrics.loc[target, "acc_deployable_warm"] == m["per_condition"]["warm"][
            "accuracy_deployable"]
    hyp = _table(at, "delta_auroc")
    h = json.loads((deploy_run / "results/hypotheses/H_soft.json").read_text())
    assert hyp.verdict.tolist() == [h["results"]["C"][0]["verdict"]]
    lo, hi = h["results"]["C"][0]["auroc"]["ci95"]
    assert hyp.auroc_ci95.tolist() == [f"[{lo:+.4f}, {hi:+.4f}]"]
    assert len(at.get("vega_lite_chart")) == 3  # ROC + one histogram per experiment

    # side by side: gated (a) vs soft (b) on the same test maps
    both = compare(_scores(deploy_run, "gated"), _scores(deploy_run, "soft"))
    got = {m.label: m.value for m in at.metric}
    assert got["maps scored by both"] == str(len(both))
    assert got["verdict changed"] == str(int(both.changed.sum()))
    changed = _table(at, "effect")
    assert len(changed) == both.changed.sum()
    assert all(link.startswith("?page=map&target=domainC_soft&image_id=test%2F")
               for link in changed.inspect)

    # filters narrow the table
    at.multiselect(key="f_gates").set_value(["p90"]).run()
    assert _table(at, "auroc_cold").target.tolist() == ["domainC_gated"]


def test_map_page_test_map(deploy_run: Path, monkeypatch):
    scores = _scores(deploy_run, "soft")
    test = scores[scores.role == "test"].sort_values("score", ascending=False)
    top = test.iloc[0]
    thr = float(scores[scores.role == "reference_cv"].score.max())
    at = _app(deploy_run, monkeypatch, page="map", target="domainC_soft",
              image_id=top.image_id)
    assert at.title[0].value == "Map"
    assert at.selectbox(key="map_image_id").value == top.image_id
    got = {m.label: m.value for m in at.metric}
    assert got["score"] == f"{top.score:.4f}"
    assert got["deployable threshold"] == f"{thr:.4f}"
    assert got["verdict"] == ("anomalous" if top.score >= thr else "normal")
    assert got["gate decision"] == top.routing == "both"
    text = " ".join(m.value for m in at.markdown)
    assert f"p90 = {top.p90:.4f}" in text and "Both sub-models searched" in text
    assert len(at.get("image")) == 5  # map, overlay, nearest reference, both patches zoomed

    # the nearest reference patch is a real patch of a reference of the kept sub-model
    insp = Inspector(Run(deploy_run), Target("domainC_soft", "C", "soft"))
    view = insp.test_map(top.image_id)
    from hdmap_ad.deploy.render import worst_patch

    worst = worst_patch(view.patch_scores)
    near = insp.nearest_reference(insp.descriptors(top.image_id), view.sub_model, worst)
    assert near.available and near.image is not None and near.image.shape == (31, 95)
    assert near.image_id in [r["image_id"] for r in insp.references(view.sub_model)]
    assert f"reference **{near.image_id}**" in text
    query = insp.descriptors(top.image_id)[0][worst]
    ref = insp.descriptors(near.image_id)[0][near.patch]
    assert np.linalg.norm(query - ref) == pytest.approx(near.distance, rel=1e-4)
    # ... and no patch of the sub-model's bank is nearer (brute force)
    bank = insp.models[view.sub_model]
    assert np.min(np.linalg.norm(bank.bank - query, axis=1)) == pytest.approx(
        near.distance, rel=1e-4)


def test_map_page_upload(deploy_run: Path, monkeypatch, tmp_path):
    path = sorted((deploy_run / "data/synthetic/domain_C/test/fault").glob("*.tiff"))[5]
    out = tmp_path / "one.csv"
    assert cli(["predict", "--model", str(deploy_run / "results/models/domainC_gated"),
                "--input", str(path), "--out", str(out), "--quiet"]) == 0
    expected = pd.read_csv(out).iloc[0]
    at = _app(deploy_run, monkeypatch, page="map", target="domainC_gated")
    at.radio(key="map_source").set_value("upload a TIFF/PNG").run()
    at.file_uploader(key="map_upload").set_value(
        (path.name, path.read_bytes(), "image/tiff")).run()
    assert not at.exception, [e.value for e in at.exception]
    got = {m.label: m.value for m in at.metric}
    assert got["score"] == f"{expected.score:.4f}"
    assert got["verdict"] == expected.verdict
    assert got["gate decision"] == expected.routing
    assert len(at.get("image")) == 5

    at.file_uploader(key="map_upload").set_value(("bad.tiff", b"nonsense", "image/tiff")).run()
    assert "bad.tiff: cannot read image" in at.error[0].value


def test_nearest_reference_without_a_patch_bank(deploy_run: Path):
    """Methods without a memory bank of patches say so instead of showing a patch."""
    insp = Inspector(Run(deploy_run), Target("domainC_gated", "C", "gated"))
    insp._models = {"cold": object(), "warm": object()}
    near = insp.nearest_reference(np.zeros((1, 12, 12, 48), np.float32), "cold", (0, 0))
    assert not near.available and "no memory bank" in near.note


def test_compare_marks_fixed_and_broken_maps():
    """Each arm judged at its own deployable threshold (largest reference_cv score)."""
    def scores(values: list[float], thr: float) -> pd.DataFrame:
        ids = ["g1", "g2", "f1", "f2"]
        return pd.DataFrame({
            "image_id": ids + ["r"], "role": ["test"] * 4 + ["reference_cv"],
            "label": ["good", "good", "fault", "fault", "good"],
            "condition": ["cold"] * 5, "gate": ["cold"] * 5, "score": values + [thr]})

    a = scores([1.0, 3.0, 3.0, 1.0], 2.0)  # g2 false alarm, f2 missed
    b = scores([1.0, 1.0, 3.0, 3.0], 2.0)  # both right
    both = compare(a, b).set_index("image_id")
    assert both.changed.tolist() == [False, True, False, True]
    assert both.loc["g2", "effect"] == "fixed" and both.loc["f2", "effect"] == "fixed"
    back = compare(b, a).set_index("image_id")
    assert back.loc[["g2", "f2"], "effect"].tolist() == ["broken", "broken"]
