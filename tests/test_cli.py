"""The CLI turns bad input into one line naming the file or key, exit code 2, no output."""

import json
import subprocess
import sys

import numpy as np
import tifffile

from tests.test_references import _write_domain


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hdmap_ad", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_missing_domain_folder(tmp_path):
    out = tmp_path / "m.parquet"
    proc = _cli("manifest", "--domain-root", str(tmp_path / "nope"), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hdmap_ad manifest: error: {tmp_path / 'nope'}: domain folder not found"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_nan_map_is_named(tmp_path):
    root = _write_domain(tmp_path / "domain_X")
    bad = root / "test/fault/000002.tiff"
    arr = np.zeros((31, 95), np.float32)
    arr[3, 4] = np.nan
    tifffile.imwrite(bad, arr)
    out = tmp_path / "m.parquet"
    proc = _cli("manifest", "--domain-root", str(root), "--out", str(out))
    assert proc.returncode == 2 and f"{bad}: contains NaN or Inf" in proc.stderr
    assert not out.exists()


def test_bad_spec_names_the_key(tmp_path):
    spec = {"key": "g", "backbone": "b", "layers": ["x"], "references": {"protocol": "nope"}}
    proc = _cli("bank", "--manifest", "m", "--features", "f", "--spec", json.dumps(spec),
                "--meta", str(tmp_path / "b.json"), "--out", str(tmp_path / "b.parquet"))
    assert proc.returncode == 2
    assert "experiments.g.references.protocol: 'nope'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_validate_params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("dataset: {kind: synthetic, root: x}\n")
    proc = _cli("validate", "--params", str(p))
    assert proc.returncode == 2 and "params:" in proc.stderr and "domains" in proc.stderr
