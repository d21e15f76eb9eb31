"""Greedy k-center coreset. Its float32 distances round differently with each product's shape
and BLAS kernel (e.g. ``OPENBLAS_CORETYPE=Haswell``), so picks are checked against exact
float64 distances with the rounding bound the module states (:func:`assert_greedy`), never by
comparing float32 products of different shapes bit for bit."""

import numpy as np
import pytest

from hdmap_ad.components.coreset import (
    UNIT_ROUNDOFF,
    _pair_error,
    _projection_matrix,
    greedy_coreset,
    random_projection,
)


def textbook_k_center(x: np.ndarray, k: int, start: int) -> list[int]:
    """Vectorised textbook greedy k-center in float64 (ties to the lowest index)."""
    selected = [start]
    min_d = np.full(len(x), np.inf)
    while len(selected) < k:
        np.minimum(min_d, ((x - x[selected[-1]]) ** 2).sum(1), out=min_d)
        selected.append(int(np.argmax(min_d)))
    return selected


def float32_slack(space: np.ndarray) -> float:
    """Largest error of a float32 squared distance between rows of ``space`` ``(N, d)``, on any
    BLAS: ``_pair_error(d + 2) (|x|^2 + |c|^2)`` for the largest norms."""
    return 2.0 * _pair_error(space.shape[1] + 2) * float(np.einsum("nd,nd->n", space,
                                                                      space).max())


def selection_space(x: np.ndarray, proj_dim: int | None, seed: int) -> tuple[np.ndarray, float]:
    """The float64 space :func:`greedy_coreset` selects ``x`` in, exactly, and the slack of its
    float32 distances there: :func:`float32_slack`, plus the projection's own float32 rounding
    (each coordinate within ``D u sum_i |x_i p_ij|``; a distance ``|a + e|^2`` within
    ``2 |a| |e| + |e|^2`` of ``|a|^2``, ``|a|`` at most twice the largest norm)."""
    x64 = x.astype(np.float64)
    proj = _projection_matrix(x.shape[1], proj_dim, seed)
    if proj is None:
        return x64, float32_slack(x64)
    p64 = proj.astype(np.float64)
    space = x64 @ p64
    e = 2.0 * x.shape[1] * UNIT_ROUNDOFF * float(np.linalg.norm(np.abs(x64) @ np.abs(p64),
                                                                 axis=1).max())
    r = float(np.sqrt(np.einsum("nd,nd->n", space, space).max()))
    return space, float32_slack(space) + 4.0 * r * e + e * e


def assert_greedy(space: np.ndarray, picks, slack: float) -> int:
    """Check that ``picks`` are greedy k-center picks over ``space`` (float64, exact distances)
    from ``picks[0]``: each pick's squared distance to the picks before it is within
    ``2 slack`` of the farthest point's (a float32 loop, whose distances err by at most
    ``slack``, may take any point that close: a near-tie). Returns the number of near-tie
    steps; 0 means every pick is the unique farthest point, the textbook loop's pick on any
    BLAS, so ``picks`` equal :func:`textbook_k_center`'s."""
    x = np.asarray(space, dtype=np.float64)
    picks = [int(p) for p in picks]
    min_d = np.full(len(x), np.inf)
    near_ties = 0
    for i in range(1, len(picks)):
        np.minimum(min_d, ((x - x[picks[i - 1]]) ** 2).sum(1), out=min_d)
        close = np.flatnonzero(min_d >= min_d.max() - 2.0 * slack)
        assert picks[i] in close, (i, picks[i], float(min_d[picks[i]]), float(min_d.max()))
        near_ties += len(close) > 1
    return near_ties


def test_the_greedy_check_rejects_a_pick_that_is_not_the_farthest():
    x = np.random.default_rng(0).standard_normal((50, 4))
    picks = textbook_k_center(x, 10, 3)
    assert assert_greedy(x, picks, float32_slack(x)) == 0
    wrong = picks[:5] + [picks[0]]  # a point already picked: distance 0
    with pytest.raises(AssertionError):
        assert_greedy(x, wrong, float32_slack(x))


@pytest.mark.parametrize("n,d,ratio,proj_dim", [
    (60, 5, 0.2, 256), (80, 200, 0.1, 128), (80, 200, 0.1, None), (40, 3, 0.5, 256),
])
def test_greedy_matches_brute_force(n, d, ratio, proj_dim):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    got = greedy_coreset(x, ratio, seed=3, proj_dim=proj_dim)
    space, slack = selection_space(x, proj_dim, seed=3)
    assert assert_greedy(space, got, slack) == 0  # no near-ties: the textbook picks
    assert got.tolist() == textbook_k_center(space, len(got), int(got[0]))
    assert len(got) == int(np.ceil(ratio * n))
    assert len(set(got.tolist())) == len(got)


def test_coverage_radius_beats_random():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)

    def radius(idx):
        return np.sqrt(((x[:, None] - x[idx][None]) ** 2).sum(-1).min(1).max())

    core = greedy_coreset(x, 0.05, seed=0)
    rand = rng.choice(500, size=len(core), replace=False)
    assert radius(core) < radius(rand)


def test_ratio_one_keeps_all_and_seed_is_deterministic():
    x = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    assert greedy_coreset(x, 1.0).tolist() == list(range(50))
    assert greedy_coreset(x, 0.3, seed=7).tolist() == greedy_coreset(x, 0.3, seed=7).tolist()
    assert greedy_coreset(x, 0.3, seed=7).tolist() != greedy_coreset(x, 0.3, seed=8).tolist()


def test_chunked_projection_matches_one_matmul(monkeypatch):
    import hdmap_ad.components.coreset as coreset

    x = np.random.default_rng(2).standard_normal((300, 40)).astype(np.float32)
    whole = coreset.random_projection(x, 16, seed=4)
    monkeypatch.setattr(coreset, "CHUNK_ROWS", 7)
    np.testing.assert_allclose(coreset.random_projection(x, 16, seed=4), whole, rtol=1e-5,
                               atol=1e-5)


def test_explicit_k_and_cuda_request_without_gpu_fall_back_to_the_same_selection():
    import torch

    x = np.random.default_rng(5).standard_normal((200, 8)).astype(np.float32)
    got = greedy_coreset(x, 0.1, seed=1, k=13)
    assert len(got) == 13 and got.tolist()[:10] == greedy_coreset(x, 0.05, seed=1).tolist()
    if not torch.cuda.is_available():
        assert greedy_coreset(x, 0.1, seed=1, device="cuda").tolist() == \
            greedy_coreset(x, 0.1, seed=1).tolist()


def test_coverage_radius_against_numpy():
    from hdmap_ad.components.coreset import coverage_radius

    x = np.random.default_rng(6).standard_normal((120, 5)).astype(np.float32)
    sel = greedy_coreset(x, 0.1, seed=0)
    want = np.sqrt(((x[:, None] - x[sel][None]) ** 2).sum(-1).min(1).max())
    assert coverage_radius(x, sel) == pytest.approx(want, rel=1e-5)
    assert coverage_radius(x, np.arange(120)) == pytest.approx(0.0, abs=1e-3)


def test_torch_selection_loop_matches_numpy_loop():
    """The GPU selection loop (_select_torch), run on CPU tensors: the same greedy picks as
    numpy (another BLAS: equal up to near-ties, of which these data have none)."""
    from hdmap_ad.components.coreset import _augmented, _select_numpy, _select_torch

    x = np.random.default_rng(6).standard_normal((400, 24)).astype(np.float32)
    space = random_projection(x, 16, seed=2)
    aug = _augmented(space)
    want = _select_numpy(aug, 40, start=17)
    got = _select_torch(aug, 40, start=17, device="cpu")
    slack = float32_slack(space.astype(np.float64))
    assert assert_greedy(space, want, slack) == 0 and assert_greedy(space, got, slack) == 0
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    assert _select_torch(aug, 1, start=3, device="cpu").tolist() == [3]


@pytest.mark.parametrize("block", [1, 2, 5, 300])
def test_candidate_blocks_pick_exactly_the_textbook_greedy(block):
    """Any block size gives the brute-force picks; bigger blocks need fewer passes."""
    from hdmap_ad.components.coreset import _augmented, _select_numpy

    rng = np.random.default_rng(11)
    # clusters of different spread, so blocks both hit and miss
    x = np.concatenate([rng.normal(c, s, (60, 6)) for c, s in ((0, 1), (5, 0.2), (-4, 2))])
    x = x.astype(np.float32)
    counts = {}
    got = _select_numpy(_augmented(x), 45, start=7, block=block, counts=counts)
    x64 = x.astype(np.float64)
    assert assert_greedy(x64, got, float32_slack(x64)) == 0
    assert got.tolist() == textbook_k_center(x64, 45, 7)
    if block == 1:
        assert counts["passes"] == 44  # every pick but the last updates all points
    elif block == 300:
        assert counts["passes"] == 1  # the start alone, then every point is a candidate
    else:
        assert 1 < counts["passes"] <= 44
    # no pruning groups at this size: every pass reads every point, one distance per pick
    assert counts["points_read"] == 180 * counts["passes"]
    assert counts["distances"] <= 180 * 44


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Tight blobs of different spread: a pick reaches few of the pruning groups."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 6.0, (24, d))
    spread = rng.uniform(0.2, 1.5, 24)
    which = rng.integers(24, size=n)
    return (centres[which] + rng.normal(0.0, 1.0, (n, d)) * spread[which, None]).astype(
        np.float32)


@pytest.mark.parametrize("seed,n,d,k", [(0, 3000, 8, 300), (1, 2500, 5, 600), (2, 3000, 16, 120)])
def test_pruned_selection_matches_the_textbook_greedy(seed, n, d, k):
    """Groups of 32 points: most blocks compare a pick with a few groups only, and the picks
    are still greedy ones, as are the unpruned loop's. Late picks in tight clusters come in
    near-ties (seed 1: gaps down to 5e-5 against a bound of 1.5e-3), where products of other shapes
    (the unpruned loop's, another BLAS's) may rightly pick differently: the picks are checked
    against exact distances with the rounding bound, not against each other."""
    from hdmap_ad.components.coreset import _augmented, _select_numpy

    x = _clustered(n, d, seed)
    x64 = x.astype(np.float64)
    aug = _augmented(x)
    pruned, full = {}, {}
    got = _select_numpy(aug, k, start=seed, block=64, counts=pruned, group_points=32)
    unpruned = _select_numpy(aug, k, seed, block=64, counts=full, group_points=None)
    # most picks are the unique farthest point, so the check is strict for them
    assert assert_greedy(x64, got, float32_slack(x64)) <= k // 4
    assert assert_greedy(x64, unpruned, float32_slack(x64)) <= k // 4
    assert pruned["groups"] > 50 and full["groups"] == 1
    # pruning did trigger: fewer distances and fewer points read than the unpruned loop
    assert pruned["distances"] < 0.6 * full["distances"]
    assert pruned["points_read"] < 0.6 * pruned["passes"] * n
    assert full["points_read"] == full["passes"] * n


def test_ties_duplicates_and_extreme_k_follow_the_textbook_order():
    """Small integer features (every float32 distance exact): duplicates tie exactly, and
    ties go to the lowest index, through k = 1 and k = N (picks repeat once all are 0)."""
    from hdmap_ad.components.coreset import _augmented, _select_numpy

    rng = np.random.default_rng(4)
    distinct = rng.integers(0, 4, (30, 3))
    x = distinct[rng.integers(30, size=240)].astype(np.float32)  # ~8 copies of each
    aug = _augmented(x)
    want = textbook_k_center(x.astype(np.float64), 240, 5)
    for group_points, block in ((None, 7), (16, 7), (16, 240)):
        for k in (1, 2, 37, 240):
            got = _select_numpy(aug, k, start=5, block=block, group_points=group_points)
            assert got.tolist() == want[:k], (group_points, block, k)
    assert greedy_coreset(x, 1.0).tolist() == list(range(240))


def test_greedy_coreset_reports_counts_and_prunes_large_inputs():
    from hdmap_ad.components.coreset import GROUP_POINTS

    x = _clustered(4 * GROUP_POINTS, 6, 9)
    counts = {}
    got = greedy_coreset(x, 0.1, seed=2, counts=counts)
    x64 = x.astype(np.float64)
    assert assert_greedy(x64, got, float32_slack(x64)) <= len(got) // 4
    assert counts["groups"] > 1 and counts["passes"] >= 1
    assert counts["distances"] <= (len(got) - 1) * len(x)


def test_block_size_is_max_block_at_most_n():
    import hdmap_ad.components.coreset as coreset

    assert coreset.block_size(50) == 50
    assert coreset.block_size(100_000) == coreset.MAX_BLOCK
    assert coreset.block_size(1) == 1


def test_products_are_within_the_rounding_bound_at_any_size():
    """Padded small products (``SMALL_PRODUCT``) keep their shape and each entry is within the
    float32 bound ``K u sum_i |a_i b_i|`` of the exact product (any BLAS, any kernel: small
    and large products need not round alike, e.g. under ``OPENBLAS_CORETYPE=Haswell``)."""
    from hdmap_ad.components.coreset import _products

    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((3000, 30)).astype(np.float32)
    exact = a.astype(np.float64) @ b.T.astype(np.float64)
    bound = 30 * UNIT_ROUNDOFF * (np.abs(a.astype(np.float64)) @ np.abs(b.T.astype(np.float64)))
    for r, c in ((1, 1), (1, 5), (2, 3), (7, 100), (40, 3000)):
        got = _products(a[:r], b[:c])
        assert got.shape == (r, c) and got.dtype == np.float32, (r, c)
        assert (np.abs(got - exact[:r, :c]) <= bound[:r, :c]).all(), (r, c)
    # the bound is tight enough to catch a wrong product (a row or a column off by one)
    assert not (np.abs(_products(a[1:2], b[:5]) - exact[:1, :5]) <= bound[:1, :5]).all()
    assert not (np.abs(_products(a[:1], b[1:6]) - exact[:1, :5]) <= bound[:1, :5]).all()
