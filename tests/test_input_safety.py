"""Bad input that used to pass silently or end in a traceback, each written as that failure:
non-finite features, integer TIFF scaling and mixed dtypes, hidden files in dataset folders,
step-level refusals and named errors for bad option types (the DAG-level cases, stale data
and shell quoting, are in test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hdmap_ad.cli import main
from hdmap_ad.errors import InputError
from tests.conftest import write_domain


def _fails(capsys, argv: list[str], *expected: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in expected:
        assert part in err, err
    return err


def test_a_huge_pixel_is_refused_before_features_are_cached(tmp_path, capsys):
    """1e30 is finite, passes the reader, and overflows a ViT to NaN: refused at the cache."""
    root = write_domain(tmp_path / "domain_X", n_test=2)
    bad = root / "test/good/000001.tiff"
    arr = tifffile.imread(bad)
    arr[3, 4] = 1e30
    tifffile.imwrite(bad, arr)
    manifest, out = tmp_path / "m.parquet", tmp_path / "features"
    assert main(["manifest", "--domain-root", str(root), "--out", str(manifest)]) == 0
    spec = {"key": "vit", "model": "vit_small_patch14_dinov2", "weights": {"source": "random"},
            "input_size": 28, "layers": ["blocks.1"], "batch_size": 4}
    _fails(capsys, ["extract", "--manifest", str(manifest), "--spec", json.dumps(spec),
                    "--out-dir", str(out), "--quiet"], str(bad), "NaN or Inf")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255), (np.uint16, 65535), (np.int16, 32767)])
def test_integer_tiffs_are_scaled_by_their_dtype(tmp_path, dtype, scale):
    from hdmap_ad.data.maps import read_map

    path = tmp_path / "m.tiff"
    tifffile.imwrite(path, np.full((4, 5), scale // 2, dtype))
    assert np.allclose(read_map(path), (scale // 2) / scale)


def test_a_domain_mixing_dtypes_is_refused_and_hidden_files_are_skipped(tmp_path, capsys):
    root = write_domain(tmp_path / "domain_X", n_test=2)
    (root / "test/good/._000000.tiff").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "train/good/.DS_Store").write_bytes(b"junk")
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--out", str(out)]) == 0
    odd = root / "test/fault/000001.tiff"
    tifffile.imwrite(odd, np.full((31, 95), 7, np.uint16))
    _fails(capsys, ["manifest", "--domain-root", str(root), "--out", str(tmp_path / "n.parquet")],
           str(odd), "uint16", "float32")


def test_category_names_as_mvtec_spells_them_are_valid_domains():
    from hdmap_ad.config import validate_params

    raw = {"dataset": {"kind": "mvtec", "root": "x"}, "domains": ["metal_nut", "screw"],
           "backbones": {"b": {"model": "m", "weights": {"source": "random"}, "input_size": 32,
                               "layers": ["l"]}},
           "experiments": {"e": {"backbone": "b", "layers": ["l"],
                                 "references": {"protocol": "full"}}},
           "targets": {}}
    validate_params(raw)
    raw["domains"] = ["../x"]
    with pytest.raises(InputError, match="domains.0"):
        validate_params(raw)


@pytest.mark.parametrize("method,needle", [
    ({"name": "patchcore", "num_neighbors": 9.0}, "method.num_neighbors: 9.0 is not an integer"),
    ({"name": "patchcore", "coreset_ratio": True}, "method.coreset_ratio: True is not a number"),
    ({"name": "padim", "covariance": "full"}, "method.covariance: 'full' is not one of"),
])
def test_bad_option_types_are_one_named_line_at_the_step(tmp_path, capsys, method, needle):
    """The step itself checks what validate checks (a spec can come from anywhere)."""
    spec = {"key": "e", "backbone": "b", "layers": ["x"], "method": method,
            "references": {"protocol": "full"}}
    _fails(capsys, ["fit", "--manifest", "m", "--features", "f", "--spec", json.dumps(spec),
                    "--meta", str(tmp_path / "m.json"), "--out", str(tmp_path / "model")],
           f"experiments.e.{needle}")
    assert not any(tmp_path.iterdir())


def test_seed_must_not_be_negative(tmp_path, capsys):
    spec = {"key": "e", "backbone": "b", "layers": ["x"], "seed": -1,
            "references": {"protocol": "full"}}
    _fails(capsys, ["fit", "--manifest", "m", "--features", "f", "--spec", json.dumps(spec),
                    "--meta", str(tmp_path / "m.json"), "--out", str(tmp_path / "model")],
           "experiments.e.seed")


def test_gated_experiment_on_a_dataset_without_conditions_is_refused_at_the_step(
        tmp_path, capsys):
    """`snakemake results/bottle_gated.json` bypasses the targets check: the fit step refuses."""
    from tests.test_mvtec_masks import _dataset

    root = _dataset(tmp_path / "mvtec")
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--kind", "mvtec",
                 "--out", str(manifest)]) == 0
    spec = {"key": "g", "backbone": "b", "layers": ["x"], "gate": "p90",
            "references": {"protocol": "full"}}
    _fails(capsys, ["fit", "--manifest", str(manifest), "--features", "f",
                    "--spec", json.dumps(spec), "--meta", str(tmp_path / "m.json"),
                    "--out", str(tmp_path / "model")],
           "experiments.g.gate", "cold/warm")
    assert not (tmp_path / "model").exists()


def test_reference_budget_larger_than_the_data_is_named(tmp_path, capsys):
    root = write_domain(tmp_path / "domain_X", n_test=2)
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", "--domain-root", str(root), "--out", str(manifest)]) == 0
    spec = {"key": "e", "backbone": "b", "layers": ["x"],
            "references": {"protocol": "train", "k": 50}}
    _fails(capsys, ["fit", "--manifest", str(manifest), "--features", "f",
                    "--spec", json.dumps(spec), "--meta", str(tmp_path / "m.json"),
                    "--out", str(tmp_path / "model")], "experiments.e.references.k")


def test_an_os_error_on_output_is_one_line_with_the_path(tmp_path, capsys):
    """Disk full, read-only or a file where a folder should be: the path and the OS reason."""
    root = write_domain(tmp_path / "domain_X", n_test=2)
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    _fails(capsys, ["manifest", "--domain-root", str(root), "--out",
                    str(blocker / "m.parquet")], str(blocker), "File exists")


def test_duplicate_yaml_keys_are_refused(tmp_path):
    from hdmap_ad.config import load_params

    text = Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text()
    text = text.replace("experiments:\n", "experiments:\n  gated:\n    backbone: x\n", 1)
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=r"duplicate key 'gated'"):
        load_params(p)


def test_an_even_patch_pool_is_named_by_validate_and_by_the_step(tmp_path, capsys):
    from hdmap_ad.config import BackboneConfig

    with pytest.raises(InputError, match=r"backbones.b.patch_pool: 2 must be odd"):
        BackboneConfig.from_dict("b", {"model": "resnet18", "weights": {"source": "random"},
                                       "input_size": 32, "layers": ["layer2"], "patch_pool": 2})
    spec = {"key": "b", "model": "resnet18", "weights": {"source": "random"}, "input_size": 32,
            "layers": ["layer2"], "patch_pool": 2}
    _fails(capsys, ["extract", "--manifest", "m", "--spec", json.dumps(spec),
                    "--out-dir", str(tmp_path / "f")], "backbones.b.patch_pool")
