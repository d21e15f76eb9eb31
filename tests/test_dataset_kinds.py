"""Dataset kinds as a registry (``hdmap_ad.data.kinds``) and the ``folder`` kind.

A kind only builds the manifest; the params are checked against what it provides (a gate
needs conditions, a pixel metric masks); a toy kind registered at run time scans, validates
and runs through the CLI; the folder kind's index is checked row by row; and the pipeline on
a folder dataset made from the synthetic generator gives the synthetic kind's metrics.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import yaml
from PIL import Image

from hdmap_ad.cli import build_parser, main
from hdmap_ad.config import params_schema, parse_params
from hdmap_ad.data.kinds import (
    KINDS,
    DatasetKind,
    get_kind,
    kind_names,
    register_kind,
    unregister_kind,
)
from hdmap_ad.data.kinds.base import UNKNOWN, ShapeCheck, list_maps, map_row
from hdmap_ad.data.manifest import scan_domain
from hdmap_ad.data.maps import TIFF_SUFFIXES
from hdmap_ad.errors import InputError
from tests.conftest import copy_project, project_env, write_domain

#: The map itself as the one feature layer: no network, so the pipeline runs in seconds.
RAW_BACKBONE = {"model": "raw", "layers": ["map"]}
SYNTH = {"seed": 7, "n_train": 6, "n_test_good": 12, "n_test_fault": 12}


def _params(dataset: dict, gate: str = "mixed", references: dict | None = None,
            domains: tuple[str, ...] = ("C",), leaderboard: str | None = None) -> dict:
    """Raw params: one experiment ``e`` (two, ``e`` and ``f``, with a leaderboard by
    ``leaderboard``) on the raw backbone."""
    exp = {"backbone": "raw", "layers": ["map"], "gate": gate,
           "references": references or {"protocol": "train", "k": 2}}
    raw = {"dataset": dataset, "domains": list(domains), "backbones": {"raw": RAW_BACKBONE},
           "experiments": {"e": exp}, "targets": {"experiments": ["e"]}}
    if leaderboard is not None:
        raw["experiments"]["f"] = {**exp, "seed": 1}
        raw["leaderboards"] = {"lb": {"experiments": ["e", "f"], "metric": leaderboard}}
    return raw


def _index(domain: Path, rows: list[list[str]],
           header: tuple[str, ...] = ("path", "split", "label", "condition"),
           name: str = "samples.csv") -> Path:
    path = domain / name
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _hdmap_rows(domain: Path, train_condition: str = "") -> list[list[str]]:
    """Index rows of an HDMAP-layout domain with the index rule's conditions."""
    rows = []
    for split, label in (("train", "good"), ("test", "good"), ("test", "fault")):
        files = sorted((domain / split / label).glob("*.tiff"))
        for i, f in enumerate(files):
            cond = train_condition if split == "train" else (
                "cold" if i < len(files) // 2 else "warm")
            rows.append([f"{split}/{label}/{f.name}", split, label, cond])
    return rows


# --- the registry ----------------------------------------------------------------------


def test_registry_is_the_one_list_of_kinds():
    assert kind_names()[:4] == ("synthetic", "hdmap", "mvtec", "folder")
    assert params_schema()["properties"]["dataset"]["properties"]["kind"]["enum"] == \
        list(kind_names())
    manifest = build_parser()._subparsers._group_actions[0].choices["manifest"]
    kind_arg = next(a for a in manifest._actions if a.dest == "kind")
    assert tuple(kind_arg.choices) == kind_names()
    hdmap, mvtec, folder = get_kind("hdmap"), get_kind("mvtec"), get_kind("folder")
    assert (hdmap.conditions, hdmap.masks, hdmap.domain_dir("C")) == (True, False, "domain_C")
    assert (mvtec.conditions, mvtec.masks, mvtec.domain_dir("bottle")) == (False, True, "bottle")
    assert (folder.conditions, folder.masks) == (None, None)  # read from the index
    with pytest.raises(InputError, match=r"dataset.kind: 'tiles' is not one of \('synthetic'"):
        get_kind("tiles")
    with pytest.raises(ValueError, match="built-in"):
        unregister_kind("hdmap")


class FlatKind(DatasetKind):
    """A toy kind: ``<domain>/<split>/<label>_<n>.tiff``, the label in the file name."""

    name = "flat_toy"
    summary = "toy: <domain>/{train,test}/<label>_<n>.tiff"
    conditions = False
    masks = False
    domain_prefix = "flat_"

    def scan(self, domain_root, options):
        check, rows = ShapeCheck(), []
        for split in ("train", "test"):
            for idx, path in list_maps(domain_root / split, TIFF_SUFFIXES, numbered=False):
                label = path.stem.split("_")[0]
                rows.append(map_row(path, split, label, idx, UNKNOWN, "", check.read(path)))
        return rows


@pytest.fixture
def flat_kind():
    kind = register_kind(FlatKind())
    yield kind
    unregister_kind(kind.name)
    assert kind.name not in KINDS


def test_a_kind_registered_at_run_time_scans_validates_and_runs(flat_kind, tmp_path):
    root = tmp_path / "flat_D"
    rng = np.random.default_rng(0)
    for split, names in (("train", ["good_0", "good_1", "good_2"]),
                         ("test", ["good_0", "good_1", "fault_0", "fault_1"])):
        (root / split).mkdir(parents=True)
        for name in names:
            tifffile.imwrite(root / split / f"{name}.tiff", rng.random((8, 12), np.float32))
    m = scan_domain(root, "flat_toy")
    assert list(m.image_id) == ["train/good/good_0", "train/good/good_1", "train/good/good_2",
                                "test/fault/fault_0", "test/fault/fault_1", "test/good/good_0",
                                "test/good/good_1"]
    assert (m.condition == UNKNOWN).all() and (m.height == 8).all()
    with pytest.raises(InputError, match=r"train: folder missing$"):
        scan_domain(tmp_path, "flat_toy")  # no train/ folder: the toy's own error
    # params: the schema's enum takes the new name; the declaration refuses a gate
    p = parse_params(_params({"kind": "flat_toy", "root": str(tmp_path)}, domains=("D",)))
    assert p.dataset.domain_dir("D") == "flat_D" and not p.provides.conditions
    with pytest.raises(InputError, match=r"experiments.e.gate: 'p90' needs cold/warm "
                                         r"conditions, which dataset.kind 'flat_toy'"):
        parse_params(_params({"kind": "flat_toy", "root": str(tmp_path)}, gate="p90",
                             domains=("D",)))
    # and the manifest step takes it as --kind
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--kind", "flat_toy",
                 "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), m)


def test_a_kind_must_build_every_manifest_column(flat_kind, tmp_path, monkeypatch):
    (tmp_path / "flat_D").mkdir()
    monkeypatch.setattr(FlatKind, "scan", lambda self, root, options: [{"image_id": "x"}])
    with pytest.raises(TypeError, match="flat_toy.*exactly"):
        scan_domain(tmp_path / "flat_D", "flat_toy")


# --- params checked against what the kind provides --------------------------------------


def _folder(root: Path, domains: tuple[str, ...]) -> None:
    """HDMAP-layout domains with an index holding the index rule's conditions."""
    for d in domains:
        write_domain(root / d, n_test=2)
        _index(root / d, _hdmap_rows(root / d))


def test_params_are_checked_against_what_the_kind_provides(tmp_path):
    hdmap = {"kind": "hdmap", "root": str(tmp_path)}
    mvtec = {"kind": "mvtec", "root": str(tmp_path)}
    holdout = {"protocol": "test_good_holdout", "n_cold": 1, "n_warm": 1}
    assert parse_params(_params(hdmap, gate="p90", references=holdout)).provides.conditions
    with pytest.raises(InputError, match=r"^experiments.e.gate: 'oracle' needs cold/warm "
                                         r"conditions, which dataset.kind 'mvtec' does not "
                                         r"provide; use gate: mixed$"):
        parse_params(_params(mvtec, gate="oracle"))
    with pytest.raises(InputError, match=r"^experiments.e.references.protocol: "
                                         r"'test_good_holdout' needs cold/warm conditions"):
        parse_params(_params(mvtec, references=holdout))
    # pixel metrics need masks, per-condition metrics conditions
    two = ("A", "B")
    parse_params(_params(mvtec, domains=two, leaderboard="pixel.pixel_auroc"))
    with pytest.raises(InputError, match=r"^leaderboards.lb.metric: 'pixel.pixel_auroc' needs "
                                         r"pixel masks, which dataset.kind 'hdmap' does not "
                                         r"provide; rank by an image metric"):
        parse_params(_params(hdmap, domains=two, leaderboard="pixel.pixel_auroc"))
    with pytest.raises(InputError, match=r"^leaderboards.lb.metric: 'per_condition.cold.auroc' "
                                         r"needs cold/warm conditions"):
        parse_params(_params(mvtec, domains=two, leaderboard="per_condition.cold.auroc"))
    with pytest.raises(InputError, match=r"^dataset.index: dataset.kind 'hdmap' reads no index"):
        parse_params(_params({**hdmap, "index": "samples.csv"}))
    with pytest.raises(InputError, match=r"^params: dataset.index: '../x.csv' does not match"):
        parse_params(_params({"kind": "folder", "root": str(tmp_path), "index": "../x.csv"}))


def test_folder_provides_what_its_index_columns_say(tmp_path):
    folder = {"kind": "folder", "root": str(tmp_path)}
    with pytest.raises(InputError, match=r"C/samples.csv: index file not found"):
        parse_params(_params(folder))
    _folder(tmp_path, domains=("A", "B"))
    p = parse_params(_params(folder, gate="p90", domains=("A", "B")))
    assert (p.provides.conditions, p.provides.masks) == (True, False)
    _index(tmp_path / "B", [r[:3] for r in _hdmap_rows(tmp_path / "B")], ("path", "split",
                                                                           "label"))
    assert not parse_params(_params(folder, domains=("A", "B"))).provides.conditions
    with pytest.raises(InputError, match=r"^experiments.e.gate: 'p90' needs cold/warm "
                                         r"conditions, which dataset.kind 'folder' does not "
                                         r"provide \(.*B/samples.csv has no condition column\); "
                                         r"use gate: mixed$"):
        parse_params(_params(folder, gate="p90", domains=("A", "B")))


# --- the folder kind's index -------------------------------------------------------------


@pytest.fixture
def hdmap_domain(tmp_path) -> Path:
    return write_domain(tmp_path / "C", n_test=4)


def test_folder_manifest_equals_the_hdmap_one_in_any_row_order(hdmap_domain, tmp_path):
    rows = _hdmap_rows(hdmap_domain)
    _index(hdmap_domain, rows[::-1])
    folder = scan_domain(hdmap_domain, "folder")
    pd.testing.assert_frame_equal(folder, scan_domain(hdmap_domain, "hdmap"))
    # a Parquet index with train conditions, under another name
    table = pa.table({c: [r[i] for r in _hdmap_rows(hdmap_domain, "warm")]
                      for i, c in enumerate(("path", "split", "label", "condition"))})
    pq.write_table(table, hdmap_domain / "maps.parquet")
    other = scan_domain(hdmap_domain, "folder", {"index": "maps.parquet"})
    assert (other[other.split == "train"].condition == "warm").all()
    pd.testing.assert_frame_equal(other.drop(columns="condition"),
                                  folder.drop(columns="condition"))


def test_folder_masks_and_names_that_are_not_numbers(tmp_path):
    domain = tmp_path / "mine"
    rng = np.random.default_rng(1)
    rows = []
    for split, label, names in (("train", "good", ["b", "a"]), ("test", "good", ["x", "y"]),
                                ("test", "fault", ["dent", "scratch"])):
        for name in names:
            rel = f"{split}_{label}/{name}.png"
            (domain / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((rng.random((20, 30)) * 255).astype(np.uint8)).save(domain / rel)
            mask = ""
            if label == "fault":
                mask = f"masks/{name}.png"
                (domain / "masks").mkdir(exist_ok=True)
                Image.fromarray(np.full((20, 30), 255, np.uint8)).save(domain / mask)
            rows.append([rel, split, label, mask])
    _index(domain, rows, ("path", "split", "label", "mask"))
    m = scan_domain(domain, "folder")
    assert list(m.image_id) == ["train/good/a", "train/good/b", "test/good/x", "test/good/y",
                                "test/fault/dent", "test/fault/scratch"]
    assert list(m["index"]) == [0, 1, 0, 1, 0, 1]  # rank by path where no number is
    assert (m.condition == "unknown").all()
    assert [Path(p).name for p in m.mask_path] == ["", "", "", "", "dent.png", "scratch.png"]
    # a mask of another size than its map
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(domain / "masks/dent.png")
    with pytest.raises(InputError, match=r"samples.csv, line 6: mask .*dent.png is 10x30, its "
                                         r"map 20x30$"):
        scan_domain(domain, "folder")


#: ``(row, column, new value)`` (``None``: the field is dropped) -> the message after
#: ``<index>, ``: one line naming the line and the problem. Rows: 3 train, 4 test good (2
#: cold, 2 warm), 4 test fault; line = row + 2 (the header is line 1).
BAD_INDEXES = {
    "unknown-split": ((0, 1, "val"), r"line 2: split 'val' is not one of train, test$"),
    "unknown-label": ((4, 2, "bad"), r"line 6: label 'bad' is not one of good, fault$"),
    "train-fault": ((1, 2, "fault"), r"line 3: a train map labelled 'fault'; train maps are "
                                     r"the normal ones"),
    "unknown-condition": ((3, 3, "hot"), r"line 5: condition 'hot' is not one of cold, warm"),
    "test-without-condition": ((8, 3, ""), r"line 10: a test map without a condition; with a "
                                           r"condition column every test map is cold or warm"),
    "missing-file": ((5, 0, "test/good/000009.tiff"),
                     r"line 7: .*test/good/000009.tiff: file not found$"),
    "duplicate-path": ((4, 0, "test/good/000000.tiff"),
                       r"line 6: path 'test/good/000000.tiff' is listed again \(first at "
                       r"line 5\)$"),
    "duplicate-image-id": ((4, 0, "test/fault/000000.tiff"),
                           r"line 6: image id 'test/good/000000' again \(first at line 5\)"),
    "escaping-path": ((0, 0, "../C/train/good/000000.tiff"),
                      r"line 2: path '../C/train/good/000000.tiff' must be relative to the "
                      r"domain folder"),
    "absolute-path": ((0, 0, "/etc/passwd"), r"line 2: path '/etc/passwd' must be relative"),
    "hidden-path": ((0, 0, ".cache/x.tiff"), r"line 2: path '.cache/x.tiff' has a hidden part"),
    "empty-path": ((0, 0, ""), r"line 2: path is empty$"),
    "not-an-image": ((0, 0, "samples.csv"), r"line 2: 'samples.csv' is not an image"),
    "short-row": ((2, 3, None), r"line 4: 3 fields, the header has 4$"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_bad_folder_index_is_one_line_naming_file_and_line(case, hdmap_domain, tmp_path,
                                                           capsys):
    (row, col, value), expected = BAD_INDEXES[case]
    rows = _hdmap_rows(hdmap_domain)
    if value is None:
        del rows[row][col]
    else:
        rows[row][col] = value
    index = _index(hdmap_domain, rows)
    out = tmp_path / "m.parquet"
    capsys.readouterr()
    assert main(["manifest", "--domain-root", str(hdmap_domain), "--kind", "folder",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    prefix = f"hdmap_ad manifest: error: {index}, "
    assert err[0].startswith(prefix), err[0]
    assert re.search(expected, err[0][len(prefix):]), err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["C"]


def _no_fault(rows):
    return [r for r in rows if r[2] != "fault"]


def _masks(rows, missing: int | None = None, on_good: int | None = None):
    """A mask column: each fault map's own file as its mask (it exists), but none on row
    ``missing``, and one on the good row ``on_good``."""
    out = [r + [r[0] if r[2] == "fault" and i != missing else ""] for i, r in enumerate(rows)]
    if on_good is not None:
        out[on_good][3] = out[-1][0]
    return out


@pytest.mark.parametrize(("header", "edit", "expected"), [
    (("path", "split"), None, r"missing column\(s\) \['label'\]; the columns are path, "
                              r"split, label and optionally condition, mask$"),
    (("path", "split", "label", "conditon"), None, r"unknown column\(s\) \['conditon'\]"),
    (("path", "split", "label", "label"), None,
     r"column\(s\) \['label'\] given more than once"),
    (("path", "split", "label"), lambda rows: [], r"no rows"),
    (("path", "split", "label"), _no_fault, r"the test split has no fault maps; detection "
                                            r"metrics need good and fault test maps$"),
    (("path", "split", "label", "mask"), lambda rows: _masks(rows, on_good=3),
     r"line 5: a mask on a good map"),
    (("path", "split", "label", "mask"), lambda rows: _masks(rows, missing=7),
     r"line 9: a fault map without a mask; with a mask column every test fault map has one"),
], ids=["missing-column", "unknown-column", "column-twice", "no-rows", "no-fault",
        "mask-on-good", "fault-without-mask"])
def test_bad_folder_index_columns_and_splits(hdmap_domain, header, edit, expected):
    rows = [r[:3] for r in _hdmap_rows(hdmap_domain)]
    rows = edit(rows) if edit else [(r + ["", ""])[: len(header)] for r in rows]
    index = _index(hdmap_domain, rows, header)
    with pytest.raises(InputError) as err:
        scan_domain(hdmap_domain, "folder")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{index}"), message
    assert re.search(expected, message), message


def test_folder_index_file_missing_or_unreadable(hdmap_domain):
    with pytest.raises(InputError, match=r"C/samples.csv: index file not found"):
        scan_domain(hdmap_domain, "folder")
    (hdmap_domain / "samples.csv").write_bytes(b"path,split,label\n\xff\xfe,train,good\n")
    with pytest.raises(InputError, match=r"C/samples.csv: cannot read the index "
                                         r"\(UnicodeDecodeError"):
        scan_domain(hdmap_domain, "folder")
    with pytest.raises(InputError, match=r"^dataset.index: not an option of dataset.kind "
                                         r"'hdmap'"):
        scan_domain(hdmap_domain, "hdmap", {"index": "samples.csv"})


# --- the pipeline: a folder dataset gives the synthetic kind's metrics ----------------------


def _write_folder_from_synthetic(domain: Path) -> None:
    """The synthetic domain C as a folder dataset: the generator's maps (the same files the
    pipeline's synthesize step writes), an index in shuffled order with the index rule's
    conditions, and the generator's fault masks as PNGs."""
    from hdmap_ad.data.synth import generate_domain_with_truth, write_domain
    from hdmap_ad.specs import SynthConfig

    cfg = SynthConfig.from_dict(SYNTH)
    write_domain("C", cfg, domain)
    masks = generate_domain_with_truth("C", cfg).fault_masks
    (domain / "masks").mkdir()
    rows = []
    for row in _hdmap_rows(domain):
        if row[2] == "fault":
            i = int(Path(row[0]).stem)
            Image.fromarray(masks[i].astype(np.uint8) * 255).save(domain / f"masks/{i}.png")
            row.append(f"masks/{i}.png")
        else:
            row.append("")
        rows.append(row)
    rng = np.random.default_rng(0)
    _index(domain, [rows[i] for i in rng.permutation(len(rows))],
           ("path", "split", "label", "condition", "mask"))


def _run_project(root: Path, params: dict, target: str) -> dict:
    """``snakemake <target>`` in a fresh project copy under ``root``; the metrics JSON."""
    root.mkdir(exist_ok=True)
    copy_project(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["snakemake", "--cores", "2", "--profile", "profiles/default",
                           target], cwd=root, env=project_env(root), capture_output=True,
                          text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads((root / target).read_text())


@pytest.mark.slow
def test_folder_kind_pipeline_gives_the_synthetic_kinds_metrics(tmp_path):
    params = _params({"kind": "synthetic", "root": "data/synthetic", "synthetic": SYNTH},
                     gate="p90", references={"protocol": "test_good_holdout", "n_cold": 2,
                                             "n_warm": 2})
    params["experiments"]["e"]["method"] = {"name": "patchcore", "coreset_ratio": 0.5,
                                            "num_neighbors": 3}
    folder = copy.deepcopy(params)
    folder["dataset"] = {"kind": "folder", "root": "data/mine", "index": "samples.csv"}
    _write_folder_from_synthetic(tmp_path / "mine/data/mine/C")
    synthetic = _run_project(tmp_path / "synthetic", params, "results/domainC_e.json")
    mine = _run_project(tmp_path / "mine", folder, "results/C_e.json")
    # the same maps: the manifests differ only in their paths (and the folder's masks)
    a = pd.read_parquet(tmp_path / "synthetic/work/manifests/domain_C.parquet")
    b = pd.read_parquet(tmp_path / "mine/work/manifests/domain_C.parquet")
    pd.testing.assert_frame_equal(a.drop(columns=["path", "mask_path"]),
                                  b.drop(columns=["path", "mask_path"]))
    assert (b.mask_path != "").sum() == SYNTH["n_test_fault"]
    # every metric block is equal; only the folder's masks add pixel metrics
    assert set(synthetic) == set(mine)
    for block in sorted(set(synthetic) - {"provenance", "pixel"}):
        assert synthetic[block] == mine[block], block
    assert synthetic["metrics"]["auroc"] > 0.5 and synthetic["gate"]["mode"] == "p90"
    assert synthetic["per_condition"].keys() == {"cold", "warm"}
    assert synthetic["pixel"] is None and 0.5 < mine["pixel"]["pixel_auroc"] <= 1
    assert synthetic["provenance"]["data_sha256"] == mine["provenance"]["data_sha256"]
