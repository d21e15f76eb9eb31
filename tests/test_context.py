"""Horizontal context descriptors against direct loop-based numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.features.context import (
    AGGREGATIONS,
    ContextConfig,
    apply_context,
    descriptor_width,
    project_channels,
    row_context,
)


def _desc(seed: int = 0, shape: tuple[int, ...] = (2, 3, 7, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ref_row_context(desc: np.ndarray, k: int, aggregation: str) -> np.ndarray:
    """One patch at a time: the existing neighbours j' != j with |j' - j| <= k."""
    n, h, w, d = desc.shape
    out = np.zeros(desc.shape, dtype=np.float64)
    for a in range(n):
        for i in range(h):
            for j in range(w):
                cols = [c for c in range(j - k, j + k + 1) if c != j and 0 <= c < w]
                nb = desc[a, i, cols].astype(np.float64)  # (m, D)
                if aggregation == "mean":
                    v = nb.mean(axis=0)
                elif aggregation == "gaussian":
                    sigma = k / 2
                    wts = np.array([np.exp(-((c - j) ** 2) / (2 * sigma**2)) for c in cols])
                    v = (wts[:, None] * nb).sum(axis=0) / wts.sum()
                elif aggregation == "median":
                    v = np.median(nb, axis=0)
                elif aggregation == "trimmed":
                    if len(cols) >= 3:
                        s = np.sort(nb, axis=0)
                        v = s[1:-1].mean(axis=0)
                    else:
                        v = nb.mean(axis=0)
                elif aggregation == "max":
                    v = nb.max(axis=0)
                out[a, i, j] = v
    return out


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_row_context_matches_loop(aggregation: str, k: int) -> None:
    desc = _desc(k)
    got = row_context(desc, k, aggregation)
    assert got.shape == desc.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _ref_row_context(desc, k, aggregation), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_row_context_wide_radius_and_small_chunks(
    aggregation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # k >= W clips to the whole row; a tiny stack budget forces many chunks.
    import hdmap_ad.features.context as ctx_mod

    monkeypatch.setattr(ctx_mod, "_STACK_BYTES", 1)
    desc = _desc(5, (2, 3, 4, 3))
    np.testing.assert_allclose(
        row_context(desc, 6, aggregation), _ref_row_context(desc, 6, aggregation), atol=1e-5
    )


def test_row_context_excludes_self_and_stays_in_row() -> None:
    desc = np.zeros((1, 3, 5, 1), dtype=np.float32)
    desc[0, 1, 2, 0] = 100.0  # only the centre patch of row 1 is non-zero
    ctx = row_context(desc, 1, "mean")
    assert ctx[0, 1, 2, 0] == 0.0  # its own value is excluded
    np.testing.assert_allclose(ctx[0, 1, [1, 3], 0], [50.0, 50.0])  # 2 neighbours each
    assert np.all(ctx[0, [0, 2]] == 0.0)  # other rows unaffected
    desc[0, 1, 2, 0] = 0.0
    desc[0, 1, 0, 0] = 100.0  # border patch: its neighbour at column 1 has 2 neighbours
    np.testing.assert_allclose(row_context(desc, 1, "mean")[0, 1, :, 0], [0, 50, 0, 0, 0])


def test_row_context_bad_input() -> None:
    with pytest.raises(InputError, match="aggregation"):
        row_context(_desc(), 1, "mode")
    with pytest.raises(InputError, match="radius"):
        row_context(_desc(), 0, "mean")
    with pytest.raises(InputError, match="width"):
        row_context(_desc(shape=(1, 2, 1, 3)), 1, "mean")


def test_no_radius_is_identity() -> None:
    desc = _desc()
    cfg = ContextConfig()
    np.testing.assert_array_equal(apply_context(desc, cfg), desc)
    assert descriptor_width(4, cfg) == 4


def test_concat_layout_multi_k() -> None:
    desc = _desc(1)
    cfg = ContextConfig(radius=(1, 2), aggregation="median", mode="concat")
    got = apply_context(desc, cfg)
    assert got.shape == (2, 3, 7, 12) == (*desc.shape[:3], descriptor_width(4, cfg))
    np.testing.assert_array_equal(got[..., :4], desc)
    np.testing.assert_allclose(got[..., 4:8], _ref_row_context(desc, 1, "median"), atol=1e-5)
    np.testing.assert_allclose(got[..., 8:12], _ref_row_context(desc, 2, "median"), atol=1e-5)


def test_residual_layout() -> None:
    desc = _desc(2)
    cfg = ContextConfig(radius=(2, 3), aggregation="gaussian", mode="residual")
    got = apply_context(desc, cfg)
    assert got.shape[-1] == descriptor_width(4, cfg) == 20
    np.testing.assert_array_equal(got[..., :4], desc)
    for b, k in enumerate((2, 3)):
        ref = _ref_row_context(desc, k, "gaussian")
        np.testing.assert_allclose(got[..., 4 + 8 * b : 8 + 8 * b], ref, atol=1e-5)
        np.testing.assert_allclose(got[..., 8 + 8 * b : 12 + 8 * b], desc - ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["concat", "residual"])
def test_random_control(mode: str) -> None:
    desc = _desc(3)
    real = apply_context(desc, ContextConfig(radius=(1, 2), mode=mode))
    cfg = ContextConfig(radius=(1, 2), mode=mode, control="random", seed=7)
    rnd = apply_context(desc, cfg)
    assert rnd.shape == real.shape
    np.testing.assert_array_equal(rnd, apply_context(desc, cfg))  # deterministic
    other = apply_context(desc, ContextConfig(radius=(1, 2), mode=mode, control="random", seed=8))
    assert not np.allclose(rnd[..., 4:], other[..., 4:])  # seed matters
    np.testing.assert_array_equal(rnd[..., :4], desc)

    # changing a neighbour of patch (0, 1, 3) changes its real ctx, not its random ctx
    moved = desc.copy()
    moved[0, 1, 4] += 10.0
    real2 = apply_context(moved, ContextConfig(radius=(1, 2), mode=mode))
    rnd2 = apply_context(moved, cfg)
    assert not np.allclose(real2[0, 1, 3], real[0, 1, 3])
    np.testing.assert_array_equal(rnd2[0, 1, 3], rnd[0, 1, 3])


def test_global_control() -> None:
    desc = _desc(4)
    cfg = ContextConfig(radius=(1, 3), mode="residual", control="global")
    got = apply_context(desc, cfg)
    assert got.shape[-1] == descriptor_width(4, cfg)
    mean = desc.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    for start in (4, 12):
        np.testing.assert_allclose(
            got[..., start : start + 4], np.broadcast_to(mean, desc.shape), atol=1e-6
        )
        np.testing.assert_allclose(got[..., start + 4 : start + 8], desc - mean, atol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        ContextConfig(radius=(1, 3), aggregation="trimmed"),
        ContextConfig(radius=(2,), aggregation="max", mode="residual"),
        ContextConfig(radius=(1, 2), control="random", seed=3),
        ContextConfig(radius=(2,), control="global", mode="residual"),
    ],
)
def test_per_map_independence(cfg: ContextConfig) -> None:
    bank, query = _desc(5, (3, 3, 7, 4)), _desc(6, (2, 3, 7, 4))
    joint = apply_context(np.concatenate([bank, query]), cfg)
    np.testing.assert_allclose(joint[:3], apply_context(bank, cfg), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(joint[3:], apply_context(query, cfg), rtol=1e-6, atol=1e-6)
    one = apply_context(query[1:2], cfg)
    np.testing.assert_allclose(joint[4:5], one, rtol=1e-6, atol=1e-6)


def test_project_channels() -> None:
    desc = _desc(7, (2, 3, 5, 6))
    got = project_channels(desc, 3)
    assert got.shape == (2, 3, 5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, desc.reshape(2, 3, 5, 3, 2).mean(axis=-1), rtol=1e-6)
    # uneven bins: D=5 -> 2 bins = channels 0..2 and 2..4 (adaptive, overlapping)
    d5 = desc[..., :5]
    ref = np.stack([d5[..., 0:3].mean(-1), d5[..., 2:5].mean(-1)], axis=-1)
    np.testing.assert_allclose(project_channels(d5, 2), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(project_channels(desc, 6), desc, rtol=1e-6)
    with pytest.raises(InputError, match="dim"):
        project_channels(desc, 7)
    with pytest.raises(InputError, match="dim"):
        project_channels(desc, 0)


def test_radius_wider_than_grid() -> None:
    cfg = ContextConfig.from_dict({"radius": [2, 7]}, "experiments.x.context")
    cfg.validate_grid(8, "experiments.x.context")
    with pytest.raises(InputError, match=r"experiments\.x\.context\.radius.*wider than the grid"):
        cfg.validate_grid(7, "experiments.x.context")
    with pytest.raises(InputError, match=r"context\.radius"):
        apply_context(_desc(), cfg)


def test_from_dict() -> None:
    assert ContextConfig.from_dict({}) == ContextConfig()
    cfg = ContextConfig.from_dict(
        {"radius": 2, "aggregation": "gaussian", "mode": "residual", "control": "global"}, "c"
    )
    assert cfg.radius == (2,) and cfg.mode == "residual"
    assert ContextConfig.from_dict(cfg.to_dict()) == cfg
    bad = [
        ({"radii": [1]}, r"w\.radii"),
        ({"radius": [0]}, r"w\.radius"),
        ({"radius": [1, 1]}, r"w\.radius"),
        ({"radius": "3"}, r"w\.radius"),
        ({"radius": [1], "aggregation": "mode"}, r"w\.aggregation"),
        ({"radius": [1], "mode": "add"}, r"w\.mode"),
        ({"radius": [1], "control": "shuffle"}, r"w\.control"),
        ({"control": "random"}, r"w\.control"),
        ({"radius": [1], "seed": -1}, r"w\.seed"),
    ]
    for data, pattern in bad:
        with pytest.raises(InputError, match=pattern):
            ContextConfig.from_dict(data, "w")
