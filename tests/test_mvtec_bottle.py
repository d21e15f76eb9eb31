"""The MVTec-style folder path on real images: MVTec AD "bottle" (256 px) from ../shared.

Everything decent scores ~1.0 image AUROC here, so this checks that the folder dataset,
RGB preprocessing, the offline pretrained backbone and scoring are wired right.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hdmap_ad.cli import main
from hdmap_ad.config import spec_json
from tests.conftest import DROP, Replace, tiny_backbone, tiny_experiment

REPO = Path(__file__).resolve().parents[1]
BOTTLE = Path(os.environ.get("HDMAP_AD_SHARED", REPO.parent / "shared")) / "datasets" / (
    "mvtec_bottle_256"
)

pytestmark = pytest.mark.skipif(
    not (BOTTLE / "train" / "good").is_dir(),
    reason=f"{BOTTLE} not present (it ships in ../shared/datasets; CI has it)",
)

BACKBONE = {"key": "lite2",
            **tiny_backbone(input_size=224, resize=DROP, batch_size=32)}
EXPERIMENT = {"key": "ungated", **tiny_experiment(
    layers=["blocks.2", "blocks.4"], references=Replace({"protocol": "train", "k": 48, "seed": 0}),
    gate="mixed", method={"coreset_ratio": 0.05, "num_neighbors": 9}, deploy_folds=2)}


def test_bottle_image_auroc(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    feats = [str(tmp_path / "features" / f"{layer}.parquet") for layer in BACKBONE["layers"]]
    bank, meta, scores = (tmp_path / n for n in ("model", "bank.json", "scores.parquet"))
    result = tmp_path / "bottle_ungated.json"
    spec = spec_json(EXPERIMENT)
    steps = [
        ["manifest", "--domain-root", str(BOTTLE), "--kind", "mvtec", "--out", str(manifest)],
        ["extract", "--manifest", str(manifest), "--spec", spec_json(BACKBONE), "--out-dir",
         str(tmp_path / "features"), "--quiet"],
        ["fit", "--manifest", str(manifest), "--features", *feats, "--spec", spec,
         "--out", str(bank), "--meta", str(meta)],
        ["score", "--manifest", str(manifest), "--features", *feats, "--spec", spec,
         "--model", str(bank), "--meta", str(meta), "--out", str(scores)],
        ["metrics", "--scores", str(scores), "--meta", str(meta), "--manifest", str(manifest),
         "--features", *feats, "--domain", "bottle", "--out", str(result)],
    ]
    for step in steps:
        assert main(step) == 0, step[0]
    m = json.loads(result.read_text())
    assert m["counts"]["test_scored"] == 83
    assert m["metrics"]["n_good"] == 20 and m["metrics"]["n_fault"] == 63
    assert m["metrics"]["auroc"] >= 0.98
    assert m["gate"]["accuracy"] is None and m["per_condition"] == {}
