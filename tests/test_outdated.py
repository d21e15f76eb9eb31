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


def test_a_run_only_a_hypothesis_reads_leaves_the_aggregates_alone(tmp_path: Path):
    """A reference-seed variant (``gated_s1``) may fit after rule ``aggregate`` has run: it
    must not mark metrics.json / summary.* outdated (nothing would rebuild them), only the
    report (rebuilt after the hypotheses); a target's own run still outdates them all."""
    import re
    import subprocess

    import yaml

    from tests.conftest import DEPLOY_RUN_PARAMS, copy_project, project_env

    copy_project(tmp_path)
    params = {**DEPLOY_RUN_PARAMS, "hypotheses": {
        "H": {"a": "soft", "b": "gated", "domains": ["C"], "n_boot": 200, "seeds": [0, 1]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "1", "--profile",
                           "profiles/default", "all"], cwd=tmp_path, env=project_env(tmp_path),
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    outdates = {}
    for line in proc.stdout.splitlines():
        if "hdmap_ad fit" in line:
            key = re.search(r'"key":"(\w+)"', line).group(1)
            outdates[key] = re.search(r"--outdates (.*?) --spec", line).group(1)
    assert set(outdates) == {"gated", "soft", "gated_s1", "soft_s1"}
    for exp in ("gated", "soft"):
        assert "results/metrics.json" in outdates[exp] and "results/report.md" in outdates[exp]
    for exp in ("gated_s1", "soft_s1"):
        assert f"results/domainC_{exp}.json" in outdates[exp]
        assert "results/report.md" in outdates[exp]
        assert "metrics.json" not in outdates[exp] and "summary" not in outdates[exp]
