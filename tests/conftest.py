"""Shared test helpers and fixtures (imported by the test modules that need them).

``REPO``/``BIN``: the checkout and the venv's bin folder; ``copy_project`` lays a project copy
for DAG tests; ``project_env`` runs commands against that copy's code; ``write_domain`` writes a
tiny HDMAP-layout domain.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
