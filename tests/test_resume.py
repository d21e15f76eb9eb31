"""A run killed during feature extraction resumes and gives the same results as an
uninterrupted one.

Snakemake runs in its own process group; the whole group is SIGKILLed while an extraction
job is writing its (temp) feature file. Only complete files may ever appear under their final
names, the rerun must finish, and its results must be byte-identical to a clean build in a
second copy of the project.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DROP, copy_project, project_env, tiny_experiment, tiny_params

pytestmark = pytest.mark.slow

LAYERS = ["blocks.2", "blocks.4"]
PARAMS = tiny_params(
    dataset={"synthetic": {"seed": 3, "n_train": 4, "n_test_good": 20, "n_test_fault": 20}},
    # batch_size 2 and 40 test maps: slow enough that the kill lands mid-extraction
    backbones={"lite2": {"input_size": 64, "layers": LAYERS, "batch_size": 2}},
    experiments={"gated": DROP, "ungated": tiny_experiment(
        layers=LAYERS, gate="mixed", method={"coreset_ratio": 0.25})},
    targets={"experiments": ["ungated"]},
)
FEATURES = Path("work/features/domain_C/lite2")
EXTRACT_LOG = Path("work/logs/extract/lite2/C.log")
SMK = ["snakemake", "--cores", "1", "--profile", "profiles/default"]
#: What each run builds: the metrics JSONs the test compares (the report and figures add
#: time, not coverage)
TARGET = "results/metrics.json"


def _project(root: Path) -> Path:
    root.mkdir()
    copy_project(root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return root


def _smk(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*SMK, *args], cwd=cwd, env=project_env(cwd), capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-4000:]}"
    return out


def _temp_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(".*.tmp")) if out_dir.is_dir() else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _results(project: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((project / "results").glob("*.json"))}


def test_killed_extraction_resumes_with_identical_results(tmp_path):
    project = _project(tmp_path / "interrupted")
    finals = [project / FEATURES / f"{layer}.parquet" for layer in LAYERS]
    proc = subprocess.Popen([*SMK, TARGET], cwd=project, env=project_env(project),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pgid = os.getpgid(proc.pid)
    caught: list[Path] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            caught = _temp_files(project / FEATURES)
            if caught or any(p.exists() for p in finals):
                break
            time.sleep(0.01)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
    for _ in range(100):  # every process of the group is gone, none can finish a file later
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    assert not _group_alive(pgid)
    assert caught, "extraction finished before it could be interrupted; make it slower"
    assert (project / EXTRACT_LOG).exists()
    assert not any(p.exists() for p in finals), "a final feature file after the kill"
    assert not (project / "results").exists()

    # Snakemake's lock outlives a SIGKILL; --unlock is the documented way to clear it.
    _smk(project, "--unlock")
    _smk(project, TARGET)
    assert all(p.is_file() for p in finals)
    assert _temp_files(project / FEATURES) == [], "the killed run's temp file was left behind"

    clean = _project(tmp_path / "clean")
    _smk(clean, TARGET)
    resumed, fresh = _results(project), _results(clean)
    assert set(resumed) == {"domainC_ungated.json", "metrics.json"}
    for name in resumed:  # no absolute path of either project may leak into the results
        for root in (project, clean):
            assert str(root).encode() not in resumed[name] + fresh[name], name
    assert resumed == fresh
