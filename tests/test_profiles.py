"""Cluster profile: a SLURM dry run plans the DAG with a GPU request on feature extraction."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest

from tests.conftest import REPO, copy_project, project_env


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm not installed (dev extra)")
def test_slurm_profile_dry_run(tmp_path):
    copy_project(tmp_path)
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = subprocess.run(
        ["snakemake", "--profile", "profiles/slurm", "-n", "results/domainC_gated.json"],
        cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    block = out[out.index("rule extract_effnet_lite2:"):].split("\n\n")[0]
    assert "gpu=1" in block and "slurm_partition=gpu" in block, block
    assert "localrule" not in block
    for rule in ("synthesize", "manifest", "fit", "score", "metrics"):
        assert f"rule {rule}:" in out


def test_heavy_steps_take_the_cores_they_are_given(tmp_path):
    """extract, fit and score jobs run with every core Snakemake gives them (not 1)."""
    copy_project(tmp_path)
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "4", "--printshellcmds", "results/domainC_gated.json"],
        cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("extract_effnet_lite2", "fit", "score"):
        block = out[out.index(f"rule {rule}:"):].split("\n\n")[0]
        assert "threads: 4" in block, block
        assert "OMP_NUM_THREADS=4 " in block, block
