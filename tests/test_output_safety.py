"""No step overwrites what the user did not ask to (``hdmap_ad.outputs``, issue #26).

Every user-facing writer (predict, export, synth, report) refuses an output path that is an
input or holds one, is the model folder or inside it, lies inside an input folder or is a
non-empty folder hdmap-ad did not make (those two: unless ``--force``), or is the current
folder; a refusal is one stderr line and exit code 2, and nothing is touched. Folders are
replaced through a sibling temp folder that no exit path leaves behind. Predict names its
anomaly maps by their path under the input folder, skips hidden and ``._`` files, and refuses
FIFOs and symlinks out of its input folders without reading them.

The predict and export cases use the exported model of the session's ``deploy_run`` (copied:
a failing refusal must not damage the fixture); the rest need no run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from hdmap_ad.cli import main
from tests.conftest import DEPLOY_RUN_PARAMS

MARKER = ".hdmap-ad"  # hdmap_ad.outputs.MARKER, repeated: the module is part of what is tested


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit 2 and one stderr line holding ``needles``."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _leftovers(folder: Path) -> list[str]:
    """Temp files or folders of the atomic writers left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".tmpdir")))


def _foreign(folder: Path) -> Path:
    """A user's folder with content: no step may replace or write into it unasked."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    return folder


# --- predict ------------------------------------------------------------------------------


@pytest.fixture
def model(deploy_run: Path, tmp_path: Path) -> Path:
    """A copy of the run's exported gated model (refusals are tried against the copy)."""
    return Path(shutil.copytree(deploy_run / "results/models/domainC_gated", tmp_path / "model"))


def _test_maps(deploy_run: Path, n: int) -> list[Path]:
    return sorted((deploy_run / "data/synthetic/domain_C/test/fault").glob("*.tiff"))[:n]


@pytest.fixture
def maps(deploy_run: Path, tmp_path: Path) -> Path:
    """An input folder of two maps."""
    folder = tmp_path / "maps"
    folder.mkdir()
    for p in _test_maps(deploy_run, 2):
        shutil.copy(p, folder / p.name)
    return folder


def test_predict_refuses_outputs_that_would_destroy_inputs(model, maps, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign = _foreign(tmp_path / "foreign")
    before = {p: _snapshot(p) for p in (model, maps, foreign)}
    base = ["predict", "--model", str(model), "--input", str(maps), "--quiet"]
    first = str(maps / "000000.tiff")
    csv = str(tmp_path / "p.csv")
    for extra, needles in (
        (["--out", first], ["--out", first, "is the input"]),
        (["--out", first, "--force"], ["is the input"]),
        (["--out", str(maps / "p.csv")], ["inside the input folder", "--force"]),
        (["--out", str(model / "model.json")], ["inside the model folder"]),
        (["--out", str(model / "model.json"), "--force"], ["inside the model folder"]),
        (["--out", "."], ["--out .", "is a folder"]),
        (["--out", csv, "--maps-dir", str(maps)], ["--maps-dir", "is the input"]),
        (["--out", csv, "--maps-dir", str(maps), "--force"], ["is the input"]),
        (["--out", csv, "--maps-dir", str(maps / "heat")], ["inside the input folder"]),
        (["--out", csv, "--maps-dir", str(model)], ["is the model folder"]),
        (["--out", csv, "--maps-dir", str(foreign)], ["did not make", "--force"]),
        (["--out", csv, "--maps-dir", ".", "--force"], ["contains the input"]),
    ):
        _refused(capsys, [*base, *extra], *needles)
    assert {p: _snapshot(p) for p in before} == before
    assert not (tmp_path / "p.csv").exists() and not (maps / "heat").exists()
    assert _leftovers(tmp_path) == [] and _leftovers(maps) == []


def test_predict_force_same_stem_maps_and_hidden_files(deploy_run, model, tmp_path, capsys):
    """Same-stem maps in two sub-folders get two anomaly maps; hidden and ``._`` files are
    skipped with a count; ``--force`` writes into a foreign folder and leaves its files."""
    a, b = _test_maps(deploy_run, 2)
    new = tmp_path / "new"
    for sub, src in (("a", a), ("b", b)):
        (new / sub).mkdir(parents=True)
        shutil.copy(src, new / sub / "x.tiff")
    (new / "._x.tiff").write_bytes(b"resource fork, not a tiff")
    (new / ".x.tiff").write_bytes(b"hidden, not a tiff")
    foreign = _foreign(tmp_path / "foreign")
    out = tmp_path / "p.csv"
    argv = ["predict", "--model", str(model), "--input", str(new), "--recursive",
            "--out", str(out), "--maps-format", "tiff", "--quiet"]
    _refused(capsys, [*argv, "--maps-dir", str(foreign)], "did not make")
    assert main([*argv, "--maps-dir", str(foreign), "--force"]) == 0
    assert "skipped 2 hidden" in capsys.readouterr().err
    rows = pd.read_csv(out, keep_default_na=False)
    assert rows.path.tolist() == [str(new / "a/x.tiff"), str(new / "b/x.tiff")]
    assert (rows.error == "").all()
    assert rows.anomaly_map.tolist() == [str(foreign / "a/x.tiff"), str(foreign / "b/x.tiff")]
    heat_a, heat_b = (tifffile.imread(foreign / s / "x.tiff") for s in ("a", "b"))
    assert not np.array_equal(heat_a, heat_b)  # two maps, two files
    assert (foreign / "notes.txt").read_text() == "mine\n" and not (foreign / MARKER).exists()

    # a maps folder predict makes is marked (tests/test_export_predict.py lists it), and a
    # marked folder is written again without --force
    from hdmap_ad.outputs import INTO, check_output, make_folder

    mine = make_folder(tmp_path / "mine")
    (mine / "x.png").write_bytes(b"an earlier run's map")
    check_output(mine, "--maps-dir", kind=INTO)


def _predict_in_thread(argv: list[str], timeout: float = 60.0) -> int | None:
    """The CLI's exit code, or None if it still runs after ``timeout`` (a blocked read)."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0] if result else None


def _unblock(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` see end-of-file (a failing run must not hang)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_predict_refuses_fifos_and_links_out_of_the_folder_unread(model, maps, tmp_path,
                                                                  capsys):
    fifo = tmp_path / "stream.tiff"
    os.mkfifo(fifo)
    out = tmp_path / "p.csv"
    base = ["predict", "--model", str(model), "--out", str(out), "--quiet"]
    try:
        rc = _predict_in_thread([*base, "--input", str(fifo)])
    finally:
        _unblock(fifo)
    assert rc == 2
    assert f"{fifo}: is a FIFO" in capsys.readouterr().err

    inside = tmp_path / "with_fifo"
    inside.mkdir()
    os.mkfifo(inside / "m.tiff")
    try:
        rc = _predict_in_thread([*base, "--input", str(inside)])
    finally:
        _unblock(inside / "m.tiff")
    assert rc == 2
    assert f"{inside / 'm.tiff'}: is a FIFO" in capsys.readouterr().err

    outside = tmp_path / "secret.tiff"
    shutil.copy(maps / "000000.tiff", outside)
    os.symlink(outside, maps / "link.tiff")
    _refused(capsys, [*base, "--input", str(maps)], f"{maps / 'link.tiff'}",
             "symbolic link out of the input folder")
    assert not out.exists()


# --- export -------------------------------------------------------------------------------


@pytest.fixture
def fit_files(deploy_run: Path, tmp_path: Path) -> dict[str, Path]:
    """The pipeline files export reads (gated experiment), copied into ``inputs/``."""
    src, dst = deploy_run, tmp_path / "inputs"
    files = {"meta": "work/models/domain_C/gated.json", "model": "work/models/domain_C/gated",
             "scores": "work/scores/domain_C/gated.parquet",
             "metrics": "results/domainC_gated.json"}
    out = {}
    for key, rel in files.items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (src / rel).is_dir() else shutil.copy
        out[key] = Path(copy(src / rel, dst / rel))
    return out


def _export_argv(files: dict[str, Path], out: Path | str) -> list[str]:
    spec = {"key": "lite2", **DEPLOY_RUN_PARAMS["backbones"]["lite2"]}
    return ["export", "--backbone-spec", json.dumps(spec),
            *(a for k in ("meta", "model", "scores", "metrics") for a in (f"--{k}", str(files[k]))),
            "--out", str(out)]


def test_export_refuses_inputs_foreign_folders_and_the_current_folder(fit_files, tmp_path,
                                                                       capsys, monkeypatch):
    inputs = tmp_path / "inputs"
    before = _snapshot(inputs)
    foreign = _foreign(tmp_path / "data_tiny")
    _refused(capsys, _export_argv(fit_files, foreign), "did not make", "--force replaces it")
    assert _snapshot(foreign) == {"notes.txt": b"mine\n"}
    _refused(capsys, [*_export_argv(fit_files, fit_files["model"]), "--force"], "is the input")
    _refused(capsys, [*_export_argv(fit_files, inputs), "--force"], "contains the input")
    here = _foreign(tmp_path / "here")
    monkeypatch.chdir(here)
    _refused(capsys, [*_export_argv(fit_files, "."), "--force"], "current folder")
    assert _snapshot(here) == {"notes.txt": b"mine\n"} and _leftovers(tmp_path) == []
    assert _snapshot(inputs) == before

    # --force replaces the foreign folder; the result is marked, so a re-run needs no --force
    assert main([*_export_argv(fit_files, foreign), "--force"]) == 0
    assert not (foreign / "notes.txt").exists() and (foreign / "model.json").is_file()
    assert (foreign / MARKER).read_text() == "made by hdmap-ad\n"
    assert main(_export_argv(fit_files, foreign)) == 0
    assert _leftovers(tmp_path) == []


# --- folder replacement: temp folders never outlive their writer --------------------------


def test_a_failed_replacement_restores_the_old_folder_and_leaves_no_temp(tmp_path,
                                                                          monkeypatch):
    import hdmap_ad.io as io

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old\n")
    with pytest.raises(KeyboardInterrupt), io.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new\n")
        raise KeyboardInterrupt
    assert _snapshot(target) == {"old.txt": b"old\n"} and _leftovers(tmp_path) == []

    real_replace = os.replace

    def failing_rename(src, dst):  # the new folder cannot be renamed into place
        if str(src).endswith(".tmpdir") and Path(dst) == target:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", failing_rename)
    with pytest.raises(OSError, match="No space"), io.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new\n")
    monkeypatch.undo()
    assert _snapshot(target) == {"old.txt": b"old\n"} and _leftovers(tmp_path) == []


def test_sigterm_while_replacing_a_folder_leaves_no_temp(tmp_path):
    script = ("import os, signal, sys, time\n"
              "from hdmap_ad.io import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    (tmp / 'f').write_text('x')\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_temp_files_of_other_writers_are_left_alone(tmp_path):
    """A writer of ``x`` removes only its own dead predecessors' temps: not those of
    ``x.json`` beside it, nor those of another live writer of ``x``."""
    from hdmap_ad.io import atomic_path

    with atomic_path(tmp_path / "x.json") as outer, atomic_path(tmp_path / "x") as mid:
        outer.write_text("{}")
        mid.write_text("a")
        with atomic_path(tmp_path / "x") as inner:  # a second writer of x, still running
            inner.write_text("b")
        assert mid.exists()
    assert (tmp_path / "x.json").read_text() == "{}" and (tmp_path / "x").read_text() == "a"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".x.{dead}.abcd_123.tmp"  # a killed writer's
    stale.write_text("half")
    with atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("c")
    assert not stale.exists() and _leftovers(tmp_path) == []


# --- synth --------------------------------------------------------------------------------

SYNTH = json.dumps({"seed": 3, "n_train": 2, "n_test_good": 2, "n_test_fault": 2})


def test_synth_refuses_foreign_folders_and_the_current_folder(tmp_path, capsys, monkeypatch):
    results = _foreign(tmp_path / "results")
    argv = ["synth", "--domain", "A", "--spec", SYNTH]
    _refused(capsys, [*argv, "--out", str(results)], "did not make", "--force replaces it")
    assert _snapshot(results) == {"notes.txt": b"mine\n"}
    monkeypatch.chdir(results)
    _refused(capsys, [*argv, "--out", ".", "--force"], "current folder")
    assert _snapshot(results) == {"notes.txt": b"mine\n"} and _leftovers(tmp_path) == []
    monkeypatch.chdir(tmp_path)

    domain = tmp_path / "domain_A"
    for _ in range(2):  # the second run replaces the first's (marked) folder
        assert main([*argv, "--out", str(domain)]) == 0
    assert (domain / MARKER).is_file() and len(list(domain.rglob("*.tiff"))) == 6
    assert main([*argv, "--out", str(results), "--force"]) == 0
    assert not (results / "notes.txt").exists() and (results / MARKER).is_file()
    assert _leftovers(tmp_path) == []


# --- report -------------------------------------------------------------------------------


def test_report_refuses_to_overwrite_its_inputs(tmp_path, capsys):
    summary_md, summary_csv = tmp_path / "summary.md", tmp_path / "summary.csv"
    summary_md.write_text("| a |\n")
    summary_csv.write_text("a\n")
    spec = {"entries": [], "hypotheses": [], "summary_md": str(summary_md),
            "summary_csv": str(summary_csv), "figures": str(tmp_path / "figures"),
            "plots": str(tmp_path / "plots")}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    before = _snapshot(tmp_path)
    argv = ["report", "--spec", json.dumps(spec)]
    _refused(capsys, [*argv, "--out", str(summary_md)], "is the input")
    _refused(capsys, [*argv, "--out", str(tmp_path)], "is a folder")
    _refused(capsys, ["report", "--spec", f"@{spec_file}", "--out", str(spec_file)],
             "is the input")
    assert _snapshot(tmp_path) == before
    assert main([*argv, "--out", str(tmp_path / "report.md")]) == 0
    assert "| a |" in (tmp_path / "report.md").read_text()
