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
    opts = FastFlowOptions(epochs=15, flow_steps=2, batch_size=4, patience=15, lr=1e-2)
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
    opts = FastFlowOptions(epochs=1, flow_steps=2)
    ctx = FitContext(where="experiments.e.method")
    save_model(tmp_path, "mixed", FastFlow(), opts, FastFlow().fit(desc, opts, ctx))
    # the description claims 3 flow steps (as if written by another version): the stored
    # weights (2 blocks) no longer fit the model the options build
    meta_path = tmp_path / "mixed.json"
    meta = json.loads(meta_path.read_text())
    meta["options"]["flow_steps"] = 3
    meta_path.write_text(json.dumps(meta))
    other = FastFlowOptions(epochs=1, flow_steps=3)
    with pytest.raises(InputError,
                       match=r"mixed.pt: experiments.e.method: checkpoint does not fit"):
        load_model(tmp_path, "mixed", FastFlow(), other, ctx)
    # through the options check first: a model fitted with other options is named by file
    with pytest.raises(InputError, match=r"mixed.json: fitted with options"):
        load_model(tmp_path, "mixed", FastFlow(), opts, ctx)
