"""Cluster profile: a SLURM dry run plans the DAG, asking for a GPU on feature extraction only
with `device: cuda`; where a SLURM answers, two jobs go through it for real.

The full live run (local vs SLURM byte-identical, a failed and a cancelled job) is
tests/cluster/test_slurm_live.py, run by `make test-slurm`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest
import yaml

from tests.cluster.slurm import TINY_C, apply_site_settings, run_id, sacct_jobs, skip_reason
from tests.conftest import REPO, copy_project, project_env

needs_plugin = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm not installed (dev extra)")


def _extract_block(out: str) -> str:
    return out[out.index("rule extract_effnet_lite2:"):].split("\n\n")[0]


@needs_plugin
def test_slurm_profile_dry_run(tmp_path):
    copy_project(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for device, gpu in (("cpu", "gpu=0"), ("cuda", "gpu=1")):
        params["device"] = device
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(
            ["snakemake", "--profile", "profiles/slurm", "-n", "results/domainC_gated.json"],
            cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        block = _extract_block(out)
        assert re.search(rf"\b{gpu}\b", block) and "slurm_partition=gpu" in block, block
        assert "localrule" not in block
        for rule in ("synthesize", "manifest", "fit", "score", "metrics"):
            assert f"rule {rule}:" in out


@pytest.mark.slow
@needs_plugin
def test_slurm_profile_live(tmp_path):
    """Where SLURM is up (`make slurm-up`): synthesize + manifest as two real SLURM jobs."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    copy_project(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_C, sort_keys=False))
    apply_site_settings(tmp_path)
    proc = subprocess.run(
        ["snakemake", "--profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks",
         "5", "work/manifests/domain_C.parquet"],
        cwd=tmp_path, env=project_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = sacct_jobs(run_id(out))
    assert sorted(j["rule"] for j in jobs) == ["manifest", "synthesize"], jobs
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert (tmp_path / "work/manifests/domain_C.parquet").is_file()


def test_heavy_steps_take_the_cores_they_are_given(tmp_path):
    """extract, fit and score jobs run with every core Snakemake gives them (not 1)."""
    copy_project(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
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


def test_a_method_module_is_a_code_input_of_its_own_experiments_only(tmp_path):
    """Editing padim.py must re-run PaDiM experiments, not PatchCore ones (the registry
    imports every method module, so a plain import closure would list them all)."""
    copy_project(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiments"]["padim"] = {**params["experiments"]["gated"],
                                      "method": {"name": "padim"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    inputs = {}
    for exp in ("padim", "gated"):
        proc = subprocess.run(["snakemake", "-n", "--cores", "1", f"results/domainC_{exp}.json"],
                              cwd=tmp_path, env=project_env(tmp_path), capture_output=True,
                              text=True)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        block = proc.stdout[proc.stdout.index("rule fit:"):].split("\n\n")[0]
        inputs[exp] = {f.strip() for f in block.split("input:")[1].split("\n")[0].split(",")}
    assert "src/hdmap_ad/methods/padim.py" in inputs["padim"]
    assert "src/hdmap_ad/methods/patchcore.py" not in inputs["padim"]
    assert "src/hdmap_ad/methods/patchcore.py" in inputs["gated"]
    assert not {"src/hdmap_ad/methods/padim.py", "src/hdmap_ad/methods/spade.py"} & \
        inputs["gated"]
