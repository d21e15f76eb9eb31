"""FastFlow's flow against brute force: invertibility, the log-determinant against the full
Jacobian, training lowers the likelihood loss, a checkpoint of another architecture is a named
error, and early stopping holds out references only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.methods import FitContext, load_model, save_model
from hdmap_ad.methods.fastflow import FastFlow, FastFlowOptions, build_flow, nll_per_dim
from hdmap_ad.methods.training import seeded, to_tensor

torch = pytest.importorskip("torch")


def _trained_like(flow):
    """Move every parameter off its identity-like initialisation, so the coupling and the
    global affine both matter."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("conv3x3_only", [False, True])
@pytest.mark.parametrize("channels", [1, 5])
def test_flow_is_invertible_and_its_log_det_is_the_jacobians(channels, conv3x3_only):
    opts = FastFlowOptions(flow_steps=3, hidden_ratio=1.5, conv3x3_only=conv3x3_only)
    with seeded(0):
        flow = _trained_like(build_flow(channels, opts)).double().eval()
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(1))
    z, log_det = flow(x)
    back, inv_log_det = flow.inverse(z)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(inv_log_det, -log_det)
    for i in range(len(x)):  # brute force: the full (C*H*W)^2 Jacobian of one map
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        sign, logabs = torch.linalg.slogdet(jac.reshape(x[i].numel(), x[i].numel()))
        assert sign != 0
        torch.testing.assert_close(log_det[i], logabs, rtol=1e-6, atol=1e-6)


def _correlated(n=24, h=6, w=8, d=6, seed=0):
    """Smooth, channel-correlated maps: a flow has structure to learn."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, h, w, 2)).astype(np.float32)
    mix = rng.standard_normal((2, d)).astype(np.float32)
    noise = 0.1 * rng.standard_normal((n, h, w, d)).astype(np.float32)
    return (base @ mix + noise).astype(np.float32)


def test_training_lowers_the_likelihood_loss_and_holds_out_references_only():
    desc = _correlated()
    # lr 1e-2: a clear drop within a second (the default 1e-3 needs ~100 epochs here)
    opts = FastFlowOptions(epochs=15, flow_steps=2, batch_size=4, patience=15, lr=1e-2,
                           flows="joint")
    model = FastFlow().fit(desc, opts, FitContext(seed=2))
    x = to_tensor(desc)
    x = (x - model.mean) / model.std
    with seeded(2):
        untrained = build_flow(desc.shape[-1], opts).eval()
    with torch.no_grad():
        before, after = float(nll_per_dim(untrained, x)), float(nll_per_dim(model.module, x))
    assert after < 0.5 * before
    h = model.history
    assert h["best_val_loss"] < before
    # early stopping watched a held-out share of the references, nothing else
    assert h["n_val"] > 0 and h["n_train"] + h["n_val"] == len(desc)
    assert h["validation"] == "held-out references"


def test_checkpoint_of_another_architecture_is_a_named_error(tmp_path):
    desc = _correlated(n=4)
    opts = FastFlowOptions(epochs=1, flow_steps=2, flows="joint")
    ctx = FitContext(where="experiments.e.method")
    save_model(tmp_path, "mixed", FastFlow(), opts, FastFlow().fit(desc, opts, ctx))
    # the description claims 3 flow steps (as if written by another version): the stored
    # weights (2 blocks) no longer fit the model the options build
    meta_path = tmp_path / "mixed.json"
    meta = json.loads(meta_path.read_text())
    meta["options"]["flow_steps"] = 3
    meta_path.write_text(json.dumps(meta))
    other = FastFlowOptions(epochs=1, flow_steps=3, flows="joint")
    with pytest.raises(InputError,
                       match=r"mixed.pt: experiments.e.method: checkpoint does not fit"):
        load_model(tmp_path, "mixed", FastFlow(), other, ctx)
    # through the options check first: a model fitted with other options is named by file
    with pytest.raises(InputError, match=r"mixed.json: fitted with options"):
        load_model(tmp_path, "mixed", FastFlow(), opts, ctx)


def _layered(n=12, seed=0):
    """Descriptors as the pipeline builds them: a 4 x 6 layer (3 channels) and a 2 x 3 layer
    (2 channels) upsampled onto it (``combine_layers``), with their layout."""
    from hdmap_ad.features.descriptors import combine_layers

    rng = np.random.default_rng(seed)
    fine = rng.standard_normal((n, 4, 6, 3)).astype(np.float32)
    coarse = rng.standard_normal((n, 2, 3, 2)).astype(np.float32)
    layout = {"grid": [4, 6], "transformed": False, "input": None,
              "layers": [{"name": "l1", "channels": 3, "grid": [4, 6]},
                         {"name": "l2", "channels": 2, "grid": [2, 3]}]}
    return combine_layers([fine, coarse]), fine, coarse, layout


def test_per_layer_flows_see_each_layers_native_grid_and_reload(tmp_path):
    from hdmap_ad.methods.fastflow import build_layer_flows, flow_groups

    desc, fine, coarse, layout = _layered()
    opts = FastFlowOptions(epochs=2, flow_steps=2, flows="per_layer", val_fraction=0.0)
    with seeded(0):
        flows = build_layer_flows(flow_groups(layout, 5, "e"), opts)
    x = to_tensor(desc)
    # the upsampled coarse layer projects back to its own grid exactly (to float error)
    torch.testing.assert_close(flows.native(1, x[:, 3:]), to_tensor(coarse), rtol=0, atol=1e-5)
    torch.testing.assert_close(flows.native(0, x[:, :3]), to_tensor(fine))
    assert [tuple(z.shape) for z, _ in flows(x)] == [(12, 3, 4, 6), (12, 2, 2, 3)]

    ctx = FitContext(seed=1, where="experiments.e.method", layout=layout)
    model = FastFlow().fit(desc, opts, ctx)
    image, patch = model.score(desc[:3])
    assert patch.shape == (3, 4, 6) and np.isfinite(patch).all()
    np.testing.assert_array_equal(image, patch.reshape(3, -1).max(axis=1))
    # the checkpoint carries the layer layout: it reloads without one
    save_model(tmp_path, "mixed", FastFlow(), opts, model)
    again = load_model(tmp_path, "mixed", FastFlow(), opts, FitContext(where="e"))
    np.testing.assert_array_equal(again.score(desc[:3])[1], patch)


def test_layer_maps_combine_as_anomalib_without_underflow():
    from hdmap_ad.methods.fastflow import combine_layer_maps

    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 4, 6, generator=g) * 3, torch.rand(2, 2, 3, generator=g) * 3]
    ours = combine_layer_maps(maps, (4, 6))
    # anomalib: mean over layers of the upsampled -exp(-m); ours is -log(-that)
    up = torch.nn.functional.interpolate(torch.exp(-maps[1])[:, None], size=(4, 6),
                                         mode="bilinear", align_corners=False)[:, 0]
    anomalib = -(torch.exp(-maps[0]) + up) / 2
    torch.testing.assert_close(ours, -torch.log(-anomalib), rtol=1e-5, atol=1e-5)
    # far beyond float32's exp: still finite and ordered (anomalib's map would be 0 at both)
    big = combine_layer_maps([m + 500 for m in maps], (4, 6))
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big - 500, ours, rtol=1e-5, atol=1e-4)


def test_per_layer_needs_the_layers_own_channels():
    desc, _, _, layout = _layered(n=4)
    opts = FastFlowOptions(epochs=1, flow_steps=1, flows="per_layer")
    with pytest.raises(InputError, match=r"e: flows: per_layer needs the descriptors' layer"):
        FastFlow().fit(desc, opts, FitContext(where="e"))
    with pytest.raises(InputError, match=r"projects them or adds context"):
        FastFlow().fit(desc, opts, FitContext(where="e", layout={**layout, "transformed": True}))
    with pytest.raises(InputError, match=r"descriptors have 4 channels"):
        FastFlow().fit(desc[..., :4], opts, FitContext(where="e", layout=layout))


def test_params_refuse_per_layer_flows_on_transformed_descriptors():
    from hdmap_ad.config import ExperimentConfig

    base = {"backbone": "b", "layers": ["l1", "l2"], "method": {"name": "fastflow"}}
    ExperimentConfig.from_dict("e", base)  # untransformed: fine
    with pytest.raises(InputError, match=r"experiments.e.context: method fastflow "
                                         r"\(flows: per_layer; flows: joint"):
        ExperimentConfig.from_dict("e", {**base, "context": {"radius": 2}})
    with pytest.raises(InputError, match=r"experiments.e.project_dim: method fastflow"):
        ExperimentConfig.from_dict("e", {**base, "project_dim": 16})
    joint = {**base, "method": {"name": "fastflow", "flows": "joint"}, "project_dim": 16}
    assert ExperimentConfig.from_dict("e", joint).method.options.flows == "joint"
