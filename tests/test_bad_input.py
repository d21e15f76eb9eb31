"""Bad input through the CLI: exit code 2, one stderr line naming the file or key and the
problem, and nothing (no output, no temp file) left in the output folder."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from hdmap_ad.cli import main
from tests.conftest import DROP, tiny_params, write_domain


def _fails(capsys, argv: list[str], out_dir: Path, *expected: str) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line with ``expected``, empty out_dir."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    step = argv[0]
    assert lines[0].startswith(f"hdmap_ad {step}: error: "), lines[0]
    for part in expected:
        assert part in lines[0], lines[0]
    leftovers = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert leftovers == [], leftovers
    return lines[0]


def _manifest_fails(capsys, tmp_path: Path, root: Path, *expected: str, kind="hdmap") -> str:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["manifest", "--domain-root", str(root), "--kind", kind,
            "--out", str(out_dir / "m.parquet")]
    return _fails(capsys, argv, out_dir, *expected)


# --- data ---------------------------------------------------------------------------------


def test_corrupt_tiff(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "test/good/000001.tiff"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    _manifest_fails(capsys, tmp_path, root, f"{bad}: cannot read image")


def _write_mvtec(root: Path, n=2, size=16) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/crack"):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


def test_corrupt_png_mvtec(capsys, tmp_path):
    root = _write_mvtec(tmp_path / "bottle")
    bad = root / "test/crack/001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(200))
    _manifest_fails(capsys, tmp_path, root, f"{bad}: cannot read image", kind="mvtec")


def test_unreadable_file(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "test/fault/000001.tiff"
    if os.geteuid() == 0:  # root reads a chmod 000 file: use a folder with a map's name
        bad.unlink()
        bad.mkdir()
    else:
        bad.chmod(0)
    problem = "is a folder, not a map file" if os.geteuid() == 0 else "cannot read image"
    try:
        _manifest_fails(capsys, tmp_path, root, f"{bad}: {problem}")
    finally:
        if bad.is_file():
            bad.chmod(0o644)


def test_zero_byte_file(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "train/good/000002.tiff"
    bad.write_bytes(b"")
    _manifest_fails(capsys, tmp_path, root, f"{bad}: empty file (0 bytes)")


def test_wrong_shape_within_domain(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "test/good/000003.tiff"
    tifffile.imwrite(bad, np.zeros((30, 95), np.float32))
    _manifest_fails(capsys, tmp_path, root, f"{bad}: shape (30, 95) differs from (31, 95)")


@pytest.mark.parametrize(
    ("value", "problem"),
    [(np.nan, "contains NaN or Inf"), (np.inf, "contains NaN or Inf"),
     (-0.5, "contains negative values")],
    ids=["nan", "inf", "negative"],
)
def test_bad_values(capsys, tmp_path, value, problem):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "test/fault/000002.tiff"
    arr = np.full((31, 95), 0.5, np.float32)
    arr[3, 4] = value
    tifffile.imwrite(bad, arr)
    _manifest_fails(capsys, tmp_path, root, f"{bad}: {problem}")


def test_empty_folder(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    for p in (root / "test/fault").iterdir():
        p.unlink()
    _manifest_fails(capsys, tmp_path, root, f"{root / 'test/fault'}: no images")


def test_missing_folder(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    for p in (root / "test/fault").iterdir():
        p.unlink()
    (root / "test/fault").rmdir()
    _manifest_fails(capsys, tmp_path, root, f"{root / 'test/fault'}: folder missing")


def test_duplicate_indices(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X")
    tifffile.imwrite(root / "test/good/000001.tif", np.zeros((31, 95), np.float32))
    _manifest_fails(capsys, tmp_path, root, "000001.tif", "duplicate map index 1")


def test_odd_test_count(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X", n_test=3)
    _manifest_fails(capsys, tmp_path, root, f"{root / 'test/good'}: 3 maps", "even count")


# --- params -------------------------------------------------------------------------------

BASE = tiny_params(
    dataset={"synthetic": DROP},
    backbones={"lite2": {"input_size": 64, "resize": DROP, "batch_size": DROP}},
    experiments={"gated": {"method": DROP}},
)


def _edit_unknown_backbone(p):
    p["experiments"]["gated"]["backbone"] = "vit_huge"


def _edit_uncached_layer(p):
    p["experiments"]["gated"]["layers"] = ["blocks.2", "blocks.6"]


def _edit_unknown_gate(p):
    p["experiments"]["gated"]["gate"] = "sometimes"


def _edit_unknown_top_level(p):
    p["extra_block"] = {"a": 1}


def _edit_gated_on_mvtec(p):
    p["dataset"] = {"kind": "mvtec", "root": "datasets/mvtec"}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_edit_unknown_backbone,
         ["experiments.gated.backbone: unknown backbone 'vit_huge'", "['lite2']"]),
        (_edit_uncached_layer,
         ["experiments.gated.layers: ['blocks.6'] not cached by backbone 'lite2'"]),
        (_edit_unknown_gate, ["params: experiments.gated.gate: 'sometimes' is not one of"]),
        (_edit_unknown_top_level, ["params: <top level>:", "'extra_block'"]),
        (_edit_gated_on_mvtec, ["experiments.gated.gate: 'p90' needs cold/warm conditions",
                                "mvtec"]),
    ],
    ids=["unknown-backbone", "uncached-layer", "unknown-gate", "unknown-top-level-key",
         "gated-on-mvtec"],
)
def test_bad_params(capsys, tmp_path, edit, expected):
    params = copy.deepcopy(BASE)
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["validate", "--params", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hdmap_ad validate: error: "), lines
    for part in expected:
        assert part in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_valid_params_pass(capsys, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    assert main(["validate", "--params", str(path)]) == 0


# --- bank and extraction ------------------------------------------------------------------


def test_more_references_than_exist(capsys, tmp_path):
    root = write_domain(tmp_path / "domain_X", n_test=4)  # 2 cold test/good maps
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--out", str(manifest)]) == 0
    spec = {"key": "g", "backbone": "b", "layers": ["x"],
            "references": {"protocol": "test_good_holdout", "n_cold": 5, "n_warm": 1}}
    out_dir = tmp_path / "banks"
    out_dir.mkdir()
    _fails(capsys, ["fit", "--manifest", str(manifest), "--features", str(tmp_path / "f.parquet"),
                    "--spec", json.dumps(spec), "--meta", str(out_dir / "g.json"),
                    "--out", str(out_dir / "g.parquet")],
           out_dir, "experiments.g.references.n_cold: asks for 5 references but only 2")


def _extract_argv(tmp_path: Path, backbone: dict) -> tuple[list[str], Path]:
    root = write_domain(tmp_path / "domain_X", n_test=2)
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--out", str(manifest)]) == 0
    out_dir = tmp_path / "features"
    out_dir.mkdir()
    argv = ["extract", "--manifest", str(manifest), "--spec", json.dumps(backbone),
            "--out-dir", str(out_dir), "--quiet"]
    return argv, out_dir


def test_extract_unknown_layer(capsys, tmp_path):
    backbone = {"key": "r18", "model": "resnet18", "weights": {"source": "random"},
                "input_size": 32, "layers": ["layer2", "layer9"], "batch_size": 4}
    argv, out_dir = _extract_argv(tmp_path, backbone)
    line = _fails(capsys, argv, out_dir, "backbones.r18.layers:", "'layer9'",
                  "'layer1'", "'layer4'")
    assert "layer2'" in line  # the valid names are listed


def test_extract_missing_weights_file(capsys, tmp_path):
    backbone = {"key": "r18", "model": "resnet18",
                "weights": {"source": "file", "path": str(tmp_path / "missing.pth")},
                "input_size": 32, "layers": ["layer2"], "batch_size": 4}
    argv, out_dir = _extract_argv(tmp_path, backbone)
    _fails(capsys, argv, out_dir, f"{tmp_path / 'missing.pth'}: weights file not found")
