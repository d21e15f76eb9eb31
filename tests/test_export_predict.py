"""Export a fitted experiment as a model folder, load it anywhere, predict with it.

On the tiny run of ``deploy_run`` (conftest): the exported folder loads without the run's
``work/`` and holds the fitted sub-models, gate and thresholds unchanged; predictions on the
test folders equal the pipeline's own scores bit for bit; bad files are reported in the
``error`` column while the other maps are scored as if they were alone, and the exit status
says that something failed.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from hdmap_ad.cli import main
from hdmap_ad.deploy.bundle import MODEL_JSON, load_bundle
from hdmap_ad.errors import InputError
from tests.conftest import DEPLOY_RUN_CORES


def _scores(run: Path, exp: str) -> pd.DataFrame:
    return pq.read_table(run / f"work/scores/domain_C/{exp}.parquet").drop_columns(
        ["patch_scores"]).to_pandas()


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values={"score": [""]})


@pytest.fixture(scope="module")
def moved_models(deploy_run: Path, tmp_path_factory) -> Path:
    """The exported folders copied away from the run (as onto another machine)."""
    dest = tmp_path_factory.mktemp("elsewhere")
    for name in ("domainC_gated", "domainC_soft"):
        shutil.copytree(deploy_run / "results/models" / name, dest / name)
    return dest


def test_export_round_trip(deploy_run: Path, moved_models: Path, tmp_path, monkeypatch):
    from hdmap_ad.methods.base import load_model

    for exp, subs in (("gated", ["cold", "warm"]), ("soft", ["cold", "warm"])):
        bundle = load_bundle(moved_models / f"domainC_{exp}")
        meta = json.loads((deploy_run / f"work/models/domain_C/{exp}.json").read_text())
        metrics = json.loads((deploy_run / f"results/domainC_{exp}.json").read_text())
        assert sorted(bundle.models) == subs
        # sub-models: the same arrays as the fit step wrote
        for sub in subs:
            original = load_model(deploy_run / f"work/models/domain_C/{exp}", sub,
                                  bundle.experiment.method.method,
                                  bundle.experiment.method.options, _ctx())
            a, b = bundle.models[sub].state()[0], original.state()[0]
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        # gate, thresholds, params, backbone, provenance
        assert bundle.gate.threshold == meta["gate"]["threshold"]
        cv = _scores(deploy_run, exp).query("role == 'reference_cv'")
        assert bundle.deployable == float(cv.score.max())
        assert round(bundle.deployable, 6) == metrics["thresholds"]["deployable"]
        # the bundle holds the whole experiment; the model metadata the fit step's view
        assert bundle.meta["experiment"]["method"]["num_neighbors"] is not None
        assert {k: v for k, v in bundle.meta["experiment"].items() if k != "gate_margin"} \
            | {"method": meta["experiment"]["method"]} == meta["experiment"]
        assert bundle.backbone.input_size == 96 and bundle.backbone.batch_size == 16
        weights = meta["provenance"]["features"]["blocks.2"]["weights"]
        assert bundle.meta["weights"]["state_sha256"] == weights["state_sha256"]
        assert bundle.meta["weights"]["file_sha256"] == weights["file_sha256"]
        assert bundle.meta["format_version"] == 1
        assert bundle.meta["preprocessing"]["map_shape"] == [31, 95]
        refs = bundle.reference_maps()
        assert sorted(refs) == sorted(r["image_id"] for r in meta["references"])

    # the CLI from params writes the same folder as the Snakemake rule
    monkeypatch.chdir(deploy_run)
    out = tmp_path / "cli_export"
    assert main(["export", "--domain", "C", "--experiment", "gated", "--out", str(out)]) == 0
    assert (out / MODEL_JSON).read_bytes() == (
        deploy_run / "results/models/domainC_gated" / MODEL_JSON).read_bytes()

    # an unknown format version is refused with the file named
    bad = tmp_path / "bad"
    shutil.copytree(moved_models / "domainC_gated", bad)
    meta = json.loads((bad / MODEL_JSON).read_text())
    (bad / MODEL_JSON).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="version 99"):
        load_bundle(bad)


def _ctx():
    from hdmap_ad.methods import FitContext

    return FitContext()


@pytest.mark.parametrize("exp", ["gated", "soft"])
def test_predict_equals_pipeline_scores(deploy_run: Path, moved_models: Path, tmp_path, exp):
    """The test maps, in the order the score step scored them, give its scores exactly (same
    extraction batches and threads; scoring in the pipeline's batches on one thread)."""
    scores = _scores(deploy_run, exp)
    test = scores[scores.role == "test"]
    manifest = pd.read_parquet(deploy_run / "work/manifests/domain_C.parquet")
    paths = manifest.set_index("image_id").loc[test.image_id, "path"]
    paths = [str(deploy_run / p) for p in paths]
    out = tmp_path / "pred.csv"
    rc = main(["predict", "--model", str(moved_models / f"domainC_{exp}"), "--input", *paths,
               "--out", str(out), "--threads", str(DEPLOY_RUN_CORES), "--quiet"])
    assert rc == 0
    pred = _read_csv(out)
    assert pred.path.tolist() == paths  # input order
    assert np.array_equal(pred.score.to_numpy(), test.score.to_numpy())  # bit for bit
    assert pred.routing.tolist() == test.routing.tolist()
    assert pred.sub_model.tolist() == test.gate.tolist()
    thr = float(scores[scores.role == "reference_cv"].score.max())
    assert (pred.threshold == thr).all()
    assert pred.verdict.tolist() == ["anomalous" if s >= thr else "normal" for s in pred.score]
    assert (pred.error == "").all()
    both = pred.routing == "both"
    assert both.all() == (exp == "soft")
    if exp == "soft":  # both sub-models' scores, the lower kept
        sub = pred[["score_cold", "score_warm"]].astype(float).to_numpy()
        assert np.array_equal(sub.min(axis=1), pred.score.to_numpy())
    else:
        kept = [row[f"score_{row.sub_model}"] for _, row in pred.iterrows()]
        assert np.array_equal(np.asarray(kept, dtype=float), pred.score.to_numpy())
    assert ((0 <= pred.worst_y) & (pred.worst_y < 31) & (0 <= pred.worst_x)
            & (pred.worst_x < 95)).all()


def test_bad_files_reported_and_others_scored(deploy_run: Path, moved_models: Path, tmp_path,
                                              capsys):
    good = sorted((deploy_run / "data/synthetic/domain_C/test/fault").glob("*.tiff"))[:3]
    folder = tmp_path / "new_maps"
    folder.mkdir()
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "000001_corrupt.tiff").write_bytes(b"not a tiff at all")
    tifffile.imwrite(folder / "000002_wrong_shape.tiff", np.ones((20, 40), np.float32))
    nan = np.full((31, 95), 0.5, np.float32)
    nan[3, 7] = np.nan
    tifffile.imwrite(folder / "000003_nan.tiff", nan)
    model = str(moved_models / "domainC_soft")

    out, maps = tmp_path / "pred.csv", tmp_path / "maps"
    rc = main(["predict", "--model", model, "--input", str(folder), "--out", str(out),
               "--maps-dir", str(maps), "--maps-format", "both", "--quiet"])
    assert rc == 1  # something failed
    assert "6 maps, 3 scored" in capsys.readouterr().err
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert len(rows) == 6
    assert "cannot read image" in rows["000001_corrupt.tiff"]["error"]
    assert "map shape (20, 40) differs from the model's (31, 95)" in rows[
        "000002_wrong_shape.tiff"]["error"]
    assert "NaN" in rows["000003_nan.tiff"]["error"]
    for name in ("000001_corrupt.tiff", "000002_wrong_shape.tiff", "000003_nan.tiff"):
        assert rows[name]["score"] == "" and rows[name]["verdict"] == ""
    # the good maps: scored, with anomaly maps, exactly as without the bad files
    alone = tmp_path / "alone.csv"
    assert main(["predict", "--model", model, "--input", *map(str, good), "--out", str(alone),
                 "--quiet"]) == 0
    ref = {Path(r["path"]).name: r for r in csv.DictReader(open(alone, newline=""))}
    for p in good:
        row = rows[p.name]
        assert row["error"] == "" and row["score"] == ref[p.name]["score"] != ""
        assert row["verdict"] in ("anomalous", "normal")
        png, tiff = row["anomaly_map"].split(";")
        assert Path(png).name == f"{p.stem}.png" and Path(png).is_file()
        heat = tifffile.imread(tiff)
        assert heat.shape == (31, 95) and heat.dtype == np.float32
    assert sorted(f.name for f in maps.iterdir()) == [".hdmap-ad", *sorted(  # made by predict
        f"{p.stem}.{ext}" for p in good for ext in ("png", "tiff"))]


def test_predict_refuses_other_weights_and_missing_model(moved_models: Path, tmp_path):
    with pytest.raises(InputError, match="not a model folder"):
        load_bundle(tmp_path)
    bundle_dir = tmp_path / "m"
    shutil.copytree(moved_models / "domainC_gated", bundle_dir)
    meta = json.loads((bundle_dir / MODEL_JSON).read_text())
    meta["weights"]["state_sha256"] = "0" * 64
    (bundle_dir / MODEL_JSON).write_text(json.dumps(meta))
    out = tmp_path / "p.csv"
    rc = main(["predict", "--model", str(bundle_dir), "--input", str(tmp_path / "x.tiff"),
               "--out", str(out), "--quiet"])
    assert rc == 2 and not out.exists()  # nothing written


def test_patch_geometry():
    """Worst-patch locations in map pixels: stretched and aspect-padded backbone inputs."""
    from hdmap_ad.deploy.render import draw_box, overlay_rgb, patch_box, patch_center

    # stretched (bilinear): the grid tiles the whole map
    assert patch_box(0, 0, (33, 33), (31, 95), 260, "bilinear")[:2] == (0, 0)
    assert patch_box(32, 32, (33, 33), (31, 95), 260, "bilinear")[2:] == (31, 95)
    assert patch_center(16, 16, (33, 33), (31, 95), 260, "bilinear") == (15, 47)
    # aspect-pad: the 31 x 95 map fills the middle rows of the square input; patches over
    # the padding clip to the map's border rows
    assert patch_center(16, 16, (33, 33), (31, 95), 260, "aspect-pad") == (15, 47)
    assert patch_center(0, 0, (33, 33), (31, 95), 260, "aspect-pad") == (0, 1)
    assert patch_center(32, 32, (33, 33), (31, 95), 260, "aspect-pad") == (30, 93)
    y0, x0, y1, x1 = patch_box(5, 7, (12, 12), (31, 95), 96, "bilinear")
    assert 0 <= y0 < y1 <= 31 and 0 <= x0 < x1 <= 95
    rgb = overlay_rgb(np.ones((31, 95)), np.zeros((31, 95)), 0.0, 1.0, scale=2)
    assert rgb.shape == (62, 190, 3) and rgb.dtype == np.uint8
    boxed = draw_box(rgb, (y0, x0, y1, x1), 2)
    assert (boxed[2 * y0, 2 * x0] == 255).all() and (boxed != rgb).sum() > 0
