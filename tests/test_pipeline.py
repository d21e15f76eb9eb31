"""The Snakemake DAG end to end on a tiny config in a temp copy of the project, and DVC on top.

Checks the re-run behaviour the users rely on: nothing to do on a second run, a method-only
param change (an option, or another method) re-runs no feature extraction, and the same params
give byte-identical metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import (
    DEPLOY_RUN_CORES,
    PIPELINE_RUN_PARAMS,
    SHARED_WITH_DEPLOY_RUN,
    copy_built_project,
    copy_project,
    dry_run_jobs,
    project_env,
)

pytestmark = pytest.mark.slow

#: The tiny params (conftest): built once per session by the ``pipeline_run`` fixture
TINY = PIPELINE_RUN_PARAMS


def _run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    # extraction threads as the session's runs had (conftest): outputs reused from them match
    env = {**project_env(cwd), "OMP_NUM_THREADS": str(DEPLOY_RUN_CORES)}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-4000:]}"
    return proc.stdout if stdout_only else out


def _smk(cwd: Path, *args: str) -> str:
    return _run(["snakemake", "--cores", str(DEPLOY_RUN_CORES), "--profile", "profiles/default",
                 *args], cwd)


@pytest.fixture
def project(pipeline_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the session's built tiny run (conftest ``pipeline_run``): up
    to date, its to change."""
    return copy_built_project(pipeline_run, tmp_path / "project")


def test_the_session_run_made_nothing_again_that_it_shares_with_the_deploy_run(
        pipeline_run: Path, deploy_run: Path):
    """conftest's ``pipeline_run`` starts from ``deploy_run``'s data, manifest, features and
    ``gated`` experiment: Snakemake found them up to date (same bytes, same times)."""
    shared = [p for rel in SHARED_WITH_DEPLOY_RUN
              for p in ([deploy_run / rel] if (deploy_run / rel).is_file()
                        else sorted((deploy_run / rel).rglob("*")))]
    assert any(p.suffix == ".parquet" and "features" in p.parts for p in shared), shared
    for src in shared:
        copied = pipeline_run / src.relative_to(deploy_run)
        assert copied.stat().st_mtime_ns == src.stat().st_mtime_ns, copied
        if src.is_file():
            assert copied.read_bytes() == src.read_bytes(), copied


def _set_ratio(project: Path, experiment: str, ratio: float) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiments"][experiment]["method"]["coreset_ratio"] = ratio
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dag_runs_and_reruns_only_what_changed(project: Path, tmp_path: Path):
    first = {p.name: p.read_bytes() for p in (project / "results").glob("*.json")}
    for exp in ("ungated", "gated", "cpd_soft"):
        m = json.loads((project / f"results/domainC_{exp}.json").read_text())
        assert m["counts"]["test_scored"] == 24 - 4  # hold-outs are not scored
        assert 0.0 <= m["metrics"]["auroc"] <= 1.0
        assert m["params"]["key"] == exp
    gated = json.loads((project / "results/domainC_gated.json").read_text())
    assert gated["gate"]["accuracy"] is not None
    assert set(gated["counts"]["bank"]) == {"cold", "warm"}
    cpd = json.loads((project / "results/domainC_cpd_soft.json").read_text())
    assert cpd["gate"]["searched_both"] == 20
    assert cpd["provenance"]["features"]["blocks.2"]["weights"]["source"] == "package"
    bank = json.loads((project / "work/models/domain_C/cpd_soft.json").read_text())
    assert bank["dim"] == 64 * 3  # projected to 64, then [f | ctx_1 | ctx_2]
    swept = json.loads((project / "results/domainC_swept.json").read_text())
    assert set(swept["budgets"]) == {"1", "2"} and swept["budgets"]["2"]["auroc"]["n"] == 2
    assert swept["budgets"]["1"]["variants"] == ["swept_b1_s0", "swept_b1_s1"]
    rows = pd.read_csv(project / "results/summary.csv")
    assert len(rows[rows.domain == "C"]) == 3 + 4 and (rows.domain == "macro").sum() == 7
    hyp = json.loads((project / "results/hypotheses/H2_gating.json").read_text())
    assert hyp["verdict"] in ("supported", "refuted", "inconclusive")
    assert hyp["claim"] == "condition_macro"  # the arms differ in gate
    (entry,) = hyp["results"]["C"]
    assert entry["seeds"] == [0, 1] and entry["variants_b"] == ["gated", "gated_s1"]
    assert set(entry["claims"]) == {"pooled", "condition_macro", "cold", "warm"}
    assert entry["verdict"] == entry["claims"]["condition_macro"]["verdict"]
    ci = entry["auroc"]["ci95"]
    assert ci[0] <= entry["auroc"]["delta"] <= ci[1]
    assert [p["ref_seed"] for p in entry["per_seed"]] == [0, 1]
    assert set(entry["gate_routing"]["b"]["decisions"]) == {
        "cold/good", "cold/fault", "warm/good", "warm/fault"}
    assert (project / "results/figures/hypothesis_H2_gating_forest.png").is_file()
    assert "domainC_gated" in json.loads((project / "results/metrics.json").read_text())
    # five seeds of one draw carry no seed variance: exactly the single draw's interval
    same = json.loads((project / "results/hypotheses/H_same_draw.json").read_text())
    (entry,) = same["results"]["C"]
    assert entry["seeds"] == [0, 1, 2, 3, 4]
    for c, claim in entry["claims"].items():
        au = claim["auroc"]
        assert len(set(au["seed_deltas"])) == 1, (c, au["seed_deltas"])
        assert np.allclose(au["ci95"], au["single_draw"]["ci95"], rtol=0, atol=1e-9), c
    assert same["margin"] == 0.005 and same["correction"] == "holm"
    assert same["family_size"] == 4

    # nothing to do on a second run
    out = _smk(project, "-n", "results/domainC_gated.json")
    assert "Nothing to be done" in out, out[-2000:]

    # a bank-only param change re-runs bank/score/metrics of that experiment (and of its
    # seed-1 run for H2, which inherits it), no extraction
    before = (project / "results/domainC_ungated.json").read_bytes()
    _set_ratio(project, "gated", 0.25)
    jobs = dry_run_jobs(_smk(project, "-n", "all"))
    assert jobs.get("fit") == 2 and jobs.get("score") == 2, jobs
    assert not any(rule.startswith("extract_") for rule in jobs), jobs
    _smk(project, "all")
    assert (project / "results/domainC_ungated.json").read_bytes() == before

    # score-stage options (a method's num_neighbors, the gate margin) re-run scoring only:
    # the fit step's param holds the fit view of the experiment
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiments"]["gated"]["method"]["num_neighbors"] = 1
    params["experiments"]["gated"]["gate_margin"] = 0.05
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = dry_run_jobs(_smk(project, "-n", "results/domainC_gated.json"))
    assert jobs == {"score": 1, "metrics": 1}, jobs
    params["experiments"]["gated"]["method"]["num_neighbors"] = 3
    params["experiments"]["gated"].pop("gate_margin")

    # another method on the same experiment: fit/score/metrics again, zero extraction jobs;
    # the metrics record the method and its options
    params["experiments"]["gated"]["method"] = {"name": "padim", "n_features": 20}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = dry_run_jobs(_smk(project, "-n", "results/domainC_gated.json"))
    assert jobs == {"fit": 1, "score": 1, "metrics": 1}, jobs
    _smk(project, "results/domainC_gated.json")
    padim = json.loads((project / "results/domainC_gated.json").read_text())
    assert padim["method"] == "padim" and padim["params"]["method"]["n_features"] == 20
    assert set(padim["counts"]["bank"]) == {"cold", "warm"}
    # PatchCore's params back (not rebuilt: only dry runs of other targets follow)
    params["experiments"]["gated"]["method"] = {"name": "patchcore", "coreset_ratio": 0.25,
                                                "num_neighbors": 3}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # a new CPD experiment over the cached backbone runs no extraction either
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiments"]["cpd_new"] = {**params["experiments"]["gated"],
                                        "context": {"radius": [3], "aggregation": "median"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = dry_run_jobs(_smk(project, "-n", "results/domainC_cpd_new.json"))
    assert jobs.get("fit") == 1 and jobs.get("metrics") == 1, jobs
    assert not any(rule.startswith("extract_") for rule in jobs), jobs
    params["experiments"].pop("cpd_new")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # determinism: the same params give byte-identical metrics JSON from a clean build in
    # another copy of the project (data, features, banks, scores and every experiment's
    # metrics built again; the report is not a metrics JSON)
    clean = tmp_path / "clean"
    clean.mkdir()
    copy_project(clean)
    (clean / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    _smk(clean, "results/metrics.json", "results/domainC_swept.json")
    second = {p.name: p.read_bytes() for p in (clean / "results").glob("*.json")}
    assert len(first) == 3 + 4 + 2 and first == second


def test_dvc_repro_after_bank_param_change_runs_no_extraction(project: Path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _run(["git", "init", "-q"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["dvc", "config", "core.analytics", "false"], project)
    _run(["dvc", "repro"], project)
    shown = _run(["dvc", "metrics", "show", "--json"], project)
    assert "domainC_gated" in shown
    plots = json.loads(_run(["dvc", "plots", "show", "--json", "--split"], project,
                            stdout_only=True))
    assert not plots.get("errors"), plots["errors"]
    assert "results/plots/roc/domainC_gated.csv" in plots["data"], list(plots["data"])
    _set_ratio(project, "ungated", 0.3)
    out = _run(["dvc", "repro"], project)
    assert "extract_" not in out, out[-3000:]
    assert re.search(r"rule fit:|localrule fit:", out), out[-3000:]
    assert "Stage 'synthesize' didn't change" in out

    # the documented sweep style: dvc exp run -S on a committed project
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], project)
    _run([*git, "commit", "-qm", "base"], project)
    out = _run(["dvc", "exp", "run", "-S", "experiments.gated.method.coreset_ratio=0.3"], project)
    assert "extract_" not in out, out[-3000:]
    exps = _run(["dvc", "exp", "show", "--json"], project)
    assert "0.3" in exps and "domainC_gated" in exps
    # the experiment's metrics against the committed base
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json", "--all"], project,
                           stdout_only=True))
    assert any(k.startswith("domainC_gated.") for k in diff["results/metrics.json"]), diff


def test_real_hdmap_root_tracked_with_dvc_add(tmp_path_factory):
    """The documented real-data path: `dvc add` an HDMAP-layout folder, point params at it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    from hdmap_ad.config import SynthConfig
    from hdmap_ad.data.synth import write_domain

    root = tmp_path_factory.mktemp("real")
    copy_project(root)
    data = "datasets/HDMAP/1000_tiff_minmax"
    write_domain("C", SynthConfig(seed=3, n_train=6, n_test_good=12, n_test_fault=12),
                 root / data / "domain_C")
    params = json.loads(json.dumps(TINY))
    params["dataset"] = {"kind": "hdmap", "root": data,
                         "synthetic": {"seed": 1, "n_train": 2, "n_test_good": 2,
                                       "n_test_fault": 2}}
    params["experiments"] = {"ungated": params["experiments"]["ungated"]}
    params["hypotheses"] = {}
    params["targets"] = {"experiments": ["ungated"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    _run(["dvc", "add", "-q", data], root)
    assert (root / f"{data}.dvc").is_file()
    _run(["dvc", "repro"], root)
    m = json.loads((root / "results/domainC_ungated.json").read_text())
    assert m["counts"]["test_scored"] == 24 - 4
    manifest = pd.read_parquet(root / "work/manifests/domain_C.parquet")
    assert all(p.startswith(data) for p in manifest.path)
    # everything, the dvc-added data included, is recorded and up to date
    status = _run(["dvc", "status"], root)
    assert "changed" not in status


def test_data_edits_rerun_exactly_their_chain_and_moving_the_checkout_reruns_nothing(
        project: Path, tmp_path: Path):
    import tifffile

    # the copy of the session's run (conftest ``pipeline_run``) is up to date as copied
    assert "Nothing to be done" in _smk(project, "-n", "all")
    chain = {"manifest": 1, "extract_lite2": 1, "fit": 1, "score": 1, "metrics": 1}

    # the checkout copied elsewhere (timestamps kept): nothing to re-run
    moved = tmp_path / "moved checkout"
    shutil.copytree(project, moved, symlinks=True)
    assert "Nothing to be done" in _smk(moved, "-n", "all")

    # one map edited in place: manifest -> features -> fit -> score -> metrics, nothing else
    good = project / "data/synthetic/domain_C/test/good/000002.tiff"
    before = json.loads((project / "results/domainC_gated.json").read_text())
    original = tifffile.imread(good)
    tifffile.imwrite(good, original + np.float32(0.25))
    assert dry_run_jobs(_smk(project, "-n", "results/domainC_gated.json")) == chain
    _smk(project, "results/domainC_gated.json")
    after = json.loads((project / "results/domainC_gated.json").read_text())
    assert after["provenance"]["data_sha256"] != before["provenance"]["data_sha256"]

    # touching files (same content) re-runs nothing
    for f in (project / "data/synthetic/domain_C/test/fault").iterdir():
        os.utime(f)
    assert "Nothing to be done" in _smk(project, "-n", "results/domainC_gated.json")

    # a good and a fault map swapped with mv (timestamps travel with the files): re-run
    fault = project / "data/synthetic/domain_C/test/fault/000002.tiff"
    spare = good.with_name("swap.tmp")
    good.rename(spare)
    fault.rename(good)
    spare.rename(fault)
    assert dry_run_jobs(_smk(project, "-n", "results/domainC_gated.json")) == chain

    # a hidden file (macOS ._ fork, editor swap file) is not data: no re-run for it
    (good.parent / "._000002.tiff").write_bytes(b"\x00\x05\x16\x07")
    assert dry_run_jobs(_smk(project, "-n", "results/domainC_gated.json")) == chain

    # a re-run that fails leaves no old number looking current
    result = project / "results/domainC_gated.json"
    params = yaml.safe_load((project / "params.yaml").read_text())
    saved = json.loads(json.dumps(params))
    params["experiments"]["gated"]["references"]["n_cold"] = 999
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["snakemake", "--cores", "2", "--profile", "profiles/default",
                           "results/domainC_gated.json"], cwd=project, env=project_env(project),
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert not result.exists() and result.with_name(result.name + ".outdated").exists()
    (project / "params.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    _smk(project, "results/domainC_gated.json")
    assert result.exists()


def test_values_from_params_never_reach_a_shell_unquoted(tmp_path: Path):
    """A dataset root with a space and shell syntax is used as a path, never run."""
    from hdmap_ad.config import SynthConfig
    from hdmap_ad.data.synth import write_domain as synth_domain

    root = tmp_path / "project"
    root.mkdir()
    copy_project(root)
    data = "datasets/my maps/x$(touch PWNED)`touch PWNED2`"
    synth_domain("C", SynthConfig(seed=3, n_train=4, n_test_good=8, n_test_fault=8),
                 root / data / "domain_C")
    params = json.loads(json.dumps(TINY))
    params["dataset"] = {"kind": "hdmap", "root": data}
    params["experiments"] = {"ungated": {**params["experiments"]["ungated"],
                                         "references": {"protocol": "test_good_holdout",
                                                        "n_cold": 1, "n_warm": 1}}}
    params["hypotheses"] = {}
    params["targets"] = {"experiments": ["ungated"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _smk(root, "results/domainC_ungated.json")
    assert json.loads((root / "results/domainC_ungated.json").read_text())["counts"]
    assert not list(root.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    # names that would escape results/ or carry shell syntax are refused by the schema
    for bad in ("H;touch PWNED", "../../x"):
        params["hypotheses"] = {bad: {"a": "ungated", "b": "ungated"}}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=root,
                              env=project_env(root), capture_output=True, text=True)
        assert proc.returncode != 0 and "hypotheses" in proc.stdout + proc.stderr
    assert not list(root.rglob("PWNED*"))
