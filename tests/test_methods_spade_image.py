"""SPADE and the image-level baselines against plain-numpy brute force, plus the contract."""

import numpy as np
import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext, load_model, save_model
from hdmap_ad.methods.image_baselines import KnnImage, MahalanobisImage
from hdmap_ad.methods.spade import Spade
from hdmap_ad.options import build_options

CTX = FitContext(seed=0, where="experiments.e.method")


def _data(n, b=3, h=3, w=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    refs = rng.standard_normal((n, h, w, d)).astype(np.float32)
    queries = (rng.standard_normal((b, h, w, d)) * 1.3 + 0.2).astype(np.float32)
    return refs, queries


def _pool(x):
    return x.astype(np.float64).mean(axis=(1, 2))


def _euclid(a, b):
    return float(np.sqrt(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum()))


def _spade_brute(refs, queries, image_k, patch_k):
    n, h, w, d = refs.shape
    pr, pq = _pool(refs), _pool(queries)
    images_pooled, grids = [], []
    for qi in range(len(queries)):
        dist = [_euclid(pq[qi], pr[j]) for j in range(n)]
        k = min(image_k, n)
        near = sorted(range(n), key=lambda j: dist[j])[:k]
        images_pooled.append(np.mean([dist[j] for j in near]))
        gallery = [refs[j, y, x] for j in near for y in range(h) for x in range(w)]
        grid = np.zeros((queries.shape[1], queries.shape[2]))
        for y in range(queries.shape[1]):
            for x in range(queries.shape[2]):
                ds = sorted(_euclid(queries[qi, y, x], g) for g in gallery)
                grid[y, x] = np.mean(ds[: min(patch_k, len(ds))])
        grids.append(grid)
    grids = np.array(grids)
    return np.array(images_pooled), grids.reshape(len(queries), -1).max(1), grids


def _fit(method, refs, **opts):
    options = build_options(method.Options, opts, CTX.where)
    return method.fit(refs, options, CTX), options


@pytest.mark.parametrize("n,image_k,patch_k,grid", [
    (7, 3, 1, (3, 4)), (7, 50, 2, (3, 4)), (5, 2, 4, (3, 4)),
    (4, 2, 1, (5, 5)),  # >= 20 query patches: faiss's BLAS path
])
def test_spade_matches_brute_force(n, image_k, patch_k, grid):
    refs, queries = _data(n, h=grid[0], w=grid[1])
    want_pooled, want_max, want_grid = _spade_brute(refs, queries, image_k, patch_k)
    for mode, want in (("pooled", want_pooled), ("patch_max", want_max)):
        model, _ = _fit(Spade(), refs, image_k=image_k, patch_k=patch_k, image_score=mode)
        image, patch = model.score(queries)
        assert image.dtype == np.float32 and patch.dtype == np.float32
        assert image.shape == (3,) and patch.shape == (3, *grid)
        np.testing.assert_allclose(patch, want_grid, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(image, want, rtol=1e-4, atol=1e-5)


def test_spade_defaults_follow_the_paper():
    opts = Spade.Options()
    assert (opts.image_k, opts.patch_k, opts.image_score) == (50, 1, "pooled")
    assert Spade.localizes and not Spade.per_position


def test_knn_image_matches_brute_force():
    refs, queries = _data(6, b=4)
    pr, pq = _pool(refs), _pool(queries)
    for k in (1, 3, 10):
        model, _ = _fit(KnnImage(), refs, k=k)
        image, patch = model.score(queries)
        want = [np.mean(sorted(_euclid(q, r) for r in pr)[: min(k, 6)]) for q in pq]
        np.testing.assert_allclose(image, want, rtol=1e-4, atol=1e-6)
        assert patch.shape == (4, 3, 4) and patch.dtype == np.float32
        assert np.array_equal(patch, np.broadcast_to(image[:, None, None], patch.shape))


def _mahalanobis(x, mean, cov):
    prec = np.linalg.inv(cov)
    return np.array([np.sqrt((v - mean) @ prec @ (v - mean)) for v in x])


def test_mahalanobis_image_matches_brute_force():
    from sklearn.covariance import LedoitWolf

    refs, queries = _data(12, b=4, d=5)
    pr, pq = _pool(refs), _pool(queries)
    model, _ = _fit(MahalanobisImage(), refs)
    image, patch = model.score(queries)
    lw = LedoitWolf().fit(pr)
    np.testing.assert_allclose(image, _mahalanobis(pq, lw.location_, lw.covariance_),
                               rtol=1e-4)
    assert np.array_equal(patch, np.broadcast_to(image[:, None, None], patch.shape))
    assert model.state()[1]["eps_added"] is False

    model, _ = _fit(MahalanobisImage(), refs, shrinkage="eps", eps=0.05)
    cov = np.cov(pr, rowvar=False, bias=True) + 0.05 * np.eye(5)
    np.testing.assert_allclose(model.score(queries)[0], _mahalanobis(pq, pr.mean(0), cov),
                               rtol=1e-4)


def test_mahalanobis_single_reference_is_scaled_euclidean():
    refs, queries = _data(1)
    model, _ = _fit(MahalanobisImage(), refs, eps=0.04)
    want = [_euclid(q, _pool(refs)[0]) / 0.2 for q in _pool(queries)]
    np.testing.assert_allclose(model.score(queries)[0], want, rtol=1e-5)


ALL = [(Spade(), {}), (Spade(), {"image_score": "patch_max", "patch_k": 3}),
       (KnnImage(), {}), (KnnImage(), {"k": 5}), (MahalanobisImage(), {}),
       (MahalanobisImage(), {"shrinkage": "eps"})]


@pytest.mark.parametrize("method,opts", ALL)
@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_references_give_finite_scores(method, opts, n):
    refs, queries = _data(n)
    model, _ = _fit(method, refs, **opts)
    image, patch = model.score(queries)
    assert np.isfinite(image).all() and np.isfinite(patch).all()
    assert (image >= 0).all() and (patch >= 0).all()
    # a reference scored against itself: its own vector / patches are among the nearest
    own_image, own_patch = model.score(refs[:1])
    if method.name == "knn_image" and not opts:
        assert np.allclose(own_image, 0.0, atol=1e-5)
    if method.name == "spade" and not opts:  # all refs retrieved, kappa = 1
        assert np.allclose(own_patch, 0.0, atol=1e-3)
        assert np.allclose(own_image, 0.0 if n == 1 else _euclid(*_pool(refs)) / 2, rtol=1e-5)


def _same(got, want):
    return all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("method,opts", ALL)
def test_deterministic_batch_independent_and_round_trips(method, opts, tmp_path):
    refs, queries = _data(5, b=4, seed=3)
    model, options = _fit(method, refs, **opts)
    image, patch = model.score(queries)
    again_image, again_patch = _fit(method, refs, **opts)[0].score(queries)
    assert np.array_equal(image, again_image) and np.array_equal(patch, again_patch)

    singles = [model.score(queries[i:i + 1]) for i in range(len(queries))]
    assert np.array_equal(np.concatenate([s[0] for s in singles]), image)
    assert np.array_equal(np.concatenate([s[1] for s in singles]), patch)
    rev = model.score(queries[::-1])
    assert np.array_equal(rev[0][::-1], image) and np.array_equal(rev[1][::-1], patch)

    arrays, description = model.state()
    rebuilt = method.from_state(arrays, description, options, CTX)
    assert _same(rebuilt.score(queries), (image, patch))
    save_model(tmp_path, "sub", method, options, model)
    loaded = load_model(tmp_path, "sub", method, options, CTX)
    assert _same(loaded.score(queries), (image, patch))


@pytest.mark.parametrize("method,data,key", [
    (Spade(), {"image_k": 0}, "image_k"),
    (Spade(), {"patch_k": 1.0}, "patch_k"),
    (Spade(), {"image_score": "mean"}, "image_score"),
    (KnnImage(), {"k": 0}, "k"),
    (MahalanobisImage(), {"shrinkage": "oas"}, "shrinkage"),
    (MahalanobisImage(), {"eps": 0.0}, "eps"),
    (MahalanobisImage(), {"k": 1}, "k"),
])
def test_bad_options_name_the_key(method, data, key):
    with pytest.raises(InputError, match=rf"experiments\.e\.method\.{key}\b"):
        build_options(method.Options, data, "experiments.e.method")


def test_bad_descriptors_name_where():
    refs, _ = _data(3)
    model, options = _fit(Spade(), refs)
    with pytest.raises(InputError, match="experiments.e.method"):
        Spade().fit(refs[:0], options, CTX)
    with pytest.raises(InputError, match="experiments.e.method"):
        model.score(refs[..., :3])


@pytest.mark.parametrize("image_k,gate,sub_refs,want", [
    (50, "mixed", {"mixed": 10}, {"mixed": 10}),  # few-shot: the mean over all 10, not 50
    (4, "p90", {"cold": 3, "warm": 7}, {"cold": 3, "warm": 4}),
])
def test_spade_metrics_record_the_image_k_it_used(image_k, gate, sub_refs, want):
    """``image_k`` is clamped to each sub-model's references: the metrics JSON says which K
    was used per sub-model (``counts.bank``), leaving ``params`` as the experiment wrote it."""
    import json

    import pandas as pd

    from hdmap_ad.config import ExperimentConfig
    from hdmap_ad.metrics.experiment import build_metrics

    exp = json.loads(json.dumps(ExperimentConfig.from_dict("e", {  # as the scores store it
        "backbone": "b", "layers": ["l"], "gate": gate,
        "references": {"protocol": "train", "k": sum(sub_refs.values())},
        "method": {"name": "spade", "image_k": image_k}}).to_dict()))
    refs = [{"image_id": f"{sub}{i}", "condition": "cold", "sub_bank": sub, "p90": 0.5}
            for sub, n in sub_refs.items() for i in range(n)]
    meta = {"experiment": exp, "gate": {"mode": gate, "threshold": 0.5, "fit": "x"},
            "references": refs, "sub_banks": {sub: {"patches": 12 * n}
                                              for sub, n in sub_refs.items()}}
    sub = sorted(sub_refs)[0]
    scores = pd.DataFrame({
        "image_id": ["t0", "t1", "t2", "t3", "r0"], "role": ["test"] * 4 + ["reference_cv"],
        "label": ["good", "good", "fault", "fault", "good"], "condition": ["cold"] * 5,
        "score": [0.1, 0.2, 0.3, 0.4, 0.15], "gate": [sub] * 5, "routing": [sub] * 5})
    metrics = build_metrics(scores, meta, {})
    assert metrics["counts"]["bank"] == {
        s: {"patches": 12 * n, "image_k_effective": want[s]} for s, n in sub_refs.items()}
    assert metrics["params"] == exp  # the experiment as written (export compares it)
    # other methods report no such count
    meta["experiment"] = {**exp, "method": {"name": "knn_image"}}
    assert build_metrics(scores, meta, {})["counts"]["bank"] == meta["sub_banks"]
