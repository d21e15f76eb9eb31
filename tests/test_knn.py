import numpy as np
import pytest

from hdmap_ad.components.knn import BankIndex, image_scores, softmax


def test_faiss_search_matches_numpy():
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((300, 24)).astype(np.float32)
    q = rng.standard_normal((50, 24)).astype(np.float32)
    d, ids = BankIndex(bank).search(q, 3)
    full = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1))
    want_ids = np.argsort(full, axis=1)[:, :3]
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(d, np.take_along_axis(full, want_ids, 1), rtol=1e-4, atol=1e-4)


def test_image_score_without_reweighting_is_max_patch_distance():
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((100, 8)).astype(np.float32)
    q = rng.standard_normal((4, 30, 8)).astype(np.float32)
    s, patch = image_scores(q, BankIndex(bank), num_neighbors=1)
    full = np.sqrt(((q[:, :, None] - bank[None, None]) ** 2).sum(-1)).min(-1)
    np.testing.assert_allclose(patch, full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s, full.max(1), rtol=1e-4, atol=1e-5)


def test_reweighting_hand_computed_case():
    # 1-D bank on a line; the worst query patch sits at 10, its nearest bank item is m*=8.
    bank = np.array([[0.0], [1.0], [8.0], [9.5], [20.0]], dtype=np.float32)
    q = np.array([[[0.5], [10.0]]], dtype=np.float32)  # one map, two patches
    s, patch = image_scores(q, BankIndex(bank), num_neighbors=3)
    # patch scores: 0.5 (to 0 or 1), and min(|10-8|, |10-9.5|) = 0.5 -> nearest is 9.5 really
    assert np.allclose(patch, [[0.5, 0.5]])
    # argmax takes the first max: patch 0 (0.5, nearest bank item 0 or 1; faiss returns 0)
    # m* = bank[0] = 0; its 3 nearest bank items: 0, 1, 8 -> distances from q*=0.5: .5, .5, 7.5
    d = np.array([0.5, 0.5, 7.5])
    want = 0.5 * (1 - np.exp(d[0]) / np.exp(d).sum())
    assert np.isclose(s[0], want, rtol=1e-5)


def test_reweighting_hand_computed_single_worst():
    bank = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]], dtype=np.float32)
    q = np.array([[[0.0, 0.1], [2.0, 0.0]]], dtype=np.float32)
    s, patch = image_scores(q, BankIndex(bank), num_neighbors=2)
    # worst patch (2,0): nearest bank item (3,0) at distance 1.0 -> s* = 1
    assert np.isclose(patch[0, 1], 1.0)
    # m* = (3,0); its 2 nearest bank items: itself (0) and (0,0) (3) -> from q*: 1.0 and 2.0
    w = 1 - softmax(np.array([1.0, 2.0]))[0]
    assert np.isclose(s[0], w * 1.0, rtol=1e-5)


@pytest.mark.parametrize("cfg", [
    {"index": "ivf", "nlist": 16, "nprobe": 16},   # all cells probed: exact
    {"index": "hnsw", "hnsw_m": 16, "ef_search": 256},
])
def test_approximate_indexes_agree_with_exact_and_are_deterministic(cfg):
    from hdmap_ad.components.knn import SearchConfig

    rng = np.random.default_rng(0)
    bank = rng.standard_normal((2000, 12)).astype(np.float32)
    q = rng.standard_normal((300, 12)).astype(np.float32)
    exact_d, exact_i = BankIndex(bank).search(q, 1)
    search = SearchConfig.from_dict(cfg)
    d, i = BankIndex(bank, search).search(q, 1)
    assert np.mean(i[:, 0] == exact_i[:, 0]) >= 0.98
    np.testing.assert_allclose(d[i == exact_i], exact_d[i == exact_i], rtol=1e-5)
    d2, i2 = BankIndex(bank, search).search(q, 1)
    assert np.array_equal(i, i2) and np.array_equal(d, d2)


def test_ivf_nlist_is_capped_for_small_banks_and_bad_search_keys_are_named():
    from hdmap_ad.components.knn import SearchConfig
    from hdmap_ad.errors import InputError

    bank = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    index = BankIndex(bank, SearchConfig(index="ivf", nlist=1024, nprobe=8)).index
    assert index.nlist == 2 and index.nprobe == 2
    with pytest.raises(InputError, match=r"experiments.e.search.index: 'annoy'"):
        SearchConfig.from_dict({"index": "annoy"}, "experiments.e.search")
    with pytest.raises(InputError, match=r"search.nprob: unknown option"):
        SearchConfig.from_dict({"nprob": 3})
