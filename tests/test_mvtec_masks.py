"""A small MVTec-style dataset with ground-truth masks yields pixel AUROC and PRO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdmap_ad.cli import main
from tests.conftest import DROP, Replace, mvtec_run_steps, tiny_backbone, tiny_experiment

BACKBONE = {"key": "lite2", **tiny_backbone(resize=DROP, layers=["blocks.2"])}
EXPERIMENT = {"key": "ungated",
              **tiny_experiment(references=Replace({"protocol": "full"}), gate="mixed")}


def _texture(rng: np.random.Generator, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 0.5 + 0.2 * np.sin(x / 3.0 + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(shape)
    return np.clip(np.repeat(base[..., None], 3, axis=-1), 0, 1)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)


def _dataset(root: Path, mixed_sizes: bool = False) -> Path:
    """A category of 64x64 textures; with ``mixed_sizes`` every other image is 56x80."""
    rng = np.random.default_rng(0)
    cat = root / "widget"

    def shape(i: int) -> tuple[int, int]:
        return (56, 80) if mixed_sizes and i % 2 else (64, 64)

    for i in range(10):
        _save(cat / "train/good" / f"{i:03d}.png", _texture(rng, shape(i)))
    for i in range(4):
        _save(cat / "test/good" / f"{i:03d}.png", _texture(rng, shape(i)))
        img, mask = _texture(rng, shape(i)), np.zeros(shape(i))
        r, c = rng.integers(8, 44, size=2)
        img[r : r + 12, c : c + 12] = [1.0, 0.1, 0.1]
        mask[r : r + 12, c : c + 12] = 1.0
        _save(cat / "test/stain" / f"{i:03d}.png", img)
        _save(cat / "ground_truth/stain" / f"{i:03d}_mask.png", mask)
    return cat


@pytest.mark.parametrize("mixed_sizes", [False, True])
def test_masked_dataset_gives_pixel_metrics(tmp_path, mixed_sizes):
    """Also with images of two sizes in one category (each resized to the input on its own;
    masks checked against their own image, then resized with the anomaly maps)."""
    cat = _dataset(tmp_path / "data", mixed_sizes)
    w = tmp_path / "work"
    for step in mvtec_run_steps(cat, w, BACKBONE, EXPERIMENT):
        assert main(step) == 0, step[0]
    m = json.loads((w / "r.json").read_text())
    assert m["metrics"]["auroc"] == 1.0
    assert 0.9 <= m["pixel"]["pixel_auroc"] <= 1.0
    assert 0.5 <= m["pixel"]["pro"] <= 1.0


def test_hdmap_without_masks_reports_no_pixel_metrics(tmp_path):
    from hdmap_ad.metrics.pixel import masked_pixel_metrics

    grids = np.zeros((2, 4, 4), np.float32)
    assert masked_pixel_metrics(grids, ["", ""], np.array([True, False]), (8, 8)) is None


def test_per_position_method_is_refused_on_mixed_sizes_under_aspect_pad(tmp_path, capsys):
    cat = _dataset(tmp_path / "data", mixed_sizes=True)
    w = tmp_path / "work"
    backbone = {**BACKBONE, "resize": "aspect-pad"}
    padim = {**EXPERIMENT, "method": {"name": "padim"}}
    manifest, extract, fit, *_ = mvtec_run_steps(cat, w, backbone, padim)
    for step in (manifest, extract):
        assert main(step) == 0, step[0]
    capsys.readouterr()
    assert main(fit) == 2
    assert "experiments.ungated.method: padim models each patch position" in \
        capsys.readouterr().err
    assert not (w / "model").exists()
