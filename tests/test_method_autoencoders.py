"""The autoencoder family beyond the shared contract (tests/test_methods_contract.py): the
VAE's KL term, what U-Net skips buy, and checkpoints of another architecture."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hdmap_ad.errors import InputError
from hdmap_ad.methods import METHODS, FitContext, load_model, save_model
from hdmap_ad.methods.ae import AE, AEOptions
from hdmap_ad.methods.unet_ae import UNetAE, UNetAEOptions
from hdmap_ad.methods.vae import VAEOptions, kl_divergence
from hdmap_ad.options import fit_stage

CTX = FitContext(seed=2, where="experiments.e.method")
SMALL = {"epochs": 4, "hidden": 4, "latent": 4}


def _maps(n: int = 12, h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    """``(n, h, w, 1)`` maps with pixel-scale detail (seeded noise around a row profile)."""
    rng = np.random.default_rng(seed)
    rows = np.sin(np.linspace(0, 3, h))[None, :, None, None]
    return (rows + 0.5 * rng.standard_normal((n, h, w, 1))).astype(np.float32)


def test_kl_is_zero_for_a_standard_normal_posterior_and_positive_otherwise():
    zeros = torch.zeros(3, 4, 2, 5)
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(3))
    shifted = kl_divergence(torch.full((3, 4, 2, 5), 0.5), zeros)
    narrow = kl_divergence(zeros, torch.full((3, 4, 2, 5), -1.0))
    assert (shifted > 0).all() and (narrow > 0).all()
    # closed form: 0.5 * mu^2 for unit variance
    torch.testing.assert_close(shifted, torch.full((3,), 0.125))


def test_vae_kl_score_raises_only_the_image_score():
    ref, test = _maps(), _maps(4, seed=1)
    vae = METHODS["vae"]
    model = vae.fit(ref, VAEOptions(**SMALL), CTX)
    s0, p0 = model.score(test)
    model.options = VAEOptions(**SMALL, kl_score=2.0)  # a score-stage option
    s1, p1 = model.score(test)
    assert np.array_equal(p0, p1) and (s1 > s0).all()


def test_unet_skips_reconstruct_the_training_data_better():
    ref = _maps(16)
    opts = {"epochs": 40, "hidden": 8, "latent": 1, "depth": 2, "val_fraction": 0.0}
    unet = UNetAE()
    with_skips = unet.fit(ref, UNetAEOptions(**opts, skip_levels=1), CTX)
    without = unet.fit(ref, UNetAEOptions(**opts, skip_levels=0), CTX)
    err_with = with_skips.score(ref)[1].mean()
    err_without = without.score(ref)[1].mean()
    assert err_with < 0.9 * err_without, (err_with, err_without)


def test_unet_without_skips_is_the_ae_architecture_and_levels_are_checked():
    ref = _maps(4)
    ae = AE().fit(ref, AEOptions(**SMALL), CTX).module.state_dict()
    unet = UNetAE().fit(ref, UNetAEOptions(**SMALL, skip_levels=0), CTX).module.state_dict()
    assert {k: v.shape for k, v in ae.items()} == {k: v.shape for k, v in unet.items()}
    with pytest.raises(InputError, match=r"experiments.e.method.skip_levels: 2 must be at most "
                                         r"depth - 1 = 1"):
        UNetAE().fit(ref, UNetAEOptions(**SMALL, skip_levels=2), CTX)


@pytest.mark.parametrize(("written", "read"), [("ae", "unet_ae"), ("unet_ae", "vae"),
                                               ("vae", "ae")])
def test_a_checkpoint_of_another_architecture_is_a_named_error(written, read, tmp_path):
    ref = _maps(4)
    w, r = METHODS[written], METHODS[read]
    w_opts, r_opts = w.Options(**SMALL), r.Options(**SMALL)
    save_model(tmp_path, "cold", w, w_opts, w.fit(ref, w_opts, CTX))
    with pytest.raises(InputError, match=rf"cold.json: written by method '{written}', "
                                         rf"not '{read}'"):
        load_model(tmp_path, "cold", r, r_opts, CTX)
    # the description doctored to claim the other method: the tensors themselves do not fit
    # (the error names ``ctx.where``: the model folder, as bundle_from_record passes it)
    meta_path = tmp_path / "cold.json"
    meta = json.loads(meta_path.read_text())
    meta["method"], meta["options"] = read, fit_stage(r_opts)
    meta_path.write_text(json.dumps(meta))
    ctx = FitContext(where=f"{tmp_path}: method")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}: method: checkpoint does not "
                                                   "fit the model")):
        load_model(tmp_path, "cold", r, r_opts, ctx)


def test_unet_options_mismatch_names_the_file(tmp_path):
    ref = _maps(4)
    unet = METHODS["unet_ae"]
    save_model(tmp_path, "warm", unet, UNetAEOptions(**SMALL),
               unet.fit(ref, UNetAEOptions(**SMALL), CTX))
    with pytest.raises(InputError, match=r"warm.json: fitted with options"):
        load_model(tmp_path, "warm", unet, UNetAEOptions(**SMALL, skip_levels=0), CTX)
