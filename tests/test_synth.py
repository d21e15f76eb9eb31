"""The synthetic HDMAP generator reproduces HDMAP_FACTS.md within its stated tolerances."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hdmap_ad.config import SynthConfig
from hdmap_ad.data import synth
from hdmap_ad.data.synth import (
    DOMAIN_PROFILES,
    DOMAINS,
    MAP_SHAPE,
    SPLITS,
    SynthDomain,
    angular_power_entropy,
    generate_domain,
    generate_domain_with_truth,
    warm_half,
    write_domain,
)
from hdmap_ad.errors import InputError

CFG = SynthConfig(seed=0, n_train=200, n_test_good=200, n_test_fault=200)
TINY = SynthConfig(seed=3, n_train=6, n_test_good=4, n_test_fault=5)

# HDMAP_FACTS.md: pixel mean and sd per split (train, test/good, test/fault)
SPLIT_FACTS = {
    "A": ((0.248, 0.084), (0.217, 0.098), (0.228, 0.088)),
    "B": ((0.252, 0.084), (0.223, 0.097), (0.190, 0.080)),
    "C": ((0.246, 0.072), (0.228, 0.075), (0.263, 0.096)),
    "D": ((0.218, 0.082), (0.197, 0.086), (0.181, 0.076)),
}
# Domain C per-image table: mean image mean, mean image std, mean p95
C_GROUPS = {
    ("test/good", False): (0.190, 0.046, 0.277),
    ("test/good", True): (0.265, 0.075, 0.405),
    ("test/fault", False): (0.216, 0.057, 0.320),
    ("test/fault", True): (0.310, 0.101, 0.476),
}


@pytest.fixture(scope="module")
def domains() -> dict[str, SynthDomain]:
    return {d: generate_domain_with_truth(d, CFG) for d in DOMAINS}


def _percentile(maps: np.ndarray, q: float) -> np.ndarray:
    return np.percentile(maps, q, axis=(1, 2))


def _best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """Best accuracy of ``values > t`` predicting ``labels`` over all thresholds t."""
    order = np.argsort(values)
    lab = labels[order].astype(int)
    # predict True above the cut: correct = falses below + trues above
    falses_below = np.concatenate([[0], np.cumsum(1 - lab)])
    trues_above = lab.sum() - np.concatenate([[0], np.cumsum(lab)])
    return float((falses_below + trues_above).max() / lab.size)


def _mean_spectrum(maps: np.ndarray) -> np.ndarray:
    """Mean power spectrum (DC dropped, sums to 1) of maps normalised to zero mean, unit std."""
    z = maps - maps.mean(axis=(1, 2), keepdims=True)
    z = z / z.std(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(z)) ** 2).mean(axis=0).ravel()[1:]
    return power / power.sum()


def _runs(row: np.ndarray) -> int:
    """Number of runs of True in a 1-D bool array."""
    return int(np.count_nonzero(np.diff(row.astype(int), prepend=0) == 1))


# --- layout, files, determinism -------------------------------------------------------------


def test_maps_have_shape_dtype_and_keys(domains: dict[str, SynthDomain]) -> None:
    for d, sd in domains.items():
        assert tuple(sd.maps) == SPLITS
        sizes = (CFG.n_train, CFG.n_test_good, CFG.n_test_fault)
        for split, n in zip(SPLITS, sizes, strict=True):
            arr = sd.maps[split]
            assert arr.shape == (n, *MAP_SHAPE) and arr.dtype == np.float32, (d, split)
            assert np.isfinite(arr).all() and (arr >= 0).all(), (d, split)
        assert sd.fault_masks.shape == (CFG.n_test_fault, *MAP_SHAPE)
        assert sd.fault_masks.dtype == bool
        assert sd.train_warm.shape == (CFG.n_train,)
        assert 0.35 < sd.train_warm.mean() < 0.65  # random mix of conditions


def test_write_domain_layout_and_content(tmp_path: Path) -> None:
    out = tmp_path / "domain_C"
    write_domain("C", TINY, out)
    maps = generate_domain("C", TINY)
    for split, arr in maps.items():
        files = sorted(p.name for p in (out / split).iterdir())
        assert files == [f"{i:06d}.tiff" for i in range(arr.shape[0])]
        for i, name in enumerate(files):
            with tifffile.TiffFile(out / split / name) as tif:
                assert len(tif.pages) == 1
                img = tif.asarray()
            assert img.dtype == np.float32 and img.shape == MAP_SHAPE
            np.testing.assert_array_equal(img, arr[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["domain_C"]  # no temp leftovers


def test_write_domain_is_byte_identical_and_replaces(tmp_path: Path) -> None:
    write_domain("A", TINY, tmp_path / "one")
    write_domain("A", TINY, tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.tiff"))
    assert len(files) == TINY.n_train + TINY.n_test_good + TINY.n_test_fault
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()

    stale = tmp_path / "two" / "test" / "good" / "999999.tiff"
    stale.write_bytes(b"old")
    other = dataclasses.replace(TINY, seed=TINY.seed + 1, n_test_good=2)
    write_domain("A", other, tmp_path / "two")
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "two" / "test" / "good").iterdir()) == [
        "000000.tiff",
        "000001.tiff",
    ]
    rel = Path("train/good/000000.tiff")
    assert (tmp_path / "one" / rel).read_bytes() != (tmp_path / "two" / rel).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_generation_is_deterministic_per_seed_and_domain() -> None:
    a = generate_domain_with_truth("B", TINY)
    b = generate_domain_with_truth("B", TINY)
    for split in SPLITS:
        np.testing.assert_array_equal(a.maps[split], b.maps[split])
    np.testing.assert_array_equal(a.fault_masks, b.fault_masks)
    c = generate_domain("B", dataclasses.replace(TINY, seed=TINY.seed + 1))
    d = generate_domain("D", TINY)
    for split in SPLITS:
        assert not np.array_equal(a.maps[split], c[split])
        assert not np.array_equal(a.maps[split], d[split])


def test_unknown_domain_is_an_input_error() -> None:
    with pytest.raises(InputError, match="domain 'E'"):
        generate_domain("E", TINY)


def test_warm_half_is_a_step_at_the_middle() -> None:
    assert warm_half(4).tolist() == [False, False, True, True]
    assert warm_half(5).tolist() == [False, False, False, True, True]  # index < n/2 is cold


# --- intensity facts --------------------------------------------------------------------------


def test_train_is_min_max_scaled_and_test_can_exceed_one(
    domains: dict[str, SynthDomain],
) -> None:
    for d, sd in domains.items():
        train = sd.maps["train/good"]
        assert train.min() >= 0.0 and train.max() == pytest.approx(1.0, abs=1e-6), d
        assert 0.95 <= sd.scale <= 1.0, d  # the soft cap keeps the scale near the ceiling
    assert domains["C"].maps["test/fault"].max() > 1.5
    assert domains["A"].maps["test/fault"].max() > 1.0
    assert domains["B"].maps["test/fault"].max() < 1.0  # B's faults stay below train max


@pytest.mark.parametrize("domain", DOMAINS)
def test_split_means_and_sds_match_the_facts(domains: dict[str, SynthDomain], domain: str) -> None:
    for split, (mean, sd) in zip(SPLITS, SPLIT_FACTS[domain], strict=True):
        arr = domains[domain].maps[split]
        assert abs(arr.mean() - mean) <= 0.03, (split, arr.mean(), mean)
        assert abs(arr.std() - sd) <= 0.02, (split, arr.std(), sd)


@pytest.mark.parametrize("domain", DOMAINS)
def test_warm_over_cold_ratios(domains: dict[str, SynthDomain], domain: str) -> None:
    good = domains[domain].maps["test/good"]
    warm = warm_half(len(good))
    means = good.mean(axis=(1, 2))
    spread = _percentile(good, 95) - _percentile(good, 5)
    assert 1.3 <= means[warm].mean() / means[~warm].mean() <= 1.55
    assert 1.4 <= spread[warm].mean() / spread[~warm].mean() <= 1.8


@pytest.mark.parametrize("domain", DOMAINS)
def test_condition_is_a_step_not_a_drift(domains: dict[str, SynthDomain], domain: str) -> None:
    means = domains[domain].maps["test/good"].mean(axis=(1, 2))
    cold, warm = np.split(means, 2)
    gap = warm.mean() - cold.mean()
    assert warm[:20].mean() - cold[-20:].mean() > 0.7 * gap  # the jump sits at n/2
    for half in (cold, warm):  # and neither half drifts (about 5 sd of noise allowed)
        first, second = np.split(half, 2)
        assert abs(second.mean() - first.mean()) < 0.35 * gap


def test_domain_c_group_statistics(domains: dict[str, SynthDomain]) -> None:
    sd = domains["C"]
    for (split, is_warm), (mean, std, p95) in C_GROUPS.items():
        arr = sd.maps[split][warm_half(len(sd.maps[split])) == is_warm]
        assert abs(arr.mean(axis=(1, 2)).mean() - mean) <= 0.02, (split, is_warm)
        assert abs(arr.std(axis=(1, 2)).mean() - std) <= 0.015, (split, is_warm)
        assert abs(_percentile(arr, 95).mean() - p95) <= 0.03, (split, is_warm)
        share_above_one = (arr.max(axis=(1, 2)) > 1.0).mean()
        if is_warm and split == "test/fault":
            assert share_above_one >= 0.9
        elif not is_warm:
            assert share_above_one == 0.0, split


# --- faults -----------------------------------------------------------------------------------


def test_fault_bands_are_thin_horizontal_and_c_cold_ones_broken(
    domains: dict[str, SynthDomain],
) -> None:
    for d, sd in domains.items():
        for mask in sd.fault_masks:
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            assert 1 <= rows.size <= 3 and np.all(np.diff(rows) == 1), d
            span = cols[-1] - cols[0] + 1
            assert 10 <= span <= 80 and span > rows.size, d
            assert (mask[rows] == mask[rows[0]]).all(), d  # same columns on every band row
    c = domains["C"]
    cold = ~warm_half(CFG.n_test_fault)
    pieces = np.array([_runs(m[m.any(axis=1)][0]) for m in c.fault_masks[cold]])
    assert (pieces >= 2).mean() >= 0.9 and pieces.max() <= 4


def test_c_cold_fault_rows_are_faint(domains: dict[str, SynthDomain]) -> None:
    """A C cold fault row is ~1.3x its neighbours, about +0.05 scaled (HDMAP_FACTS)."""
    sd = domains["C"]
    cold = ~warm_half(CFG.n_test_fault)
    ratios, diffs = [], []
    for img, mask in zip(sd.maps["test/fault"][cold], sd.fault_masks[cold], strict=True):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = mask[rows[0]]
        neighbours = img[[rows[0] - 1, rows[-1] + 1]][:, cols].mean()
        band = img[rows][:, cols].mean()
        ratios.append(band / neighbours)
        diffs.append(band - neighbours)
    assert 1.15 <= np.median(ratios) <= 1.6
    assert 0.02 <= np.median(diffs) <= 0.1


def test_p90_gate_separates_conditions_like_the_user_saw(
    domains: dict[str, SynthDomain],
) -> None:
    for d, sd in domains.items():
        maps = np.concatenate([sd.maps["test/good"], sd.maps["test/fault"]])
        warm = np.concatenate([warm_half(CFG.n_test_good), warm_half(CFG.n_test_fault)])
        acc = _best_threshold_accuracy(_percentile(maps, 90), warm)
        if d in ("A", "B"):
            assert acc >= 0.98, (d, acc)
        else:
            assert 0.88 <= acc <= 0.98, (d, acc)


# --- texture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_warm_differs_in_structure_not_only_level(
    domains: dict[str, SynthDomain], domain: str
) -> None:
    good = domains[domain].maps["test/good"]
    warm = warm_half(len(good))
    cold_spec = _mean_spectrum(good[~warm])
    # the measure is blind to level: a rescaled cold map gives the same spectrum
    assert np.corrcoef(cold_spec, _mean_spectrum(1.41 * good[~warm] + 0.02))[0, 1] > 0.999
    # and stable: two disjoint halves of the cold maps agree
    a, b = np.split(good[~warm], 2)
    assert np.corrcoef(_mean_spectrum(a), _mean_spectrum(b))[0, 1] > 0.97
    assert np.corrcoef(cold_spec, _mean_spectrum(good[warm]))[0, 1] < 0.95


def test_angular_power_entropy_reference_values() -> None:
    rng = np.random.default_rng(0)
    assert angular_power_entropy(rng.standard_normal((20, *MAP_SHAPE))).mean() > 0.95
    y = np.arange(MAP_SHAPE[0])[:, None] * np.ones(MAP_SHAPE[1])
    stripes = np.cos(2 * np.pi * 0.2 * y) + 5.0  # horizontal stripes: one direction
    assert float(angular_power_entropy(stripes)) < 0.05


def test_ape_orders_domains_and_faults_like_the_facts(domains: dict[str, SynthDomain]) -> None:
    normal = {d: angular_power_entropy(sd.maps["test/good"]).mean() for d, sd in domains.items()}
    fault = {d: angular_power_entropy(sd.maps["test/fault"]).mean() for d, sd in domains.items()}
    assert normal["C"] > normal["A"] > normal["B"]
    for d in DOMAINS:
        assert fault[d] > normal[d], d


def test_profiles_are_frozen_and_complete() -> None:
    assert set(DOMAIN_PROFILES) == set(DOMAINS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DOMAIN_PROFILES["C"].noise = 0.0  # type: ignore[misc]
    assert synth.TRAIN_CEILING == 1.0
