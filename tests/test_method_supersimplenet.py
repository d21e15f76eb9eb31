"""SuperSimpleNet (``hdmap_ad.methods.supersimplenet``): synthetic anomalies, reproducible
training, validation on references only, scores and a mismatched checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hdmap_ad.errors import InputError
from hdmap_ad.methods import METHODS, FitContext, load_model, save_model
from hdmap_ad.methods.supersimplenet import (
    SuperSimpleNet,
    SuperSimpleNetOptions,
    _generator,
    anomaly_masks,
    build_supersimplenet,
    make_loss,
    perlin_noise,
)
from hdmap_ad.methods.training import to_tensor
from hdmap_ad.options import fit_stage

TINY = SuperSimpleNetOptions(epochs=3, batch_size=2, lr=1e-3, noise_std=1.0, seg_hidden=8,
                             cls_hidden=4)
CTX = FitContext(seed=5, where="experiments.x.method")


def _refs(n=6, h=4, w=5, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, d)).astype(np.float32)


def test_registered_and_imports_no_torch():
    assert isinstance(METHODS["supersimplenet"], SuperSimpleNet)
    code = ("import sys, hdmap_ad.methods.supersimplenet; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_synthetic_anomalies_are_seeded_and_cover_a_sane_share():
    a = anomaly_masks(200, 8, 12, 0.2, _generator(0, 1))
    b = anomaly_masks(200, 8, 12, 0.2, _generator(0, 1))
    c = anomaly_masks(200, 8, 12, 0.2, _generator(0, 2))
    assert a.shape == (200, 1, 8, 12) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    kept = a.flatten(1).amax(dim=1) > 0
    # half the copies stay normal; a kept mask covers part of the grid, never all of it
    assert 0.35 < kept.float().mean() < 0.65
    cover = a[kept].flatten(1).mean(dim=1)
    assert 0.1 < cover.mean() < 0.5 and cover.max() < 1.0
    # a one-patch grid still gets anomalies (the whole patch)
    one = anomaly_masks(50, 1, 1, 0.2, _generator(0, 3))
    assert 0 < one.sum() < 50


def test_perlin_noise_is_smooth_gradient_noise():
    noise = perlin_noise(16, 16, 2, 4, _generator(1))
    assert noise.shape == (16, 16) and noise.abs().max() < 1.5
    assert noise[0, 0] == 0  # zero at a lattice point
    # neighbours are close at this scale: smooth, not white noise
    assert (noise[1:] - noise[:-1]).abs().mean() < noise.std()


def test_validation_loss_reuses_its_anomalies_training_draws_new_ones():
    x = torch.from_numpy(np.moveaxis(_refs(), -1, 1).copy())
    with torch.no_grad():
        module = build_supersimplenet(4, TINY)
        loss = make_loss(0, TINY)
        module.eval()
        assert float(loss(module, x)) == float(loss(module, x))
        module.train()
        first, second = float(loss(module, x)), float(loss(module, x))
    assert first != second


def test_training_is_byte_reproducible():
    refs = _refs()
    a = SuperSimpleNet().fit(refs, TINY, CTX).state()[0]
    b = SuperSimpleNet().fit(refs, TINY, CTX).state()[0]
    assert sorted(a) == sorted(b) and "norm.mean" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = SuperSimpleNet().fit(refs, TINY, FitContext(seed=6)).state()[0]
    assert not torch.equal(a["module.adaptor.weight"], c["module.adaptor.weight"])


@pytest.mark.parametrize("n", [1, 6])
def test_validation_holds_out_references_only(n):
    model = SuperSimpleNet().fit(_refs(n=n), TINY, CTX)
    hist = model.history
    assert hist["n_train"] + hist["n_val"] == n
    assert hist["n_val"] == (0 if n == 1 else 1)
    assert (hist["best_val_loss"] is None) == (n == 1)


def test_scores_shapes_and_image_score_option():
    refs = _refs()
    query = _refs(n=3, seed=1)
    as_cls = SuperSimpleNetOptions(**{**TINY.__dict__, "image_score": "cls"})
    model = SuperSimpleNet().fit(refs, as_cls, CTX)
    image, patch = model.score(query)
    assert image.shape == (3,) and patch.shape == (3, 4, 5) and image.dtype == np.float32
    as_max = SuperSimpleNetOptions(**{**TINY.__dict__, "image_score": "max"})
    assert TINY.image_score == "cls"  # the default (the paper's)
    assert "image_score" not in fit_stage(as_max)  # score step only: no refit
    model.options = as_max
    image_max, patch_max = model.score(query)
    np.testing.assert_array_equal(patch_max, patch)
    np.testing.assert_array_equal(image_max, patch.reshape(3, -1).max(axis=1))
    assert not np.array_equal(image_max, image)


def test_upscale_scores_anomalibs_finer_grid():
    """``upscale: 2``: the heads run on the grid upsampled 2x and 3x3 average-pooled
    (anomalib's ``UpscalingFeatureExtractor``; training reads it too), and patch scores come
    back on the descriptors' grid as the mean of each 2x2 block."""
    from torch.nn import functional as F  # noqa: N812

    opts = SuperSimpleNetOptions(**{**TINY.__dict__, "upscale": 2})
    assert "upscale" in fit_stage(opts)  # a training option: a change refits
    model = SuperSimpleNet().fit(_refs(), opts, CTX)
    query = _refs(n=3, seed=1)
    image, patch = model.score(query)
    assert image.shape == (3,) and patch.shape == (3, 4, 5)
    with torch.no_grad():
        fine, _ = model.module((to_tensor(query) - model.mean) / model.std)
    assert fine.shape == (3, 8, 10)
    np.testing.assert_allclose(patch, fine.reshape(3, 4, 2, 5, 2).mean(dim=(2, 4)).numpy(),
                               rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 4, 4, 5)
    expect = F.avg_pool2d(F.interpolate(x, size=(8, 10), mode="bilinear"), 3, 1, 1)
    torch.testing.assert_close(model.module.grid(x), expect)
    # upscale 1 leaves the cached grid as it is
    assert build_supersimplenet(4, TINY).grid(x) is x
    # the synthetic anomalies are drawn on the heads' grid: the loss runs at upscale 2
    loss = make_loss(0, opts)(build_supersimplenet(4, opts).train(), x)
    assert torch.isfinite(loss)


def test_checkpoint_of_another_architecture_is_a_named_error(tmp_path):
    method = METHODS["supersimplenet"]
    save_model(tmp_path, "mixed", method, TINY, method.fit(_refs(), TINY, CTX))
    wider = SuperSimpleNetOptions(**{**TINY.__dict__, "seg_hidden": 16})
    # load_model checks the stored fit options first ...
    with pytest.raises(InputError, match=r"mixed.json: fitted with options"):
        load_model(tmp_path, "mixed", method, wider, CTX)
    # ... a checkpoint whose JSON claims the other width reaches load_state's check, which
    # names the context (the pipeline passes the model folder, as deploy/bundle.py does)
    meta_path = tmp_path / "mixed.json"
    meta = json.loads(meta_path.read_text())
    meta["options"]["seg_hidden"] = 16
    meta_path.write_text(json.dumps(meta))
    ctx = FitContext(where=f"{tmp_path}: method")
    with pytest.raises(InputError, match=rf"{tmp_path}: method: checkpoint does not fit"):
        load_model(tmp_path, "mixed", method, wider, ctx)
