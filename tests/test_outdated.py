"""Which results a re-running step marks outdated (``hdmap_ad.outdated``)."""

from __future__ import annotations

import json
from pathlib import Path

from hdmap_ad.outdated import SUFFIX, mark_outdated


def _result(path: Path, backbones: list[str] | None) -> Path:
    body = {"metrics": {"auroc": 0.9}}
    if backbones is not None:
        body["provenance"] = {"features": {f"layer{i}": {"backbone": b}
                                           for i, b in enumerate(backbones)}}
    path.write_text(json.dumps(body))
    return path


def test_an_extraction_outdates_only_results_built_on_its_backbone(tmp_path: Path):
    raw = _result(tmp_path / "domainC_ae_raw.json", ["raw"])
    lite = _result(tmp_path / "domainC_ae_lite2.json", ["lite2", "lite2"])
    sweep = _result(tmp_path / "domainC_swept.json", None)  # no provenance: outdated
    aggregate = _result(tmp_path / "metrics.json", None)
    moved = mark_outdated([str(tmp_path / "domainC_*.json"), str(aggregate)], "extract",
                          backbone="lite2")
    assert sorted(moved) == sorted([lite, sweep, aggregate])
    assert raw.exists() and not lite.exists()
    assert lite.with_name(lite.name + SUFFIX).exists()


def test_without_a_backbone_every_match_is_outdated(tmp_path: Path):
    raw = _result(tmp_path / "domainC_ae_raw.json", ["raw"])
    lite = _result(tmp_path / "domainC_ae_lite2.json", ["lite2"])
    assert sorted(mark_outdated([str(tmp_path / "domainC_*.json")], "manifest")) == \
        sorted([raw, lite])
