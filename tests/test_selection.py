"""Selection without test labels (issue #28): validation recipes, ``select:`` grids, the
choice and its report, and one tiny Snakemake run of the selected JSON."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from hdmap_ad.config import parse_params, read_params_yaml
from hdmap_ad.data.manifest import scan_domain, write_manifest
from hdmap_ad.errors import InputError
from hdmap_ad.selection.choose import UPPER_BOUND_NOTE, choose_point, selection_report
from hdmap_ad.validation import RECIPES, ValidationConfig
from hdmap_ad.validation.build import build_validation_set, set_folds
from hdmap_ad.validation.recipes import contrast, perlin_noise
from tests.conftest import (
    REPO,
    Replace,
    copy_project,
    dry_run_jobs,
    project_env,
    tiny_experiment,
    tiny_params,
    write_domain,
)


def _raw() -> dict:
    """The demo's params with a validation set and a small selection grid."""
    raw = read_params_yaml(REPO / "params.yaml")
    raw.setdefault("validation", {})["band_test"] = {"recipe": "noise_band"}
    raw["experiments"]["sel"] = {**copy.deepcopy(raw["experiments"]["gated"]),
                                 "select": {"validation": "band_test",
                                            "coreset_ratio": [0.05, 0.1]}}
    raw["targets"].pop("selections", None)
    return raw


# --- recipes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("channels", [0, 3])
def test_recipe_changes_only_its_mask_and_is_seeded(name, channels):
    rng = np.random.default_rng(0)
    shape = (31, 95) + ((channels,) if channels else ())
    image = rng.random(shape, dtype=np.float32) + 0.1
    donor = rng.random(shape, dtype=np.float32) + 0.1
    recipe = RECIPES[name]
    opts = recipe.Options()
    out, mask = recipe.make(image, donor, 0.8, opts, np.random.default_rng(5))
    again, mask2 = recipe.make(image, donor, 0.8, opts, np.random.default_rng(5))
    assert out.dtype == np.float32 and out.shape == image.shape and mask.shape == (31, 95)
    assert np.array_equal(out, again) and np.array_equal(mask, mask2)
    assert mask.any() and not mask.all()
    assert np.array_equal(out[~mask], image[~mask])  # nothing outside the mask moves
    assert (out >= 0).all()
    assert contrast(image, out, mask) > 0
    # a stronger draw changes the masked pixels more (same rng: same mask)
    weak, _ = recipe.make(image, donor, 0.2, opts, np.random.default_rng(5))
    assert contrast(image, weak, mask) < contrast(image, out, mask)


def test_noise_band_is_a_horizontal_band_of_raised_amplitude():
    image = np.full((31, 95), 0.3, dtype=np.float32)
    out, mask = RECIPES["noise_band"].make(image, image, 0.5, RECIPES["noise_band"].Options(),
                                           np.random.default_rng(1))
    rows = np.flatnonzero(mask.any(axis=1))
    assert 1 <= len(rows) <= 3 and np.all(np.diff(rows) == 1)
    cols = np.flatnonzero(mask.any(axis=0))
    assert 9 <= len(cols) <= 77 and np.all(np.diff(cols) == 1)
    assert (out[mask] > image[mask]).all()
    # the brightest row adds strength x level, as synth's fault plateau
    assert float((out - image).max()) == pytest.approx(0.5 * 0.3, rel=1e-5)


def test_perlin_noise_is_bounded_and_smooth():
    noise = perlin_noise((31, 95), (8, 8), np.random.default_rng(0))
    assert noise.shape == (31, 95) and np.abs(noise).max() <= 1.5
    assert np.abs(np.diff(noise, axis=1)).max() < 0.5  # gradient noise, not white noise


# --- the validation set -----------------------------------------------------------------


def _domain(tmp_path: Path) -> str:
    root = write_domain(tmp_path / "domain_C", n_test=8)
    path = tmp_path / "manifest.parquet"
    write_manifest(scan_domain(root), path)
    return str(path)


def _set_spec(recipe: str = "cutpaste", **refs) -> dict:
    cfg = ValidationConfig.from_dict("v", {"recipe": recipe, "strength": [0.2, 1.0],
                                           "per_reference": 2})
    return {"validation": cfg.to_dict(),
            "references": {"protocol": "test_good_holdout", "n_cold": 3, "n_warm": 3,
                           "pick": "random", "seed": 1, "k": 32, **refs},
            "gate": "p90", "deploy_folds": 4}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_validation_set_is_deterministic_and_made_from_held_out_references(tmp_path, recipe):
    manifest_path = _domain(tmp_path)
    spec = _set_spec(recipe)
    build_validation_set(spec, manifest_path, str(tmp_path / "a"), progress=False)
    build_validation_set(spec, manifest_path, str(tmp_path / "b"), progress=False)
    a = pd.read_parquet(tmp_path / "a" / "manifest.parquet")
    b = pd.read_parquet(tmp_path / "b" / "manifest.parquet")
    assert len(a) == 6 * 2
    for col in ("sha256", "source", "donor", "fold", "strength", "contrast", "condition"):
        assert a[col].tolist() == b[col].tolist(), col
    manifest = pd.read_parquet(manifest_path)
    refs, folds, assignment = set_folds(spec, manifest, "validation.v")
    fold_of = dict(zip(refs.image_id, folds.tolist(), strict=True))
    cond_of = dict(zip(refs.image_id, refs.condition, strict=True))
    test_ids = set(manifest.image_id[manifest.split == "test"]) - set(refs.image_id)
    for row in a.itertuples():
        # only references, and only those held out of the fold whose models score the map
        assert row.source in fold_of and row.source not in test_ids
        assert fold_of[row.source] == row.fold and cond_of[row.source] == row.condition
        if RECIPES[recipe].uses_donor:
            assert row.donor in fold_of and fold_of[row.donor] == row.fold
        else:
            assert row.donor == ""
        assert 0.2 <= row.strength <= 1.0
        assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256
    assert set(a.sub_model) == {"cold", "warm"}
    spec_out = json.loads((tmp_path / "a" / "spec.json").read_text())
    assert spec_out["validation"]["options"] == spec["validation"]["options"]
    # another seed: other anomalies from the same references
    spec["validation"]["seed"] = 1
    build_validation_set(spec, manifest_path, str(tmp_path / "c"), progress=False)
    c = pd.read_parquet(tmp_path / "c" / "manifest.parquet")
    assert c.source.tolist() == a.source.tolist() and c.sha256.tolist() != a.sha256.tolist()


def test_validation_set_needs_held_out_folds(tmp_path):
    manifest_path = _domain(tmp_path)
    spec = _set_spec(n_cold=1, n_warm=1)
    with pytest.raises(InputError, match="no held-out reference fold"):
        build_validation_set(spec, manifest_path, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


# --- params -------------------------------------------------------------------------


def test_select_grid_expands_into_experiments_and_reuses_identical_ones():
    params = parse_params(_raw())
    plan = params.selections["sel"]
    keys = [p.key for p in plan.points]
    # 0.1 is the demo's `gated` experiment itself: no second fit
    assert keys == ["sel_coreset_ratio-0p05", "gated"]
    assert plan.default == 1 and plan.axes == ("coreset_ratio",)
    assert params.experiments["sel_coreset_ratio-0p05"].method.options.coreset_ratio == 0.05
    # a point of another grid that is the same experiment is that grid's (one fit)
    raw = _raw()
    raw["experiments"]["sel"]["select"]["coreset_ratio"] = [0.01]
    again = parse_params(raw).selections["sel"].points[0].key
    assert again == parse_params(raw).selections["gated_select"].points[0].key
    assert "sel" not in params.experiments and "sel" not in params.target_experiments
    assert params.target_selections == ("gated_select", "sel")  # default: every grid
    assert plan.set_spec["validation"]["recipe"] == "noise_band"
    assert plan.set_id.startswith("band_test-")
    # a recipe change is a new set (content-keyed); the grid's experiments stay the same
    raw = _raw()
    raw["validation"]["band_test"]["strength"] = [0.1, 0.3]
    other = parse_params(raw)
    assert other.selections["sel"].set_id != plan.set_id
    assert other.experiments == params.experiments


def test_select_grid_over_layers_and_methods():
    raw = _raw()
    raw["experiments"]["sel"]["select"] = {
        "validation": "band_test", "layers": [["blocks.2"], ["blocks.2", "blocks.4"]],
        "method": [{"name": "patchcore", "coreset_ratio": 0.1}, {"name": "dfm"}]}
    plan = parse_params(raw).selections["sel"]
    assert len(plan.points) == 4
    assert [p.key for p in plan.points][:2] == [
        "sel_layers-blocks2_method-patchcore-coreset_ratio0p1", "sel_layers-blocks2_method-dfm"]
    assert plan.points[2].key == "gated"  # layers [2, 4] + the demo's patchcore


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r["experiments"]["sel"]["references"].update(n_cold=1),
     "at least 2 references per condition"),
    (lambda r: r["experiments"]["sel"].update(deploy_folds=0), "deploy_folds is 0"),
    (lambda r: r["experiments"]["sel"]["select"].update(validation="nope"),
     "'nope' is not defined under validation"),
    (lambda r: r["experiments"]["sel"]["select"].update(
        references=[{"protocol": "test_good_holdout"}]), "may not vary references"),
    (lambda r: r["experiments"]["sel"].update(seeds=[0, 1]), "one reference draw"),
    (lambda r: r["experiments"]["sel"]["select"].update(gate=["mixed", "p90"]),
     "mixes one-model gates"),
    (lambda r: r["experiments"]["sel"]["select"].update(epochs=[1, 2]),
     "epochs: unknown option"),
    (lambda r: r["targets"].update(experiments=["gated", "sel"]),
     "list it under targets.selections"),
    (lambda r: r["targets"].update(selections=["gated"]), "not selection grids"),
    (lambda r: r["validation"]["band_test"].update(strength=[0.9, 0.2]), "is above high"),
    (lambda r: r["validation"]["band_test"].update(rows=[0, 2]), "rows"),
    (lambda r: r["validation"]["band_test"].update(recipe="blur"), "recipe"),
])
def test_selection_params_errors_are_one_line(mutate, needle):
    raw = _raw()
    mutate(raw)
    with pytest.raises(InputError) as exc:
        parse_params(raw)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_validation_entry_round_trips_its_spec():
    cfg = ValidationConfig.from_dict("p", {"recipe": "perlin", "cell": [4, 8], "threshold": 0.4,
                                           "strength": 0.5})
    assert cfg.strength == (0.5, 0.5) and cfg.options.cell == (4, 8)
    assert ValidationConfig.from_spec(cfg.to_dict()) == cfg


# --- the choice ---------------------------------------------------------------------


def _plan(n: int) -> dict:
    return {"key": "sel", "axes": ["coreset_ratio"], "default": 1, "set_id": "band-0",
            "set_spec": {"validation": {"recipe": "noise_band"}},
            "points": [{"experiment": f"p{i}", "point": {"coreset_ratio": i}} for i in range(n)]}


def _validation(key: str, value: float, size: int = 100) -> dict:
    return {"experiment": key, "auroc": value, "n_normal": 8, "n_anomaly": 16,
            "per_condition": {"cold": {"auroc": value}}, "model_bytes": size}


def _metrics(value: float) -> dict:
    return {"metrics": {"auroc": value}, "per_condition": {"cold": {"auroc": value}}}


def test_permuting_test_labels_never_changes_the_choice():
    """The choice reads validation results only: test AUROCs recomputed under permuted test
    labels move grid_best_on_test, never the chosen point."""
    rng = np.random.default_rng(0)
    n_points, n_test = 4, 60
    y = np.r_[np.zeros(30), np.ones(30)]
    # test scores of each point: point i separates the classes by i / 2
    scores = [rng.normal(0, 1, n_test) + (i / 2) * y for i in range(n_points)]
    validations = [_validation(f"p{i}", v) for i, v in enumerate([0.7, 0.9, 0.8, 0.6])]
    chosen, best = set(), set()
    for k in range(20):
        labels = y if k == 0 else rng.permutation(y)
        tests = [_metrics(float(roc_auc_score(labels, s))) for s in scores]
        report = selection_report(_plan(n_points), "C", validations, tests)
        chosen.add(report["chosen"]["experiment"])
        best.add(report["grid_best_on_test"]["experiment"])
        assert report["test"]["auroc"] == tests[1]["metrics"]["auroc"]
        assert report["grid_best_on_test"]["test"]["auroc"] >= report["test"]["auroc"]
    assert chosen == {"p1"}
    assert len(best) > 1  # the test labels did matter to the test-tuned point


def test_selection_report_keys_and_upper_bound():
    validations = [_validation("p0", 0.8), _validation("p1", 0.7), _validation("p2", 0.75)]
    tests = [_metrics(0.9), _metrics(0.95), _metrics(0.85)]
    report = selection_report(_plan(3), "C", validations, tests)
    assert report["chosen"] == {"experiment": "p0", "point": {"coreset_ratio": 0}, "default": False}
    assert report["validation"]["auroc"] == 0.8 and report["test"]["auroc"] == 0.9
    assert report["grid_best_on_test"]["experiment"] == "p1"
    assert report["grid_best_on_test"]["test"]["auroc"] == 0.95
    assert report["grid_best_on_test"]["note"] == UPPER_BOUND_NOTE
    assert report["regret"]["chosen"] == pytest.approx(0.05)
    assert report["default"]["experiment"] == "p1" and report["regret"]["default"] == 0
    assert [g["validation"]["auroc"] for g in report["grid"]] == [0.8, 0.7, 0.75]
    assert [g["test"]["auroc"] for g in report["grid"]] == [0.9, 0.95, 0.85]


def test_ties_go_to_the_smaller_model_then_the_earlier_point():
    assert choose_point([0.9, 0.8, 0.9], [300, 10, 200]) == (2, [0, 2])
    assert choose_point([0.9, 0.9, 0.9], [5, 5, 5]) == (0, [0, 1, 2])
    validations = [_validation("p0", 0.9, 300), _validation("p1", 0.9, 200)]
    report = selection_report(_plan(2), "C", validations, [_metrics(0.5), _metrics(0.6)])
    assert report["chosen"]["experiment"] == "p1"
    assert report["tie_break"]["decided_by"] == "model_bytes"
    assert report["tie_break"]["tied"] == ["p0", "p1"]


def test_report_lists_selections_with_recipe_examples_beside_real_faults(tmp_path):
    from hdmap_ad.report.selection import selection_lines

    manifest_path = _domain(tmp_path)
    build_validation_set(_set_spec("perlin"), manifest_path, str(tmp_path / "set"),
                         progress=False)
    validations = [_validation("p0", 0.8), _validation("p1", 0.7)]
    report = selection_report(_plan(2), "C", validations, [_metrics(0.9), _metrics(0.95)])
    (tmp_path / "sel.json").write_text(json.dumps(report))
    entry = {"domain": "C", "label": "domainC", "selection": "sel",
             "selected": str(tmp_path / "sel.json"), "set": str(tmp_path / "set"),
             "manifest": manifest_path}
    lines = selection_lines([entry], tmp_path / "figures", tmp_path)
    row = next(line for line in lines if line.startswith("| domainC"))
    assert "**0.9000**" in row and "0.9500 (coreset_ratio 1)" in row  # headline, upper bound
    figure = tmp_path / "figures" / "domainC_validation_examples.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![{figure.stem}](figures/{figure.name})" in lines


def test_benchmark_figures_tau_and_regret():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import selection as bench

    agree = bench.grid_figures([0.9, 0.7, 0.8], [0.95, 0.85, 0.9], [1, 1, 1], default=1)
    assert agree["tau"] == pytest.approx(1.0) and agree["regret"] == 0
    assert agree["regret_default"] == pytest.approx(0.1)
    flipped = bench.grid_figures([0.7, 0.9, 0.8], [0.95, 0.85, 0.9], [1, 1, 1], default=None)
    assert flipped["tau"] == pytest.approx(-1.0) and flipped["regret"] == pytest.approx(0.1)
    assert flipped["regret_default"] is None
    assert bench.grid_figures([0.8, 0.8], [0.9, 0.7], [1, 1], 0)["tau"] is None  # a tie
    assert [bench.bin_of(x) for x in (0.1, 0.5, 0.6, 1.1, 1.5)] == ["low", "low", "mid",
                                                                   "high", "high"]
    val = {"normal": [{"score": 0.0}, {"score": 1.0}],
           "anomalies": [{"score": 2.0, "strength": 0.2}, {"score": 0.5, "strength": 1.4}]}
    assert bench.bin_auroc(val, "low") == 1.0 and bench.bin_auroc(val, "high") == 0.5
    assert bench.bin_auroc(val, "mid") is None and bench.bin_auroc(val, "all") == 0.75
    grid = {"method": "m", "recipe": "r", "strength": "all", "test_auroc": [0.95, 0.85, 0.9]}
    rows = [{**grid, "validation_auroc": [0.9, 0.7, 0.8], **agree},
            {**grid, "validation_auroc": [0.8, 0.8, 0.8], **flipped}]
    (summary,) = bench.summarize(rows)
    assert summary["tau"] == pytest.approx(0.0) and summary["selected_is_test_best"] == 1
    assert summary["regret_default"] == pytest.approx(0.1)
    assert summary["test_spread"] == pytest.approx(0.1)
    assert summary["validation_saturated"] == 1 and summary["tau_domains"] == 2


# --- one tiny DAG run -----------------------------------------------------------------

TINY_SELECT = tiny_params(
    backbones={"lite2": {"layers": ["blocks.2"]}},
    validation={"band": {"recipe": "noise_band", "strength": [0.2, 1.0]}},
    experiments=Replace({"sel": tiny_experiment(select={"coreset_ratio": [0.1, 0.5]})}),
    targets={"experiments": []},
)


@pytest.mark.slow
def test_selected_json_from_the_dag(tmp_path):
    import subprocess

    copy_project(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_SELECT, sort_keys=False))

    def smk(*args: str) -> str:
        proc = subprocess.run(["snakemake", "--cores", "2", "--profile", "profiles/default",
                               *args], cwd=tmp_path, env=project_env(tmp_path),
                              capture_output=True, text=True)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc.stdout + proc.stderr

    target = "results/domainC_sel_selected.json"
    smk(target)
    out = json.loads((tmp_path / target).read_text())
    assert set(out) >= {"chosen", "validation", "test", "grid", "grid_best_on_test"}
    assert out["chosen"]["experiment"] in {g["experiment"] for g in out["grid"]}
    assert 0 <= out["validation"]["auroc"] <= 1 and 0 <= out["test"]["auroc"] <= 1
    assert out["grid_best_on_test"]["test"]["auroc"] >= out["test"]["auroc"]
    assert out["validation"]["n_normal"] == 4 and out["validation"]["n_anomaly"] == 8
    assert out["validation_set"]["validation"]["options"]["rows"] == [1, 3]
    # the normal side is the score step's held-out reference scores (same fold models)
    point = out["chosen"]["experiment"]
    val = json.loads(next((tmp_path / "work/validation/domain_C").glob(
        f"*/scores/{point}.json")).read_text())
    cv = pd.read_parquet(tmp_path / f"work/scores/domain_C/{point}.parquet")
    cv = cv[cv.role == "reference_cv"].set_index("image_id").score
    for row in val["normal"]:
        assert row["score"] == pytest.approx(cv[row["image_id"]], rel=1e-5)
    # the same params give the same bytes; a recipe change re-builds the validation set,
    # its features and the validation scores, and fits or extracts nothing
    first = (tmp_path / target).read_bytes()
    assert "Nothing to be done" in smk("-n", target)
    params = copy.deepcopy(TINY_SELECT)
    params["validation"]["band"]["strength"] = [0.5, 0.6]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = dry_run_jobs(smk("-n", target))
    assert jobs == {"validation_set": 1, "validation_extract_lite2": 1,
                    "validation_score": 2, "select": 1}, jobs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_SELECT, sort_keys=False))
    (tmp_path / target).unlink()
    smk(target)
    assert (tmp_path / target).read_bytes() == first
