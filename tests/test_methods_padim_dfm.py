"""PaDiM and DFM (``hdmap_ad.methods.padim`` / ``dfm``): contract, maths, state, options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.methods import METHODS, FitContext, MethodConfig, load_model, save_model
from hdmap_ad.methods.dfm import DFM, DFMOptions
from hdmap_ad.methods.padim import (
    PaDiM,
    PaDiMOptions,
    channel_subset,
    inverse_low_rank_plus_diag,
    ledoit_wolf_shrinkage,
)
from hdmap_ad.options import build_options

REPO = Path(__file__).resolve().parents[1]
CTX = FitContext(seed=3, where="experiments.x.method")

CONFIGS = [
    ("padim", {}),
    ("padim", {"covariance": "eps"}),
    ("dfm", {}),
    ("dfm", {"score_type": "nll"}),
    ("dfm", {"pooling_kernel_size": None}),
    ("dfm", {"pooling_kernel_size": 1}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in CONFIGS]


def _data(n=24, h=8, w=8, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, h, w, d)).astype(np.float32)


def _fit(name, opts, refs, ctx=CTX):
    method = METHODS[name]
    options = build_options(method.Options, opts, "method")
    return method, options, method.fit(refs, options, ctx)


def test_registered_and_light_imports():
    assert isinstance(METHODS["padim"], PaDiM) and isinstance(METHODS["dfm"], DFM)
    assert PaDiM.per_position and PaDiM.localizes and "2020" in PaDiM.summary
    assert DFM.localizes and "2019" in DFM.summary
    code = ("import sys, hdmap_ad.methods.padim, hdmap_ad.methods.dfm; "
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
def test_shapes_dtypes_and_determinism(name, opts):
    refs, query = _data(), _data(n=5, seed=1)
    _, _, model = _fit(name, opts, refs)
    image, patch = model.score(query)
    assert image.shape == (5,) and patch.shape == (5, 8, 8)
    assert image.dtype == np.float32 and patch.dtype == np.float32
    assert np.isfinite(image).all() and np.isfinite(patch).all()
    _, _, again = _fit(name, opts, refs)
    image2, patch2 = again.score(query)
    assert np.array_equal(image, image2) and np.array_equal(patch, patch2)
    # scored alone or in a batch: the same up to float32 rounding
    one_image, one_patch = model.score(query[2:3])
    np.testing.assert_allclose(one_image[0], image[2], rtol=1e-5)
    np.testing.assert_allclose(one_patch[0], patch[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
def test_shifted_patch_scores_highest_where_it_is(name, opts):
    refs, query = _data(n=40), _data(n=4, seed=7)
    query[1, 3, 5] += 12.0
    _, _, model = _fit(name, opts, refs)
    image, patch = model.score(query)
    assert image[1] > max(image[0], image[2], image[3])
    assert patch[1, 3, 5] == patch[1].max()
    if opts.get("pooling_kernel_size", 4) is not None and name == "dfm":
        k = opts.get("pooling_kernel_size", 4)  # the cell holding (3, 5) stands out
        cell = (slice(3 // k * k, 3 // k * k + k), slice(5 // k * k, 5 // k * k + k))
        assert (patch[1][cell] == patch[1, 3, 5]).all()
    else:
        assert np.sum(patch[1] >= patch[1, 3, 5]) == 1


def test_channel_subset_is_seeded_sorted_and_capped():
    a = channel_subset(50, 10, seed=0)
    assert np.array_equal(a, channel_subset(50, 10, seed=0))
    assert not np.array_equal(a, channel_subset(50, 10, seed=1))
    assert len(set(a)) == 10 and np.all(np.diff(a) > 0) and a.max() < 50
    assert np.array_equal(channel_subset(8, 100, seed=0), np.arange(8))
    refs = _data(d=12)
    _, _, model = _fit("padim", {"n_features": 5}, refs)
    assert np.array_equal(model.channels, channel_subset(12, 5, CTX.seed))
    assert model.mean.shape == (8, 8, 5) and model.inv_covariance.shape == (8, 8, 5, 5)


def test_ledoit_wolf_matches_sklearn():
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 30):
        x = rng.normal(size=(3, n, 6)) * rng.uniform(0.5, 3.0, size=6)
        xc = x - x.mean(axis=1, keepdims=True)
        s, mu = ledoit_wolf_shrinkage(xc)
        for p in range(3):
            cov, sk = ledoit_wolf(x[p])
            assert s[p] == pytest.approx(sk, abs=1e-10)
            shrunk = (1 - s[p]) * xc[p].T @ xc[p] / n + s[p] * mu[p] * np.eye(6)
            np.testing.assert_allclose(shrunk, cov, rtol=1e-10, atol=1e-12)
        if n == 2:  # two references: the estimate of the shrinkage is 0
            np.testing.assert_allclose(s, 0.0, atol=1e-12)


@pytest.mark.parametrize(("n", "d"), [(3, 8), (8, 8), (20, 5)])
def test_inverse_low_rank_plus_diag(n, d):
    rng = np.random.default_rng(n)
    b = rng.normal(size=(4, n, d))
    c = rng.uniform(0.01, 1.0, size=4)
    inv = inverse_low_rank_plus_diag(b, c)
    for p in range(4):
        expected = np.linalg.inv(b[p].T @ b[p] + c[p] * np.eye(d))
        np.testing.assert_allclose(inv[p], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("covariance", ["eps", "ledoit_wolf"])
def test_padim_mahalanobis_matches_a_brute_force_loop(covariance):
    from sklearn.covariance import ledoit_wolf

    refs, query = _data(n=9, h=3, w=4, d=10), _data(n=3, h=3, w=4, d=10, seed=5)
    opts = {"n_features": 6, "covariance": covariance, "eps": 0.05}
    _, _, model = _fit("padim", opts, refs)
    image, patch = model.score(query)
    idx = channel_subset(10, 6, CTX.seed)
    expected = np.empty((3, 3, 4))
    for i in range(3):
        for j in range(4):
            x = refs[:, i, j, idx].astype(np.float64)
            cov = np.cov(x, rowvar=False) if covariance == "eps" else ledoit_wolf(x)[0]
            inv = np.linalg.inv(cov + 0.05 * np.eye(6))
            delta = query[:, i, j, idx] - x.mean(axis=0)
            expected[:, i, j] = np.sqrt(np.einsum("bi,ij,bj->b", delta, inv, delta))
    np.testing.assert_allclose(patch, expected, rtol=1e-4)
    np.testing.assert_allclose(image, expected.reshape(3, -1).max(axis=1), rtol=1e-4)


@pytest.mark.parametrize("covariance", ["eps", "ledoit_wolf"])
@pytest.mark.parametrize("n", [1, 2])
def test_padim_with_one_or_two_references_is_finite(covariance, n):
    refs, query = _data(n=n, d=20), _data(n=3, d=20, seed=2)
    _, _, model = _fit("padim", {"covariance": covariance}, refs)
    image, patch = model.score(query)
    assert np.isfinite(image).all() and np.isfinite(patch).all() and (patch > 0).all()
    self_image, _ = model.score(refs[:1])
    assert (self_image < image.min()).all()  # a reference is closer than fresh noise
    if n == 1:  # covariance eps * I: Euclidean distance / sqrt(eps)
        dist = np.linalg.norm(query - refs[0], axis=-1) / np.sqrt(0.01)
        np.testing.assert_allclose(patch, dist, rtol=1e-4)


def test_dfm_matches_sklearn_pca_reconstruction():
    from sklearn.decomposition import PCA

    refs, query = _data(n=15, h=4, w=4, d=6), _data(n=4, h=4, w=4, d=6, seed=9)
    _, _, model = _fit("dfm", {"pooling_kernel_size": 2, "pca_level": 0.9}, refs)
    image, patch = model.score(query)
    pool = lambda a: a.reshape(len(a), 2, 2, 2, 2, 6).mean(axis=(2, 4))  # noqa: E731
    pca = PCA(n_components=0.9, svd_solver="full").fit(pool(refs).reshape(15, -1))
    assert model.components.shape[1] == pca.n_components_
    flat = pool(query).reshape(4, -1)
    resid = (flat - pca.inverse_transform(pca.transform(flat))) ** 2
    np.testing.assert_allclose(image, resid.sum(axis=1), rtol=1e-4)
    cell = resid.reshape(4, 2, 2, 6).sum(axis=-1)
    np.testing.assert_allclose(patch, np.repeat(np.repeat(cell, 2, axis=1), 2, axis=2),
                               rtol=1e-4, atol=1e-7)
    # nll: Mahalanobis in PCA space (component variances / N) + log-determinant
    _, _, nll = _fit("dfm", {"pooling_kernel_size": 2, "pca_level": 0.9,
                             "score_type": "nll"}, refs)
    var = pca.explained_variance_ * 14 / 15
    z = pca.transform(flat)
    np.testing.assert_allclose(nll.score(query)[0], (z**2 / var).sum(1) + np.log(var).sum(),
                               rtol=1e-4)


def test_dfm_reference_counts():
    with pytest.raises(InputError, match=r"experiments\.x\.method: DFM needs at least 2"):
        _fit("dfm", {}, _data(n=1))
    assert DFM().min_references(DFMOptions()) == 2
    _, _, model = _fit("dfm", {}, _data(n=2))  # the line through both references
    assert model.components.shape[1] == 1
    image, patch = model.score(_data(n=3, seed=4))
    assert np.isfinite(image).all() and np.isfinite(patch).all()
    with pytest.raises(InputError, match="identical"):
        _fit("dfm", {}, np.repeat(_data(n=1), 3, axis=0))
    with pytest.raises(InputError, match=r"method\.pooling_kernel_size: 9 is larger"):
        _fit("dfm", {"pooling_kernel_size": 9}, _data())


@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=IDS)
def test_state_round_trip_and_saved_model(name, opts, tmp_path):
    refs, query = _data(), _data(n=4, seed=6)
    method, options, model = _fit(name, opts, refs)
    arrays, description = model.state()
    json.dumps(description)
    rebuilt = method.from_state(arrays, description, options, CTX)
    for a, b in zip(model.score(query), rebuilt.score(query), strict=True):
        assert np.array_equal(a, b)
    save_model(tmp_path, "mixed", method, options, model)
    loaded = load_model(tmp_path, "mixed", method, options, CTX)
    for a, b in zip(model.score(query), loaded.score(query), strict=True):
        assert np.array_equal(a, b)
    other = build_options(method.Options, {**opts, "pca_level": 0.5} if name == "dfm"
                          else {**opts, "n_features": 3}, "method")
    with pytest.raises(InputError, match="fitted with options"):
        load_model(tmp_path, "mixed", method, other, CTX)


def test_scoring_other_shapes_is_an_input_error():
    for name in ("padim", "dfm"):
        _, _, model = _fit(name, {}, _data())
        with pytest.raises(InputError, match=r"experiments\.x\.method: .* 8 x 8 patch grid"):
            model.score(_data(n=2, h=7))
        with pytest.raises(InputError, match="12 channels"):
            model.score(_data(n=2, d=11))


@pytest.mark.parametrize(("name", "data", "key"), [
    ("padim", {"covariance": "foo"}, "covariance"),
    ("padim", {"n_features": 0}, "n_features"),
    ("padim", {"n_features": 9.5}, "n_features"),
    ("padim", {"n_features": True}, "n_features"),
    ("padim", {"eps": 0}, "eps"),
    ("padim", {"image_score": "mean"}, "image_score"),
    ("padim", {"shrinkage": 1}, "shrinkage"),
    ("dfm", {"score_type": "foo"}, "score_type"),
    ("dfm", {"pca_level": 0}, "pca_level"),
    ("dfm", {"pca_level": 1.5}, "pca_level"),
    ("dfm", {"pooling_kernel_size": 0}, "pooling_kernel_size"),
    ("dfm", {"pooling_kernel_size": 2.0}, "pooling_kernel_size"),
])
def test_bad_options_name_the_key(name, data, key):
    with pytest.raises(InputError, match=rf"^experiments\.e\.method\.{key}: "):
        MethodConfig.from_dict({"name": name, **data}, "experiments.e.method")


def test_defaults_and_method_config():
    assert PaDiMOptions() == PaDiMOptions(n_features=100, covariance="ledoit_wolf", eps=0.01,
                                          image_score="max")
    assert DFMOptions() == DFMOptions(pca_level=0.97, score_type="fre", pooling_kernel_size=4)
    cfg = MethodConfig.from_dict({"name": "dfm", "pooling_kernel_size": None})
    assert cfg.options.pooling_kernel_size is None
    assert cfg.to_dict() == {"name": "dfm", "pca_level": 0.97, "score_type": "fre",
                             "pooling_kernel_size": None}


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".venv-anomalib" / "bin" / "python").exists(),
                    reason=".venv-anomalib absent (make .venv-anomalib/.installed)")
def test_benchmark_sides_agree_on_tiny_descriptors(tmp_path):
    """The harness's two sides on random descriptors: same PaDiM / DFM scores (about 15 s:
    importing anomalib)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import methods_vs_anomalib as bench

    rng = np.random.default_rng(0)
    np.save(tmp_path / "refs.npy", rng.normal(size=(12, 6, 6, 20)).astype(np.float32))
    np.save(tmp_path / "test.npy", rng.normal(size=(5, 6, 6, 20)).astype(np.float32))
    base = {"refs": str(tmp_path / "refs.npy"), "test": str(tmp_path / "test.npy"),
            "seed": 0, "repeats": 1}
    ours = bench._run_side(sys.executable, "ours", {**base, "configs": {
        "padim_eps": bench.OURS["padim_eps"] | {"n_features": 8},
        "dfm_fre": {"name": "dfm", "pooling_kernel_size": 2}}}, tmp_path)
    k = ours["dfm_fre"]["description"]["components"]
    ano = bench._run_side(bench.ANOMALIB_PY, "anomalib", {
        **base, "image_size": 24, "padim_channels": ours["padim_eps"]["channels"],
        "dfm": {"dfm_fre_k": {"n_comps": k, "score_type": "fre", "centre_once": False,
                              "pooling_kernel_size": 2}}}, tmp_path)
    np.testing.assert_allclose(ours["padim_eps"]["scores"], ano["padim"]["scores"], rtol=1e-4)
    np.testing.assert_allclose(ours["dfm_fre"]["scores"], ano["dfm_fre_k"]["scores"],
                               rtol=1e-3)
    assert ano["dfm_fre_k"]["num_components"] == k
