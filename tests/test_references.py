
import numpy as np
import pandas as pd
import pytest
import tifffile

from hdmap_ad.banks.references import scored_rows, select_references, threshold_unavailable
from hdmap_ad.config import ReferenceConfig
from hdmap_ad.data.manifest import read_manifest, scan_domain, write_manifest
from hdmap_ad.errors import InputError
from tests.conftest import write_domain


def _manifest(n_train=10, n_test=8) -> pd.DataFrame:
    rows = []
    for split, label, n in (("train", "good", n_train), ("test", "good", n_test),
                            ("test", "fault", n_test)):
        for i in range(n):
            cond = "unknown" if split == "train" else ("cold" if i < n // 2 else "warm")
            rows.append({"image_id": f"{split}/{label}/{i:06d}", "split": split, "label": label,
                         "index": i, "condition": cond, "p90": 0.2 + 0.1 * (cond == "warm")})
    return pd.DataFrame(rows)


def test_holdout_extremes_take_lowest_cold_and_highest_warm_and_are_not_scored():
    m = _manifest()
    cfg = ReferenceConfig(protocol="test_good_holdout", n_cold=2, n_warm=2, pick="extremes")
    refs = select_references(m, cfg, "x")
    assert refs.image_id.tolist() == [f"test/good/{i:06d}" for i in (0, 1, 6, 7)]
    scored = scored_rows(m, refs, cfg.protocol)
    assert len(scored) == 16 - 4 and not set(refs.image_id) & set(scored.image_id)


def test_user_leaky_rescores_references():
    m = _manifest()
    cfg = ReferenceConfig(protocol="user_leaky", n_cold=2, n_warm=2, pick="random")
    refs = select_references(m, cfg, "x")
    assert refs.image_id.tolist() == [f"test/good/{i:06d}" for i in (0, 1, 6, 7)]
    assert len(scored_rows(m, refs, cfg.protocol)) == 16


def test_random_pick_is_seeded_and_within_condition():
    m = _manifest(n_test=40)
    cfg = ReferenceConfig(protocol="test_good_holdout", n_cold=3, n_warm=3, seed=5)
    a, b = select_references(m, cfg, "x"), select_references(m, cfg, "x")
    assert a.image_id.tolist() == b.image_id.tolist()
    assert (a.condition == "cold").sum() == 3 and (a.condition == "warm").sum() == 3


def test_train_and_full_protocols():
    m = _manifest()
    refs = select_references(m, ReferenceConfig(protocol="train", k=4, seed=1), "x")
    assert len(refs) == 4 and (refs.split == "train").all()
    assert len(select_references(m, ReferenceConfig(protocol="full"), "x")) == 10


def test_too_many_references_names_the_key():
    with pytest.raises(InputError, match=r"experiments\.g\.references\.n_cold"):
        select_references(_manifest(), ReferenceConfig(n_cold=5, n_warm=1),
                          "experiments.g.references")


def test_manifest_scan_and_round_trip(tmp_path):
    root = write_domain(tmp_path / "domain_X")
    m = scan_domain(root)
    assert len(m) == 3 + 4 + 4
    test = m[m.split == "test"]
    assert test.groupby("label").condition.apply(list).to_dict() == {
        "fault": ["cold", "cold", "warm", "warm"], "good": ["cold", "cold", "warm", "warm"]}
    assert (m[m.split == "train"].condition == "unknown").all()
    row = m.iloc[0]
    arr = tifffile.imread(row.path)
    assert np.isclose(row.p90, np.percentile(arr, 90)) and np.isclose(row["max"], arr.max())
    write_manifest(m, tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.parquet"), m)


def test_manifest_rejects_odd_test_count_and_shape_mismatch(tmp_path):
    with pytest.raises(InputError, match="even count"):
        scan_domain(write_domain(tmp_path / "odd", n_test=3))
    root = write_domain(tmp_path / "shape")
    tifffile.imwrite(root / "test/good/000001.tiff", np.zeros((30, 95), np.float32))
    with pytest.raises(InputError, match=r"000001\.tiff: shape"):
        scan_domain(root)


def test_deployable_threshold_needs_two_references_per_sub_model():
    # budget 1 per condition, gated: no held-out fold inside a condition
    why = threshold_unavailable(["cold", "warm"], deploy_folds=5)
    assert why is not None and "'cold' has 1, 'warm' has 1" in why
    assert "at least 2 references per sub-model" in why
    assert threshold_unavailable(["cold", "cold", "warm"], 5).startswith("sub-model 'warm'")
    # the same two references in one mixed bank can be held out of each other
    assert threshold_unavailable(["mixed", "mixed"], 5) is None
    assert threshold_unavailable(["cold", "cold", "warm", "warm"], 5) is None
    assert threshold_unavailable(["mixed"], 5).startswith("1 reference")
    assert threshold_unavailable(["mixed"] * 8, 0) == "deploy_folds is 0"

