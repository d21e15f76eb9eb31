"""The method contract, checked for every registered method, and the gate around it.

Every method: fit -> score shapes and dtypes, determinism, batch independence, save/load round
trip (identical scores), a corrupt or mismatched stored model is a named error, and every gate
mode scores through it. PatchCore additionally reproduces, value for value, what the
pre-registry code computed (``tests/data/patchcore_regression.npz``, written by the code of
commit 863ee2e on the same seeded descriptors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.methods import METHODS, FitContext, load_model, save_model
from hdmap_ad.methods.base import state_file
from hdmap_ad.methods.training import TrainOptions

#: methods whose network reads the map (STFPM) need teacher features with the map folded on
#: (a layout): their contract runs in their own module on such descriptors
#: (tests/test_method_stfpm.py)
ON_DESCRIPTORS = sorted(name for name, m in METHODS.items() if not m.reads_map)


def _options(method):
    """The method's defaults, shortened for trained methods (its ``smoke_options``)."""
    return method.Options(**method.smoke_options)


def test_every_trained_method_has_smoke_options_that_build_its_options():
    """A trained method's defaults train at the benchmark's full settings: the contract and
    smoke runs need its few-epoch options, which must be valid options of its own."""
    from hdmap_ad.options import build_options

    trained = [m for m in METHODS.values() if issubclass(m.Options, TrainOptions)]
    assert {m.name for m in trained} >= {"ae", "fastflow", "supersimplenet", "unet_ae", "vae"}
    for method in trained:
        assert method.smoke_options, f"{method.name}: no smoke_options"
        opts = build_options(method.Options, dict(method.smoke_options), method.name)
        assert opts == _options(method) and opts != method.Options()
    for method in METHODS.values():  # untrained methods fit in seconds with their defaults
        if not issubclass(method.Options, TrainOptions):
            assert not method.smoke_options, method.name

DATA = Path(__file__).parent / "data"
N_REF, N_TEST, H, W, D = 12, 10, 5, 7, 16


def _arrays(n_ref: int = N_REF, band: float = 3.0, grid: tuple[int, int] = (H, W),
            row: int = 2):
    h, w = grid
    rng = np.random.default_rng(123)
    ref = rng.standard_normal((n_ref, h, w, D)).astype(np.float32)
    ref[n_ref // 2 :] += 0.7
    test = rng.standard_normal((N_TEST, h, w, D)).astype(np.float32)
    test[5:] += 0.7
    test[[2, 7], row, 1 : w - 2] += band
    return ref, test


BAND_GRID, BAND_ROW = (8, 12), 5


# Session-scoped (made once per test process), not module-scoped: a module-scoped fixture
# would keep this file whole on one pytest worker (tests/conftest.py).
@pytest.fixture(scope="session")
def detectable():
    """More references, a larger grid and a stronger band: every method, image-level ones
    included, must rank the fault maps first within their condition."""
    return _arrays(n_ref=40, band=6.0, grid=BAND_GRID, row=BAND_ROW)


@pytest.fixture(scope="session")
def arrays():
    """Seeded reference/test descriptors with cold/warm offsets and a horizontal fault band
    (the same recipe as the regression file)."""
    ref, test = _arrays()
    refs = pd.DataFrame({"image_id": [f"r{i}" for i in range(N_REF)],
                         "condition": ["cold"] * 6 + ["warm"] * 6,
                         "p90": np.r_[np.linspace(0.2, 0.3, 6), np.linspace(0.5, 0.6, 6)]})
    tests = pd.DataFrame({"image_id": [f"t{i}" for i in range(N_TEST)],
                          "condition": ["cold"] * 5 + ["warm"] * 5,
                          "p90": np.r_[np.linspace(0.2, 0.45, 5), np.linspace(0.35, 0.6, 5)]})
    return ref, test, refs, tests


def _exp(gate: str, method: dict, **extra) -> ExperimentConfig:
    # 3 folds: 6 references per condition deal into the same folds under the old per-sub-bank
    # scheme and today's round robin over sub-models (they differ only when a sub-model's
    # count is not a multiple of the folds: the budget-1 bug)
    return ExperimentConfig.from_dict("g", {
        "backbone": "b", "layers": ["x"], "gate": gate, "method": method,
        "references": {"protocol": "test_good_holdout"}, "seed": 1, "deploy_folds": 3,
        "gate_margin": 0.05, **extra})


@pytest.mark.parametrize("name", ON_DESCRIPTORS)
def test_contract_fit_score_save_load(name, detectable, tmp_path):
    ref, test = detectable
    method = METHODS[name]
    opts = _options(method)
    ctx = FitContext(seed=3, where="experiments.e.method")
    model = method.fit(ref, opts, ctx)
    s, ps = model.score(test)
    assert s.shape == (N_TEST,) and s.dtype == np.float32 and np.isfinite(s).all()
    assert ps.shape == (N_TEST, *BAND_GRID) and ps.dtype == np.float32
    assert np.isfinite(ps).all()
    # deterministic, and a map's score does not depend on its batch
    s2, ps2 = method.fit(ref, opts, ctx).score(test)
    assert np.array_equal(s, s2) and np.array_equal(ps, ps2)
    one = np.concatenate([model.score(test[i : i + 1])[0] for i in range(N_TEST)])
    np.testing.assert_allclose(one, s, rtol=1e-5, atol=1e-6)
    # fit on one condition's references, the fault map ranks first among that condition's
    # test maps (pooled-feature methods cannot tell a band from the warm offset in a mixed fit)
    cs, cps = method.fit(ref[: len(ref) // 2], opts, ctx).score(test[:5])
    assert cs[2] > np.delete(cs, 2).max()
    if method.localizes:  # the band's row holds the worst patch (ties: pooled cells)
        assert cps[2, BAND_ROW].max() == cps[2].max()
        assert cps[2].max() > cps[np.r_[0, 1, 3, 4]].max()
    # save / load round trip
    save_model(tmp_path, "cold", method, opts, model)
    again = load_model(tmp_path, "cold", method, opts, ctx)
    s3, ps3 = again.score(test)
    assert np.array_equal(s, s3) and np.array_equal(ps, ps3)


@pytest.mark.parametrize("name", ON_DESCRIPTORS)
def test_stored_model_errors_are_named(name, arrays, tmp_path):
    ref, _, _, _ = arrays
    method = METHODS[name]
    opts = _options(method)
    ctx = FitContext(where="experiments.e.method")
    save_model(tmp_path, "mixed", method, opts, method.fit(ref, opts, ctx))
    other = next((m for m in METHODS.values() if m.name != name), None)
    if other is not None:
        with pytest.raises(InputError, match=f"written by method '{name}'"):
            load_model(tmp_path, "mixed", other, other.Options(), ctx)
    stored = state_file(tmp_path, "mixed")
    stored.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=rf"{stored.name}: cannot read"):
        load_model(tmp_path, "mixed", method, opts, ctx)
    with pytest.raises(InputError, match=r"warm.json: sub-model description not found"):
        load_model(tmp_path, "warm", method, opts, ctx)


ALL_GATES = ("mixed", "p90", "oracle", "both-min", "fallback", "random", "inverse")
# The gates route maps the same way whatever the method; trained methods (each fit trains a
# network, and the reference folds train more) run the two that exercise one and both
# sub-models per map, to keep the suite short.
GATE_CASES = [(name, gate) for name in ON_DESCRIPTORS
              for gate in (("mixed", "both-min")
                           if isinstance(METHODS[name].Options(), TrainOptions) else ALL_GATES)]


@pytest.mark.parametrize(("name", "gate"), GATE_CASES)
def test_every_gate_runs_every_method(name, gate, arrays):
    from hdmap_ad.banks.bank import build_bank
    from hdmap_ad.scoring.score import experiment_decisions, reference_cv_scores, score_routed

    ref, test, refs, tests = arrays
    exp = _exp(gate, {"name": name, **METHODS[name].smoke_options})
    models, fit, assignment = build_bank(refs, ref, exp)
    assert set(models) == ({"mixed"} if gate == "mixed" else {"cold", "warm"})
    dec = experiment_decisions(exp, tests, fit)
    s, ps, used = score_routed(lambda sel: test[sel], dec, models)
    assert np.isfinite(s).all() and set(used) <= set(models)
    ok, cv, *_ = reference_cv_scores(refs, ref, exp, fit)
    assert ok.all() and np.isfinite(cv).all()


@pytest.mark.parametrize("gate", ["mixed", "p90", "oracle", "both-min", "fallback"])
def test_patchcore_reproduces_the_pre_registry_scores(gate, arrays):
    from hdmap_ad.banks.bank import build_bank
    from hdmap_ad.scoring.score import experiment_decisions, reference_cv_scores, score_routed

    gold = np.load(DATA / "patchcore_regression.npz")
    ref, test, refs, tests = arrays
    exp = _exp(gate, {"name": "patchcore", "coreset_ratio": 0.3, "num_neighbors": 3})
    models, fit, _ = build_bank(refs, ref, exp)
    for k, m in models.items():
        np.testing.assert_array_equal(m.bank, gold[f"{gate}_bank_{k}"])
    s, ps, used = score_routed(lambda sel: test[sel], experiment_decisions(exp, tests, fit),
                               models)
    np.testing.assert_array_equal(s, gold[f"{gate}_scores"])
    np.testing.assert_array_equal(ps, gold[f"{gate}_patches"])
    assert used.astype(str).tolist() == gold[f"{gate}_used"].tolist()
    ok, cv, cvp, _, cv_used = reference_cv_scores(refs, ref, exp, fit)
    assert ok.all()
    np.testing.assert_array_equal(cv, gold[f"{gate}_cv_scores"])
    np.testing.assert_array_equal(cvp, gold[f"{gate}_cv_patches"])
    assert cv_used.astype(str).tolist() == gold[f"{gate}_cv_used"].tolist()


@pytest.mark.parametrize("n_per_condition", [1, 2])
@pytest.mark.parametrize("gate", ["p90", "oracle", "both-min"])
def test_tiny_budgets_give_a_real_deployable_threshold_or_none(n_per_condition, gate, arrays):
    """With two references per condition, every reference is scored by a model fit without it
    (the fold bug gave budget-1 gated runs zero-initialised scores, threshold 0). With one,
    no model of its own condition can score a held-out reference: no reference is scored, so
    there is no deployable threshold (never one from the other condition's model)."""
    from hdmap_ad.banks.bank import build_bank
    from hdmap_ad.scoring.score import reference_cv_scores

    ref, _, refs, _ = arrays
    pick = list(range(n_per_condition)) + list(range(6, 6 + n_per_condition))
    sub_refs, sub_desc = refs.iloc[pick].reset_index(drop=True), ref[pick]
    exp = _exp(gate, {"name": "patchcore", "coreset_ratio": 0.5, "num_neighbors": 1})
    _, fit, _ = build_bank(sub_refs, sub_desc, exp)
    ok, cv, *_ = reference_cv_scores(sub_refs, sub_desc, exp, fit)
    if n_per_condition == 1:
        assert not ok.any()
    else:
        assert ok.all() and (cv > 0).all()


def test_method_options_are_checked_and_named():
    with pytest.raises(InputError, match=r"experiments.g.method.name: unknown method 'nope'"):
        _exp("mixed", {"name": "nope"})
    with pytest.raises(InputError, match=r"experiments.g.method.num_neighbors: 9.0 is not an "
                                         r"integer"):
        _exp("mixed", {"name": "patchcore", "num_neighbors": 9.0})
    with pytest.raises(InputError, match=r"experiments.g.method.radius: unknown option"):
        _exp("mixed", {"name": "patchcore", "radius": 2})
    with pytest.raises(InputError, match=r"method.search.index: 'annoy' is not one of"):
        _exp("mixed", {"name": "patchcore", "search": {"index": "annoy"}})
    exp = _exp("mixed", {"name": "patchcore", "coreset_ratio": 0.2})
    assert exp.to_dict()["method"]["coreset_ratio"] == 0.2
    assert ExperimentConfig.from_dict("g", {k: v for k, v in exp.to_dict().items()
                                            if k != "key"}) == exp


def test_parsing_params_imports_neither_torch_nor_faiss():
    import subprocess
    import sys

    code = ("import sys; from hdmap_ad.config import load_params; "
            "load_params('params.yaml'); "
            "print(sorted(m for m in ('torch', 'faiss', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert out.strip() == "[]"


def test_guide_method_table_is_the_registry_table():
    from hdmap_ad.methods import methods_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "methods.md").read_text()
    start, end = "<!-- methods-table: start -->\n", "<!-- methods-table: end -->"
    table = page[page.index(start) + len(start) : page.index(end)]
    assert table == methods_markdown(), (
        "run `make readme-methods` to refresh the table in docs/guide/methods.md")
