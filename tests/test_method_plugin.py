"""A method added at run time (``hdmap_ad.methods.register_method``): one class, its options
dataclass and one registration, and params validation, the schema and the contract's fit /
save / load / score calls take it like a built-in (docs/howto/add-method.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import yaml

from hdmap_ad.errors import InputError
from hdmap_ad.methods import (
    METHODS,
    FitContext,
    FittedModel,
    Method,
    get_method,
    load_model,
    method_schema,
    register_method,
    save_model,
    unregister_method,
)
from hdmap_ad.methods.base import check_descriptors
from tests.conftest import REPO


@dataclass(frozen=True)
class L2ToMeanOptions:
    reduce: str = field(default="max", metadata={
        "enum": ("max", "mean"), "doc": "image score: the worst patch (max) or the mean"})


class L2ToMeanModel(FittedModel):
    """The references' mean patch descriptor ``(D,)`` float32."""

    def __init__(self, mean: np.ndarray, options: L2ToMeanOptions) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.options = options

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        patch = np.linalg.norm(np.asarray(desc, np.float32) - self.mean, axis=-1)
        reduce = np.max if self.options.reduce == "max" else np.mean
        return reduce(patch, axis=(1, 2)).astype(np.float32), patch.astype(np.float32)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean": self.mean}, {"dim": int(self.mean.shape[0])}


class L2ToMean(Method):
    """A toy method: patch score = Euclidean distance of the patch descriptor to the mean of
    every reference patch descriptor; image score = the max (or mean) over patches."""

    name = "l2-to-mean"
    Options = L2ToMeanOptions
    summary = "toy: distance of each patch descriptor to the references' mean"

    def fit(self, desc: np.ndarray, options: L2ToMeanOptions, ctx: FitContext) -> L2ToMeanModel:
        desc = check_descriptors(desc, ctx.where)
        return L2ToMeanModel(desc.reshape(-1, desc.shape[-1]).mean(axis=0), options)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: L2ToMeanOptions, ctx: FitContext) -> L2ToMeanModel:
        return L2ToMeanModel(arrays["mean"], options)


@pytest.fixture
def l2_to_mean():
    method = register_method(L2ToMean())
    yield method
    unregister_method(method.name)
    assert method.name not in METHODS


def _params_with(method: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The repo's params.yaml with its first experiment's ``method`` block replaced."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    name = next(iter(raw["experiments"]))
    raw["experiments"][name]["method"] = method
    return name, raw


def test_a_method_registered_at_run_time_passes_params_and_joins_the_schema(l2_to_mean):
    from hdmap_ad.config import params_schema, parse_params

    name, raw = _params_with({"name": "l2-to-mean", "reduce": "mean"})
    unregister_method(l2_to_mean.name)  # unregistered, the same params are refused
    assert "l2-to-mean" not in method_schema()["properties"]["name"]["enum"]
    with pytest.raises(InputError, match=f"experiments.{name}.method.name: 'l2-to-mean' is "
                                         "not one of"):
        parse_params(raw)
    with pytest.raises(InputError, match=r"method.name: unknown method 'l2-to-mean'"):
        get_method("l2-to-mean")

    register_method(l2_to_mean)
    assert get_method("l2-to-mean") is l2_to_mean
    assert "l2-to-mean" in method_schema()["properties"]["name"]["enum"]
    schema = params_schema()["definitions"]["experiment"]["properties"]["method"]
    assert "l2-to-mean" in schema["properties"]["name"]["enum"]
    exp = parse_params(raw).experiments[name]
    assert exp.method.name == "l2-to-mean" and exp.method.method is l2_to_mean
    assert exp.method.options == L2ToMeanOptions(reduce="mean")
    # its options are checked as strictly as a built-in's, named by their params key
    _, bad = _params_with({"name": "l2-to-mean", "reduce": "median"})
    with pytest.raises(InputError, match=rf"experiments.{name}.method.reduce: 'median'"):
        parse_params(bad)
    with pytest.raises(ValueError, match="registered already"):
        register_method(L2ToMean())


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_a_method_registered_at_run_time_fits_saves_loads_and_scores(l2_to_mean, reduce,
                                                                     tmp_path):
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((6, 4, 5, 3)).astype(np.float32)
    test = rng.standard_normal((3, 4, 5, 3)).astype(np.float32)
    method = get_method("l2-to-mean")
    opts = method.Options(reduce=reduce)
    ctx = FitContext(seed=0, where="experiments.e.method")
    model = method.fit(ref, opts, ctx)
    save_model(tmp_path, "mixed", method, opts, model)
    s, ps = load_model(tmp_path, "mixed", method, opts, ctx).score(test)
    assert s.shape == (3,) and ps.shape == (3, 4, 5)
    assert s.dtype == np.float32 and ps.dtype == np.float32

    # what the toy defines, patch by patch in float64: float32 rounding apart (rtol 1e-5)
    mean = ref.reshape(-1, 3).astype(np.float64).mean(axis=0)
    want_patches = np.array([[[np.sqrt(((test[b, i, j] - mean) ** 2).sum()) for j in range(5)]
                              for i in range(4)] for b in range(3)])
    want = [p.max() if reduce == "max" else p.mean() for p in want_patches]
    np.testing.assert_allclose(ps, want_patches, rtol=1e-5)
    np.testing.assert_allclose(s, want, rtol=1e-5)
    # a reload scores exactly as the fitted model
    s0, ps0 = model.score(test)
    assert np.array_equal(s0, s) and np.array_equal(ps0, ps)
