"""Streaming reads of the feature cache (bounded-memory scoring) equal whole-file reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.features.cache import FeatureReader, open_feature_writer, read_features
from hdmap_ad.features.descriptors import DescriptorConfig, DescriptorSource


def _cache(path: Path, n: int, shape: tuple[int, int, int], group: int, seed: int) -> np.ndarray:
    feats = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    with open_feature_writer(path, shape, {"layer": path.stem}) as writer:
        for s in range(0, n, group):
            writer.write([f"m{i:03d}" for i in range(s, min(s + group, n))], feats[s : s + group])
    return feats


def test_reader_returns_requested_rows_in_order_across_row_groups(tmp_path: Path) -> None:
    feats = _cache(tmp_path / "a.parquet", 23, (2, 3, 4), group=5, seed=0)
    reader = FeatureReader(tmp_path / "a.parquet")
    assert len(reader) == 23
    order = [f"m{i:03d}" for i in (22, 0, 7, 6, 5, 13, 0)]
    np.testing.assert_array_equal(reader.rows(order), feats[[22, 0, 7, 6, 5, 13, 0]])
    with pytest.raises(InputError, match=r"a\.parquet: 1 image id\(s\) not in the feature cache"):
        reader.rows(["m000", "nope"])
    with pytest.raises(InputError, match="feature cache not found"):
        FeatureReader(tmp_path / "missing.parquet")


def test_streaming_descriptor_source_equals_in_memory(tmp_path: Path) -> None:
    _cache(tmp_path / "fine.parquet", 17, (4, 6, 3), group=4, seed=1)
    _cache(tmp_path / "coarse.parquet", 17, (2, 3, 5), group=4, seed=2)
    paths = [str(tmp_path / "fine.parquet"), str(tmp_path / "coarse.parquet")]
    ids = [f"m{i:03d}" for i in (3, 1, 16, 8, 9, 0)]
    desc = DescriptorConfig(project_dim=4)
    whole = DescriptorSource(paths, ids, desc)
    stream = DescriptorSource(paths, ids, desc, stream=True)
    assert len(stream) == len(whole) == 6
    np.testing.assert_array_equal(stream(), whole())
    sel = np.array([4, 0, 2])
    np.testing.assert_array_equal(stream(sel), whole(sel))
    assert read_features(paths[0], ids)[1].shape == (6, 4, 6, 3)
    with pytest.raises(InputError, match="not in the feature cache"):
        DescriptorSource(paths, ["m000", "zzz"], desc, stream=True)


def test_reader_names_the_file_when_a_row_group_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    _cache(path, 8, (2, 2, 3), group=4, seed=3)
    reader = FeatureReader(path)  # header and footer intact
    raw = bytearray(path.read_bytes())
    raw[100:400] = bytes(300)  # zero out the first data pages
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"c\.parquet: not a readable Parquet file"):
        FeatureReader(path).rows(["m000"])
    assert len(reader) == 8
