"""STFPM: the student reads the map folded onto the teacher's descriptor grid (``input_map``).

The teacher here is a random-init ``tf_efficientnet_lite0`` at 64 px (no download; what is
checked is the plumbing, not pretrained features): the folded map is lossless, a student
holding the teacher's weights reproduces the cached features exactly (so the student sees the
teacher's input, layers, pooling and grid), and the method keeps the contract every method
keeps (determinism, batch independence, round trip, a band ranks first, named errors).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.features.descriptors import (
    DescriptorConfig,
    append_input_map,
    combine_layers,
    descriptor_layout,
)
from hdmap_ad.methods import METHODS, FitContext, load_model, save_model
from hdmap_ad.methods.base import state_file
from hdmap_ad.methods.stfpm import build_student, layer_distances, student_spec

LAYERS = ["blocks.1", "blocks.2"]
SIDE = 64
OPTS = dict(METHODS["stfpm"].smoke_options)  # a few epochs: seconds, not minutes


def _maps(n: int, band: bool = False, seed: int = 0) -> np.ndarray:
    """Smooth 31 x 95 maps (row and column profiles), a bright horizontal band on request."""
    rng = np.random.default_rng(seed)
    rows = np.sin(np.linspace(0, 3, 31))[None, :, None] * rng.uniform(0.2, 0.3, (n, 1, 1))
    cols = np.cos(np.linspace(0, 6, 95))[None, None, :] * 0.1
    maps = 0.4 + rows + cols + rng.normal(0, 0.01, (n, 31, 95))
    if band:
        maps[:, 14:17, 10:85] += 0.8
    return maps.astype(np.float32)


@pytest.fixture(scope="module")
def teacher_setup():
    import torch

    from hdmap_ad.features.extract import extract_batch
    from hdmap_ad.features.preprocess import preprocess
    from hdmap_ad.features.weights import create_model
    from hdmap_ad.specs import BackboneConfig

    cfg = BackboneConfig.from_dict("t", {"model": "tf_efficientnet_lite0", "input_size": SIDE,
                                         "layers": LAYERS, "weights": {"source": "random"},
                                         "patch_pool": 3})
    torch.manual_seed(0)
    teacher = create_model(cfg).eval()
    mean = std = (0.5, 0.5, 0.5)

    def describe(maps: np.ndarray) -> np.ndarray:
        feats = extract_batch(teacher, preprocess(maps, cfg, mean, std), LAYERS, 3)
        desc = combine_layers([feats[la] for la in LAYERS])
        return append_input_map(desc, maps[..., None], layout["input"]["scale"], "bilinear")

    probe = extract_batch(teacher, preprocess(_maps(1), cfg, mean, std), LAYERS, 3)
    metas = [{"backbone": "t", "model": cfg.model, "layer": la,
              "feature_shape": list(probe[la].shape[1:]),
              "input_size": SIDE, "resize": "bilinear", "mean": list(mean), "std": list(std),
              "patch_pool": 3} for la in LAYERS]
    layout = descriptor_layout(metas, {"feature_shape": [31, 95, 1], "backbone": "raw",
                                       "layer": "map"},
                               DescriptorConfig(), "experiments.e")
    refs = describe(_maps(16, seed=1))
    test = describe(np.concatenate([_maps(4, seed=2), _maps(2, band=True, seed=3)]))
    return teacher, layout, refs, test


def test_folded_map_is_lossless_and_the_layout_names_it():
    import torch
    import torch.nn.functional as F  # noqa: N812

    from hdmap_ad.features.preprocess import resize

    maps = _maps(3)
    desc = np.zeros((3, 16, 16, 5), dtype=np.float32)
    out = append_input_map(desc, maps[..., None], 4, "bilinear")
    assert out.shape == (3, 16, 16, 5 + 16) and np.array_equal(out[..., :5], desc)
    unfolded = F.pixel_shuffle(torch.from_numpy(out[..., 5:]).permute(0, 3, 1, 2), 4)
    want = resize(torch.from_numpy(maps)[:, None], 64, "bilinear")
    assert torch.equal(unfolded, want)


def test_a_student_with_the_teachers_weights_reproduces_the_cache(teacher_setup):
    import torch

    teacher, layout, refs, _ = teacher_setup
    assert layout["grid"] == [16, 16] and layout["input"]["scale"] == 4
    spec = student_spec(layout, "e")
    student = build_student(spec)
    student.net.load_state_dict(teacher.state_dict())
    student.eval()
    with torch.no_grad():
        dists = layer_distances(student, torch.from_numpy(np.moveaxis(refs, -1, 1).copy()))
    assert len(dists) == 2 and max(float(d.max()) for d in dists) < 1e-10
    # a random-init student does not
    fresh = build_student(spec).eval()
    with torch.no_grad():
        far = layer_distances(fresh, torch.from_numpy(np.moveaxis(refs, -1, 1).copy()))
    assert min(float(d.mean()) for d in far) > 1e-3


def test_stfpm_keeps_the_method_contract(teacher_setup, tmp_path):
    _, layout, refs, test = teacher_setup
    method = METHODS["stfpm"]
    opts = method.Options(**OPTS)
    ctx = FitContext(seed=3, where="experiments.e.method", layout=layout)
    model = method.fit(refs, opts, ctx)
    s, ps = model.score(test)
    assert s.shape == (6,) and s.dtype == np.float32 and np.isfinite(s).all()
    assert ps.shape == (6, 16, 16) and ps.dtype == np.float32
    s2, ps2 = method.fit(refs, opts, ctx).score(test)
    assert np.array_equal(s, s2) and np.array_equal(ps, ps2)
    one = np.concatenate([model.score(test[i : i + 1])[0] for i in range(len(test))])
    np.testing.assert_allclose(one, s, rtol=1e-5, atol=1e-7)
    assert s[4:].min() > s[:4].max()  # the banded maps rank first
    # the excess over normal maps sits on the band's rows (14-16 of 31: grid rows 7-8 of 16,
    # widened by the layers' receptive fields), not on the top or bottom rows
    excess = ps[4:].mean(axis=(0, 2)) / ps[:4].mean(axis=(0, 2))
    assert excess[5:11].min() > excess[[0, 1, 2, 13, 14, 15]].max()
    assert model.history["epochs_run"] >= 1
    save_model(tmp_path, "mixed", method, opts, model)
    again = load_model(tmp_path, "mixed", method, opts, FitContext(where="experiments.e"))
    s3, ps3 = again.score(test)
    assert np.array_equal(s, s3) and np.array_equal(ps, ps3)
    # a score-stage option changes scores, not the stored model
    summed = replace(opts, combine="sum")
    s4, _ = load_model(tmp_path, "mixed", method, summed, ctx).score(test)
    assert not np.allclose(s4, s) and s4[4:].min() > s4[:4].max()
    stored = state_file(tmp_path, "mixed")
    stored.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=rf"{stored.name}: cannot read"):
        load_model(tmp_path, "mixed", method, opts, ctx)


def test_a_partial_batch_takes_anomalibs_step_on_its_summed_loss(teacher_setup):
    """Two references with batch_size 5 (one partial batch, no validation): the one step of
    the one epoch is anomalib's first SGD step on the loss summed over the 2 maps,
    ``p - lr (grad + weight_decay p)``, not a step scaled by the 5 maps a full batch holds
    (2.5 times too large)."""
    import torch

    from hdmap_ad.methods.training import seeded, to_tensor

    _, layout, refs, _ = teacher_setup
    method = METHODS["stfpm"]
    opts = method.Options(epochs=1, batch_size=5, val_fraction=0.0)
    ctx = FitContext(seed=3, where="e", layout=layout)
    trained = dict(method.fit(refs[:2], opts, ctx).module.named_parameters())
    with seeded(ctx.seed):  # the initialisation fit starts from
        student = build_student(student_spec(layout, "e"))
    student.train()
    summed = sum(d.mean(dim=(1, 2)) for d in layer_distances(student, to_tensor(refs[:2])))
    summed.sum().backward()
    moved, want_moved, old_moved = 0.0, 0.0, 0.0
    with torch.no_grad():
        for name, p in student.named_parameters():
            if p.grad is None:  # layers past the last one used: SGD leaves them alone
                assert torch.equal(trained[name], p), name
                continue
            step = opts.lr * (p.grad + opts.weight_decay * p)
            torch.testing.assert_close(trained[name], p - step, rtol=1e-4, atol=1e-6)
            moved += float(((trained[name] - p) ** 2).sum())
            want_moved += float((step ** 2).sum())
            old = opts.lr * 5 * (p.grad / 2 + opts.weight_decay / 5 * p)  # lr * batch_size
            old_moved += float((old ** 2).sum())
    assert moved == pytest.approx(want_moved, rel=1e-3)
    assert old_moved > 4 * want_moved  # the old scaling is clearly told apart


def test_stfpm_without_the_map_is_a_named_error(teacher_setup):
    _, layout, refs, _ = teacher_setup
    method = METHODS["stfpm"]
    opts = method.Options(**OPTS)
    with pytest.raises(InputError, match=r"experiments.e.method: stfpm's student reads the map"):
        method.fit(refs, opts, FitContext(where="experiments.e.method"))
    with pytest.raises(InputError, match=r"drop the experiment's project_dim and context"):
        method.fit(refs, opts, FitContext(where="e", layout={**layout, "transformed": True}))
    with pytest.raises(InputError, match=r"descriptors have 40 channels, the layout says"):
        method.fit(refs[..., :40], opts, FitContext(where="e", layout=layout))
    with pytest.raises(InputError, match=r"experiments.s.input_map: method stfpm reads the map"):
        ExperimentConfig.from_dict("s", {"backbone": "b", "layers": LAYERS,
                                         "method": {"name": "stfpm"}})
