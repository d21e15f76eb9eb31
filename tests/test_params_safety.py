"""params.yaml is data (issue #26, items 1 and 7).

Nothing in a params file is evaluated: not by ``snakemake -n`` (Snakemake's ``configfile:``
evaluated YTE templates, so a ``__use_yte__`` params.yaml ran code on a dry run), nor by a
preset given with ``--config params=...``, ``dvc repro``, ``python -m hdmap_ad validate``,
export or the app. The loader refuses templates, non-data tags and alias bombs, each one
line naming the file; every number that sizes memory or time is bounded and named.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hdmap_ad.cli import main
from hdmap_ad.config import (
    SCHEMA_PATH,
    load_params,
    params_schema,
    parse_params,
    read_params_yaml,
)
from hdmap_ad.errors import InputError
from tests.conftest import BIN, REPO, copy_project, dry_run_jobs, project_env

PARAMS_TEXT = (REPO / "params.yaml").read_text()
#: Runs ``touch PWNED`` wherever a YTE template is evaluated; a plain string otherwise.
EVIL_DEVICE = "?__import__('os').system('touch PWNED') and 'cpu' or 'cpu'"


def yte_params(text: str = PARAMS_TEXT) -> str:
    """``text`` as a YTE template whose ``device`` runs a command when evaluated."""
    out, n = re.subn(r"^device: .*$", f"device: {EVIL_DEVICE}", text, count=1, flags=re.M)
    assert n == 1
    return "__use_yte__: true\n" + out


@pytest.fixture
def project(tmp_path) -> Path:
    """A project copy (code, workflow, profiles, DVC config, presets, params.yaml)."""
    root = tmp_path / "project"
    root.mkdir()
    copy_project(root)
    shutil.copytree(REPO / "presets", root / "presets")
    (root / "params.yaml").write_text(PARAMS_TEXT)
    return root


def _snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1", *args], cwd=project,
                          env=project_env(project), capture_output=True, text=True,
                          timeout=120)


def _error(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# -- 1. Snakemake, DVC, validate, export and the app never evaluate params -------------------
def test_a_yte_params_yaml_runs_nothing_on_a_dry_run(project):
    (project / "params.yaml").write_text(yte_params())
    proc = _snakemake(project)
    assert not (project / "PWNED").exists(), "snakemake -n evaluated params.yaml"
    assert proc.returncode != 0
    assert "params.yaml: __use_yte__: params are data" in _error(proc)


def test_a_preset_is_read_in_place_of_params_yaml_and_never_evaluated(project):
    # a small preset (the shipped ones build DAGs of hundreds of jobs): domains B and D only
    two_domains = PARAMS_TEXT.replace("domains: [A, B, C, D]", "domains: [B, D]")
    (project / "presets" / "two.yaml").write_text(two_domains)
    proc = _snakemake(project, "--config", "params=presets/two.yaml")
    assert proc.returncode == 0, _error(proc)[-3000:]
    assert dry_run_jobs(proc.stdout)["manifest"] == 2, proc.stdout[-2000:]
    assert "domain_B" in proc.stdout and "domain_A" not in proc.stdout
    (project / "presets" / "evil.yaml").write_text(yte_params())
    proc = _snakemake(project, "--config", "params=presets/evil.yaml")
    assert not (project / "PWNED").exists(), "a preset was evaluated"
    assert proc.returncode != 0
    assert "presets/evil.yaml: __use_yte__" in _error(proc)


def test_config_takes_only_the_params_file_and_the_work_folder(project):
    """Settings given on the command line would bypass the params file DVC tracks: refused,
    as is ``--configfile`` (Snakemake's YTE-evaluating loader); work_dir still moves work/."""
    proc = _snakemake(project, "--config", "device=cuda")
    assert proc.returncode != 0
    assert "--config device: unknown key" in _error(proc)
    shutil.copy(project / "params.yaml", project / "copy.yaml")
    proc = _snakemake(project, "--configfile", "copy.yaml")
    assert proc.returncode != 0
    assert "--configfile" in _error(proc) and "--config params=<file>" in _error(proc)
    proc = _snakemake(project, "--config", "work_dir=elsewhere")
    assert proc.returncode == 0, _error(proc)[-3000:]
    assert "elsewhere/manifests/domain_A.parquet" in proc.stdout


def test_dvc_still_tracks_params_yaml_and_dvc_repro_evaluates_nothing(project):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {"params.yaml": None} in stages["pipeline"]["params"]
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed in the venv")
    env = project_env(project)
    init = subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    (project / "params.yaml").write_text(yte_params())
    # the synthesize stage runs `snakemake ... synthetic_data`: it must stop at the params
    proc = subprocess.run([str(BIN / "dvc"), "repro", "synthesize"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert not (project / "PWNED").exists(), "dvc repro evaluated params.yaml"
    assert proc.returncode != 0
    assert "__use_yte__" in _error(proc)


def test_validate_on_the_command_line_evaluates_nothing(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text(yte_params())
    proc = subprocess.run([sys.executable, "-m", "hdmap_ad", "validate", "--params", str(evil)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert not (tmp_path / "PWNED").exists()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{evil}: __use_yte__" in lines[0], proc.stderr


BOMB = "".join(  # 9**9 (387 million) strings once expanded; 80 aliases, a few hundred bytes
    ['x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)])

HOSTILE_FILES = {
    "yte": (yte_params(), "__use_yte__: params are data"),
    "python tag": (PARAMS_TEXT.replace(
        "device: cpu", "device: !!python/object/apply:os.system ['touch PWNED']"),
        "tag !!python/object/apply:os.system is not allowed"),
    "custom tag": (PARAMS_TEXT.replace("device: cpu", "device: !shell cpu"),
                   "tag !shell is not allowed"),
    "set": (PARAMS_TEXT.replace("domains: [A, B, C, D]", "domains: !!set {A, B}"),
            "tag !!set is not allowed"),
    "binary": (PARAMS_TEXT.replace("device: cpu", "device: !!binary Y3B1"),
               "tag !!binary is not allowed"),
    "alias bomb": (PARAMS_TEXT + BOMB, "alias bomb"),
    "recursive alias": (PARAMS_TEXT + "x-loop: &loop [1, *loop]\n", "refers to itself"),
    "deep nesting": (PARAMS_TEXT + "x-deep: " + "[" * 500 + "]" * 500 + "\n",
                     "nested deeper than"),
    "huge integer": (PARAMS_TEXT.replace("seed: 20261123", "seed: " + "9" * 5000),
                     "has more than"),
    "list as key": (PARAMS_TEXT + "x-key: {? [a, b] : 1}\n", "a key must be a plain name"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_validate_refuses_templates_tags_and_bombs_in_one_line(case, tmp_path, capsys,
                                                               monkeypatch):
    text, needle = HOSTILE_FILES[case]
    path = tmp_path / "params.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rc = main(["validate", "--params", str(path)])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 10
    assert peak < 64 * 2**20, f"{case}: {peak / 2**20:.0f} MiB allocated"
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(path) in err and needle in err, err
    assert not (tmp_path / "PWNED").exists()


def test_dates_and_equals_signs_stay_strings(tmp_path):
    """Params are JSON's types: a date-like or ``=`` value is a string (PyYAML would make a
    date, which the schema and the spec JSON cannot take, or fail on ``=``)."""
    path = tmp_path / "p.yaml"
    path.write_text("a: 2024-01-01\nb: =\nc: &c [1, 2]\nd: *c\n")
    assert read_params_yaml(path) == {"a": "2024-01-01", "b": "=", "c": [1, 2], "d": [1, 2]}


def test_presets_with_anchors_still_load():
    """The alias bounds leave room for the shipped presets' YAML anchors."""
    for name in ("methods.yaml", "user_study.yaml"):
        assert load_params(REPO / "presets" / name).experiments


def test_export_reads_params_as_data(tmp_path, capsys, monkeypatch):
    evil = tmp_path / "evil.yaml"
    evil.write_text(yte_params())
    monkeypatch.chdir(tmp_path)
    rc = main(["export", "--domain", "A", "--experiment", "gated", "--params", str(evil)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{evil}: __use_yte__" in err, err
    assert not (tmp_path / "PWNED").exists()


def test_the_app_reads_params_as_data(tmp_path):
    """The app's model view falls back to the run's params.yaml when no exported model
    exists; that read is the safe loader's too."""
    from hdmap_ad.app.data import Inspector, Run, Target

    (tmp_path / "params.yaml").write_text(yte_params())
    inspector = Inspector.__new__(Inspector)  # only the params read is under test
    inspector.run, inspector.target = Run(tmp_path), Target("domainA_gated", "A", "gated")
    inspector._bundle = None
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'params.yaml'}: __use_yte__")):
        inspector.bundle  # noqa: B018
    assert not (tmp_path / "PWNED").exists()


def test_every_params_read_in_the_library_goes_through_the_safe_loader():
    """Only hdmap_ad.config parses YAML; params files are read by load_params or
    read_params_yaml from it (no second loader to forget the bounds)."""
    src = REPO / "src" / "hdmap_ad"
    yaml_use = re.compile(r"^\s*(import yaml|from yaml|import ruamel|from ruamel)|"
                          r"yaml\.(load|safe_load|unsafe_load|full_load)\(", re.M)
    offenders = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
                 if p.name != "config.py" and yaml_use.search(p.read_text())]
    assert offenders == []
    readers = [p for p in src.rglob("*.py") if re.search(r"\bload_params\(", p.read_text())]
    assert readers, "no module reads params files any more: update this test"
    for path in readers:
        text = path.read_text()
        assert path.name == "config.py" or "from hdmap_ad.config import" in text, path


# -- 7. size bounds: every number that sizes memory or time is bounded and named -------------
def _with(path: tuple, value) -> dict:
    raw = copy.deepcopy(yaml.safe_load(PARAMS_TEXT))
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


BOUNDS = [
    (("backbones", "effnet_lite2", "input_size"), 1_000_000),
    (("backbones", "effnet_lite2", "batch_size"), 100_000),
    (("backbones", "effnet_lite2", "patch_pool"), 1001),
    (("backbones", "effnet_lite2", "weights", "seed"), 2**64),
    (("dataset", "synthetic", "n_train"), 10**7),
    (("dataset", "synthetic", "n_test_good"), 10**8),
    (("dataset", "synthetic", "seed"), -1),
    (("experiments", "gated", "seed"), 2**63),
    (("experiments", "gated", "references", "n_cold"), 10**9),
    (("experiments", "gated", "references", "seed"), -1),
    (("experiments", "gated", "deploy_folds"), 1000),
    (("experiments", "gated", "project_dim"), 10**6),
    (("experiments", "gated", "budgets"), [10**9]),
    (("experiments", "gated", "seeds"), list(range(1000))),
    (("experiments", "gated", "context"), {"radius": 10**4}),
    (("experiments", "gated", "method"), {"name": "patchcore", "coreset_proj_dim": 10**6}),
    (("experiments", "gated", "method"), {"name": "patchcore", "num_neighbors": 10**6}),
    (("experiments", "gated", "method"), {"name": "patchcore",
                                          "search": {"index": "ivf", "nlist": 10**9}}),
    (("experiments", "gated", "method"), {"name": "fastflow", "epochs": 10**9}),
    (("experiments", "gated", "method"), {"name": "fastflow", "hidden_ratio": 1e6}),
    (("experiments", "gated", "method"), {"name": "ae", "batch_size": 10**6}),
    (("experiments", "gated", "method"), {"name": "ae", "hidden": 10**6}),
    (("experiments", "gated", "method"), {"name": "padim", "n_features": 10**6}),
    (("experiments", "gated", "method"), {"name": "spade", "image_k": 10**9}),
    (("experiments", "gated", "method"), {"name": "supersimplenet", "seg_hidden": 10**6}),
    (("experiments", "gated", "method"), {"name": "stfpm", "epochs": 10**9}),
    (("hypotheses", "H2_gating", "n_boot"), 10**9),
    (("hypotheses", "H2_gating", "seed"), 2**63),
    (("hypotheses", "H2_gating", "seeds"), list(range(500))),
]


def _bad_key(path: tuple, value) -> str:
    """The key a refusal names: the path, or the option set in a method block."""
    key = ".".join(path)
    while isinstance(value, dict):
        name = next(k for k in value if k not in ("name", "index"))
        key, value = f"{key}.{name}", value[name]
    return key


@pytest.mark.parametrize("path,value", BOUNDS, ids=[_bad_key(p, v) for p, v in BOUNDS])
def test_sizes_are_bounded_and_named(path, value):
    key = _bad_key(path, value)
    with pytest.raises(InputError, match=re.escape(key) + r"[.:]") as exc:
        parse_params(_with(path, value))
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 300, str(exc.value)


def test_every_integer_of_the_params_schema_has_a_maximum():
    """A new integer key (or method option) must say how large it may get."""
    schema = params_schema()
    unbounded = []

    def walk(node, where):
        if isinstance(node, dict):
            types = node.get("type")
            types = types if isinstance(types, list) else [types]
            if "integer" in types and "maximum" not in node:
                unbounded.append(where)
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "")
    assert unbounded == []


def test_input_size_of_a_million_fails_at_validation(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.replace("input_size: 260", "input_size: 1000000"))
    assert main(["validate", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backbones.effnet_lite2.input_size: 1000000 is greater than the maximum" in err


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--model", "m", "--input", "x", "--out", "o.csv", "--threads", "0"],
     "--threads: 0 must be an integer >= 1"),
    (["predict", "--model", "m", "--input", "x", "--out", "o.csv", "--threads", "-3"],
     "--threads: -3 must be an integer >= 1"),
    (["app", "--port", "0"], "--port: 0 is not a TCP port"),
    (["app", "--port", "70000"], "--port: 70000 is not a TCP port"),
])
def test_numeric_flags_are_bounded(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("batching,key", [
    ({"extract_batch_size": 10**9, "score_batch_maps": 32}, "batching.extract_batch_size"),
    ({"extract_batch_size": 8, "score_batch_maps": 0}, "batching.score_batch_maps"),
    ({"extract_batch_size": "8", "score_batch_maps": 32}, "batching.extract_batch_size"),
])
def test_a_model_folder_cannot_ask_for_an_unbounded_batch(batching, key):
    """predict's batch sizes come from the model folder's model.json: bounded as params'."""
    from hdmap_ad.deploy.predict import MAX_BATCH, Predictor

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert MAX_BATCH == schema["definitions"]["backbone"]["properties"]["batch_size"]["maximum"]
    bundle = SimpleNamespace(folder="model", meta={"batching": batching})
    with pytest.raises(InputError, match=re.escape(f"model: {key}")):
        Predictor(bundle)  # refused before the backbone is built
