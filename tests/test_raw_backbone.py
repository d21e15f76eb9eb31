"""The ``raw`` backbone: the map itself as a one-channel feature layer (``model: raw``).

Unit level: the cached feature of a map is the map (float32, its own 31 x 95 grid), the
config's defaults and errors, mixed sizes, patch geometry. Pipeline level (slow): the
autoencoder trains on the maps themselves through the unchanged DAG (mixed and p90 gates),
an AE over a CNN backbone still runs beside it, and an exported model over the raw backbone
(PatchCore: its state is an ``.npz``) predicts the pipeline's scores, re-extracting each map.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import yaml

from hdmap_ad.config import BackboneConfig, validate_params
from hdmap_ad.errors import InputError
from hdmap_ad.features.cache import read_features
from hdmap_ad.features.extract import extract_to_cache
from tests.conftest import (
    DROP,
    Replace,
    copy_built_project,
    copy_project,
    dry_run_jobs,
    project_env,
    tiny_experiment,
    tiny_params,
    write_map_items,
)

RAW = {"model": "raw", "layers": ["map"]}


def _maps(n: int, shape: tuple[int, int] = (31, 95), seed: int = 0) -> np.ndarray:
    # values above 1 too: test maps exceed the training maximum
    return np.random.default_rng(seed).uniform(0, 1.3, size=(n, *shape)).astype(np.float32)


def test_cached_feature_of_a_map_is_the_map(tmp_path: Path):
    maps = _maps(5)
    items = write_map_items(tmp_path / "maps", maps)
    cfg = BackboneConfig.from_dict("raw", {**RAW, "batch_size": 2})  # 3 batches
    out = {"map": str(tmp_path / "map.parquet")}
    extract_to_cache(items, cfg, out, progress=False)
    ids, feats, meta = read_features(out["map"], [i for i, _ in items][::-1])
    assert feats.dtype == np.float32 and feats.shape == (5, 31, 95, 1)
    assert np.array_equal(feats[..., 0], maps[::-1])  # bit for bit, aspect kept
    assert meta["grid"] == [31, 95] and meta["channels"] == 1
    assert meta["input_size"] is None and meta["resize"] == "none" and meta["patch_pool"] == 1
    assert meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3
    w = meta["weights"]
    assert w["source"] == "none" and w["file"] is None and w["file_sha256"] is None
    assert len(w["state_sha256"]) == 64
    # the same maps give a byte-identical cache
    again = {"map": str(tmp_path / "again.parquet")}
    extract_to_cache(items, cfg, again, progress=False)
    assert Path(out["map"]).read_bytes() == Path(again["map"]).read_bytes()


def test_rgb_layer_keeps_the_three_channels(tmp_path: Path):
    rgb = np.random.default_rng(1).uniform(0, 1, size=(2, 8, 10, 3)).astype(np.float32)
    items = []
    for i, img in enumerate(rgb):
        path = tmp_path / f"{i}.tiff"
        tifffile.imwrite(path, img, photometric="rgb")
        items.append((str(i), str(path)))
    cfg = BackboneConfig.from_dict("raw", {"model": "raw", "layers": ["map", "rgb"]})
    out = {la: str(tmp_path / f"{la}.parquet") for la in ("map", "rgb")}
    extract_to_cache(items, cfg, out, progress=False)
    assert np.array_equal(read_features(out["rgb"], ["0", "1"])[1], rgb)
    assert np.array_equal(read_features(out["map"], ["0", "1"])[1], rgb[..., :1])


def test_raw_config_defaults_and_errors():
    cfg = BackboneConfig.from_dict("raw", RAW)
    assert (cfg.weights.source, cfg.input_size, cfg.resize, cfg.patch_pool) == \
        ("none", None, "none", 1)
    spec = cfg.to_dict()  # as the rules pass it (``--spec``): input_size null
    assert BackboneConfig.from_dict(spec.pop("key"), spec) == cfg
    # params values win over the model's defaults
    assert BackboneConfig.from_dict("raw", {**RAW, "patch_pool": 3}).patch_pool == 3
    sized = BackboneConfig.from_dict("raw", {**RAW, "input_size": 64, "resize": "aspect-pad"})
    assert (sized.input_size, sized.resize) == (64, "aspect-pad")
    with pytest.raises(InputError, match=r"backbones.raw.weights.source: 'timm' with model "
                                         r"'raw'"):
        BackboneConfig.from_dict("raw", {**RAW, "weights": {"source": "timm"}})
    with pytest.raises(InputError, match=r"backbones.r.weights.source: 'none' with model "
                                         r"'resnet18'"):
        BackboneConfig.from_dict("r", {"model": "resnet18", "layers": ["layer2"],
                                       "weights": {"source": "none"}, "input_size": 64})
    with pytest.raises(InputError, match=r"backbones.raw.input_size: not used with resize "
                                         r"'none'"):
        BackboneConfig.from_dict("raw", {**RAW, "input_size": 64, "resize": "none"})
    with pytest.raises(InputError, match=r"backbones.raw.input_size: required with resize "
                                         r"'bilinear'"):
        BackboneConfig.from_dict("raw", {**RAW, "resize": "bilinear"})


def test_params_schema_takes_a_raw_backbone_without_weights():
    params = {
        "dataset": {"kind": "synthetic", "root": "data/synthetic"},
        "domains": ["C"],
        "backbones": {"raw": RAW},
        "experiments": {"e": {"backbone": "raw", "layers": ["map"],
                              "references": {"protocol": "train"},
                              "method": {"name": "ae"}}},
        "targets": {"experiments": ["e"]},
    }
    validate_params(params)
    params["backbones"]["cnn"] = {"model": "resnet18", "layers": ["layer2"], "input_size": 64}
    with pytest.raises(InputError, match=r"backbones.cnn: 'weights' is a required property"):
        validate_params(params)


def test_resize_none_refuses_a_map_of_another_size(tmp_path: Path):
    items = write_map_items(tmp_path / "maps", _maps(3))
    odd = tmp_path / "maps" / "odd.tiff"
    tifffile.imwrite(odd, _maps(1, shape=(40, 64))[0])
    items.insert(2, ("odd", str(odd)))
    cfg = BackboneConfig.from_dict("raw", {**RAW, "batch_size": 2})  # odd in the 2nd batch
    with pytest.raises(InputError, match=r"odd.tiff: map size \(40, 64\) differs from "
                                         r"\(31, 95\) of .*000000.tiff.*set input_size"):
        extract_to_cache(items, cfg, {"map": str(tmp_path / "map.parquet")}, progress=False)
    assert not (tmp_path / "map.parquet").exists()
    # with an input size, each map is resized (aspect kept by aspect-pad): one S x S grid
    sized = BackboneConfig.from_dict("raw", {**RAW, "input_size": 32, "resize": "aspect-pad"})
    out = {"map": str(tmp_path / "sized.parquet")}
    extract_to_cache(items, sized, out, progress=False)
    _, feats, _ = read_features(out["map"], ["odd", "000000"])
    assert feats.shape == (2, 32, 32, 1)
    assert (feats[1, :5] == 0).all() and (feats[1, 27:] == 0).all()  # 31x95 -> 10x32, padded


def test_patch_geometry_of_the_map_grid():
    from hdmap_ad.deploy.render import patch_box, patch_center

    for row, col in ((0, 0), (15, 47), (30, 94)):
        assert patch_center(row, col, (31, 95), (31, 95), None, "none") == (row, col)
        assert patch_box(row, col, (31, 95), (31, 95), None, "none") == \
            (row, col, row + 1, col + 1)


# --------------------------------------------------------------------------- the pipeline

TINY_AE = tiny_params(
    backbones={"raw": {"model": "raw", "layers": ["map"]},
               "lite2": {"layers": ["blocks.1", "blocks.2"]}},
    experiments={"gated": DROP} | {
        name: tiny_experiment(
            backbone=backbone, layers=layers, gate=gate,
            method=Replace({"name": method, "epochs": 3, **opts}),
            # reference folds (a model each, for the deployable threshold) only where a
            # test reads them: the exported model; every other run trains once per gate
            deploy_folds=4 if name == "ae_raw_p90" else 0)
        for name, backbone, layers, gate, method, opts in (
            ("ae_raw", "raw", ["map"], "mixed", "ae", {"hidden": 4, "latent": 4}),
            ("ae_raw_p90", "raw", ["map"], "p90", "ae", {"hidden": 4, "latent": 4}),
            ("ae_lite2", "lite2", ["blocks.2"], "mixed", "ae", {"hidden": 4, "latent": 4}),
            # every other trained method through the DAG, under a gate each
            ("unet_raw_oracle", "raw", ["map"], "oracle", "unet_ae", {"hidden": 4, "latent": 4}),
            ("vae_raw_p90", "raw", ["map"], "p90", "vae", {"hidden": 4, "latent": 4}),
            # two layers on two grids: the default per-layer flows
            ("ff_lite2_p90", "lite2", ["blocks.1", "blocks.2"], "p90", "fastflow",
             {"flow_steps": 2}),
            ("ssn_lite2_oracle", "lite2", ["blocks.2"], "oracle", "supersimplenet",
             {"seg_hidden": 16, "cls_hidden": 8}),
        )
    } | {  # STFPM: lite2's features are the teacher, the map (input_map) the student's input
        f"stfpm_{gate}": tiny_experiment(
            layers=["blocks.1", "blocks.2"], input_map="raw", gate=gate,
            method=Replace({"name": "stfpm", "epochs": 3, "batch_size": 2}),
            # reference folds (a student each) on the mixed run only: the gated runs' folds
            # take the same path as the exported AE's
            deploy_folds=2 if gate == "mixed" else 0)
        for gate in ("mixed", "p90", "oracle")},
    targets={"experiments": ["ae_raw"]},
)
CORES = 2


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ae_run")
    copy_project(root)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_AE, sort_keys=False))
    env = {**project_env(root), "OMP_NUM_THREADS": str(CORES)}
    targets = [f"results/domainC_{e}.json" for e in TINY_AE["experiments"]]
    proc = subprocess.run(["snakemake", "--cores", str(CORES), "--profile", "profiles/default",
                           *targets, "results/models/domainC_ae_raw_p90"], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root


@pytest.mark.slow
def test_ae_trains_on_the_maps_through_the_pipeline(ae_run: Path):
    feats = read_features(ae_run / "work/features/domain_C/raw/map.parquet")[1]
    assert feats.shape[1:] == (31, 95, 1)
    for exp in TINY_AE["experiments"]:
        m = json.loads((ae_run / f"results/domainC_{exp}.json").read_text())
        assert math.isfinite(m["metrics"]["auroc"]), exp
        assert m["counts"]["test_scored"] == 24 - 4
    raw = json.loads((ae_run / "results/domainC_ae_raw_p90.json").read_text())
    assert raw["provenance"]["features"]["map"]["weights"]["source"] == "none"
    assert set(raw["counts"]["bank"]) == {"cold", "warm"}
    scores = pq.read_table(ae_run / "work/scores/domain_C/ae_raw.parquet").to_pandas()
    assert np.stack(scores.patch_scores.iloc[0]).size == 31 * 95  # one score per map pixel
    # STFPM's student read the map: its model records the student it built from the layout
    student = json.loads((ae_run / "work/models/domain_C/stfpm_p90/cold.json").read_text())
    spec = student["description"]["student"]
    assert spec["model"] == "tf_efficientnet_lite2" and spec["grid"] == [24, 24]
    assert spec["scale"] == 4 and spec["in_channels"] == 1 and spec["side"] == 96
    stfpm = json.loads((ae_run / "results/domainC_stfpm_p90.json").read_text())
    assert set(stfpm["provenance"]["features"]) == {"blocks.1", "blocks.2", "map"}


@pytest.mark.slow
def test_exported_raw_model_predicts_the_pipeline_scores(ae_run: Path, tmp_path: Path):
    from hdmap_ad.cli import main

    # a trained model (torch checkpoints) exported; predict re-extracts each map's raw feature
    scores = pq.read_table(ae_run / "work/scores/domain_C/ae_raw_p90.parquet").drop_columns(
        ["patch_scores"]).to_pandas()
    test = scores[scores.role == "test"]
    manifest = pd.read_parquet(ae_run / "work/manifests/domain_C.parquet")
    paths = [str(ae_run / p) for p in manifest.set_index("image_id").loc[test.image_id, "path"]]
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(ae_run / "results/models/domainC_ae_raw_p90"),
                 "--input", *paths, "--out", str(out), "--threads", str(CORES),
                 "--quiet"]) == 0
    pred = pd.read_csv(out, keep_default_na=False)
    assert (pred.error == "").all()
    np.testing.assert_allclose(pred.score.to_numpy(float), test.score.to_numpy(), rtol=1e-5)
    assert pred.routing.tolist() == test.routing.tolist()
    assert ((0 <= pred.worst_y) & (pred.worst_y < 31) & (0 <= pred.worst_x)
            & (pred.worst_x < 95)).all()


@pytest.mark.slow
def test_a_model_that_reads_the_map_is_not_exported(ae_run: Path, tmp_path: Path):
    from hdmap_ad.config import load_params
    from hdmap_ad.deploy.export import export_model

    params = load_params(ae_run / "params.yaml")
    run = {k: str(ae_run / v) for k, v in (
        ("meta_path", "work/models/domain_C/stfpm_p90.json"),
        ("model_dir", "work/models/domain_C/stfpm_p90"),
        ("scores_path", "work/scores/domain_C/stfpm_p90.parquet"),
        ("metrics_path", "results/domainC_stfpm_p90.json"))}
    with pytest.raises(InputError, match=r"stfpm_p90.json: experiment 'stfpm_p90' reads the "
                                         r"map itself .*cannot be exported yet"):
        export_model(params.backbones["lite2"], out=str(tmp_path / "m"), **run)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_score_options_retrain_nothing_and_training_options_extract_nothing(ae_run: Path,
                                                                            tmp_path: Path):
    """On a copy of the module's run (it edits params): a score-stage option of a trained
    method re-runs scoring only; a training option re-trains but extracts nothing."""
    project = copy_built_project(ae_run, tmp_path / "project")
    env = {**project_env(project), "OMP_NUM_THREADS": str(CORES)}
    params = yaml.safe_load((project / "params.yaml").read_text())

    def dry_run(exp: str = "ae_raw_p90") -> dict[str, int]:
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(["snakemake", "-n", "--cores", str(CORES), "--profile",
                               "profiles/default", f"results/domainC_{exp}.json"],
                              cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return dry_run_jobs(proc.stdout)

    params["experiments"]["ae_raw_p90"]["method"]["score"] = "ssim"
    params["experiments"]["ae_raw_p90"]["method"]["row_window"] = 5
    assert dry_run() == {"score": 1, "metrics": 1}
    params["experiments"]["ae_raw_p90"]["method"]["epochs"] = 4
    assert dry_run() == {"fit": 1, "score": 1, "metrics": 1}
    # STFPM reads two caches (lite2's layers and the raw map): neither is re-extracted
    params["experiments"]["stfpm_p90"]["method"]["combine"] = "sum"
    assert dry_run("stfpm_p90") == {"score": 1, "metrics": 1}
    params["experiments"]["stfpm_p90"]["method"]["momentum"] = 0.5
    assert dry_run("stfpm_p90") == {"fit": 1, "score": 1, "metrics": 1}
