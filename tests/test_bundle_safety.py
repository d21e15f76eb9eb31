"""A model folder is verified before it is trusted; NaN and inf never escape (issue #26).

On the tiny run of ``deploy_run`` (conftest), copied where a case changes files:

- a model exported before its experiment re-ran on other data is *stale*: predict and the app
  refuse it without ``--allow-stale``; where the run cannot be reached that is logged;
- sub-model files are checked against the sha256 that ``model.json`` records (cold and warm
  swapped, a bank edited), and ``model.json`` against its schema: one named line each;
- a NaN bank, an inf score (a raw-map autoencoder on a map of 1e30) and a non-positive batch
  size are refused where they are made or read (fit, score, metrics, predict, app), naming
  the step and the map;
- a folder of mixed image sizes (MVTec layout) is exported and predicted as the study read it.

The export rule's rebuild on a re-run of its experiment is checked with a Snakemake dry run.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hdmap_ad.cli import main
from hdmap_ad.deploy.bundle import MODEL_JSON, StaleModelError, file_sha256, load_bundle
from hdmap_ad.errors import InputError
from tests.conftest import dry_run_jobs, mvtec_run_steps, project_env

EXP = "gated"
MODEL = f"results/models/domainC_{EXP}"
#: The files of one domain x experiment of a run that a model folder is judged against.
RUN_FILES = (MODEL, f"results/domainC_{EXP}.json", f"work/models/domain_C/{EXP}.json",
             f"work/models/domain_C/{EXP}", f"work/scores/domain_C/{EXP}.parquet",
             "work/manifests/domain_C.parquet")


def _copy_run(deploy_run: Path, root: Path) -> Path:
    """The run's files of domain C x gated, in the pipeline's layout under ``root``."""
    for rel in RUN_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if (deploy_run / rel).is_dir():
            shutil.copytree(deploy_run / rel, root / rel)
        else:
            shutil.copy2(deploy_run / rel, root / rel)
    return root


def _maps(deploy_run: Path, n: int = 2) -> list[str]:
    return [str(p) for p in sorted(
        (deploy_run / "data/synthetic/domain_C/test/fault").glob("*.tiff"))[:n]]


def _predict(model: Path, maps: list[str], out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(model), "--input", *maps, "--out", str(out),
                 "--quiet", *extra])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("hdmap_ad")]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hdmap_ad "), err
    return err[0]


# -- staleness ---------------------------------------------------------------------------------
def test_a_model_left_behind_by_a_rerun_on_other_data_is_stale(deploy_run, tmp_path, capsys,
                                                                caplog):
    run = _copy_run(deploy_run, tmp_path / "project")
    maps = _maps(deploy_run)
    # the experiment as exported: fresh, loaded without a word about staleness
    load_bundle(run / MODEL, judge_staleness=True)
    assert not _logged(caplog)

    # the experiment re-ran on changed data: other data hash, other figures
    def rerun(meta):
        meta["provenance"]["data_sha256"] = "f" * 64

    _edit_json(run / f"work/models/domain_C/{EXP}.json", rerun)
    _edit_json(run / f"results/domainC_{EXP}.json",
               lambda m: m["metrics"].update(auroc=0.823))
    out = tmp_path / "stale.csv"
    assert _predict(run / MODEL, maps, out) == 2 and not out.exists()
    err = _one_line_error(capsys)
    assert f"{run / MODEL}: stale: experiment 'gated' of domain 'C'" in err
    assert "other data (data sha256 ffffffffffff... now" in err and "--allow-stale" in err
    # --allow-stale: used, with a warning that says so
    assert _predict(run / MODEL, maps, out, "--allow-stale") == 0 and out.is_file()
    assert any("stale" in m and "(used anyway: --allow-stale)" in m for m in _logged(caplog))

    # a copy elsewhere is judged against the run named by --work ...
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / MODEL, moved)
    with pytest.raises(StaleModelError, match="stale"):
        load_bundle(moved, work=run / "work", judge_staleness=True)
    # ... and without one it cannot be judged: used, and the log says so
    caplog.clear()
    load_bundle(moved, judge_staleness=True)
    assert any("cannot judge whether the model is stale" in m for m in _logged(caplog))
    # the work folder gone: the same
    shutil.rmtree(run / "work")
    caplog.clear()
    load_bundle(run / MODEL, judge_staleness=True)
    assert any("cannot judge" in m and "not found" in m for m in _logged(caplog))


def test_the_app_refuses_a_stale_model_unless_allowed(deploy_run, tmp_path, monkeypatch):
    from hdmap_ad.app.data import ALLOW_STALE_ENV, Inspector, Run, Target

    run = _copy_run(deploy_run, tmp_path / "project")
    _edit_json(run / f"results/domainC_{EXP}.json",
               lambda m: m["metrics"].update(auroc=0.823))  # the metrics step re-ran
    target = Target(f"domainC_{EXP}", "C", EXP)
    monkeypatch.delenv(ALLOW_STALE_ENV, raising=False)
    with pytest.raises(StaleModelError, match=r"stale: .*results/domainC_gated\.json changed"):
        Inspector(Run(run), target).upload(_maps(deploy_run, 1)[0])
    monkeypatch.setenv(ALLOW_STALE_ENV, "1")
    view, _ = Inspector(Run(run), target).upload(_maps(deploy_run, 1)[0])
    # the model's own threshold beside its score, never the re-run's
    assert view.threshold == load_bundle(run / MODEL).deployable and np.isfinite(view.score)


# -- sub-model files and model.json ------------------------------------------------------------
def test_swapped_sub_models_are_refused_by_name(deploy_run, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(deploy_run / MODEL, model)
    subs = model / "sub_models"
    for ext in ("npz", "json"):  # cold and warm exchanged
        (subs / f"cold.{ext}").rename(subs / "tmp")
        (subs / f"warm.{ext}").rename(subs / f"cold.{ext}")
        (subs / "tmp").rename(subs / f"warm.{ext}")
    with pytest.raises(InputError, match=r"sub_models/cold\.(json|npz): sha256 .* differs") as exc:
        load_bundle(model)
    assert "\n" not in str(exc.value)
    (subs / "cold.npz").unlink()
    shutil.copy(deploy_run / MODEL / "sub_models/cold.json", subs / "cold.json")
    with pytest.raises(InputError, match=r"sub_models/cold\.npz: sub-model file not found"):
        load_bundle(model)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(grid="abc"), "grid: 'abc' is not of type 'array'"),
    (lambda m: m.update(sub_models=[]), "sub_models: [] is not of type 'object'"),
    (lambda m: m["experiment"].pop("key"), "experiment: 'key' is a required property"),
    (lambda m: m["batching"].update(extract_batch_size=-1),
     "batching.extract_batch_size: -1 is less than the minimum of 1"),
    (lambda m: m["preprocessing"].update(map_shape=[31]), "preprocessing.map_shape: [31] is"),
    (lambda m: m["gate"].update(threshold=float("nan")), "gate.threshold: not a finite number"),
    (lambda m: m["thresholds"].update(deployable=float("inf")),
     "thresholds.deployable: not a finite number"),
    (lambda m: m["sub_models"].update({"../cold": {}}), "sub_models: '../cold' does not match"),
    (lambda m: m["provenance"]["exported_from"].pop("sub_models_sha256"),
     "provenance.exported_from: 'sub_models_sha256' is a required property"),
    (lambda m: m["experiment"].update(gate="p91"), "experiment: experiments.gated.gate: 'p91'"),
    (lambda m: m["sub_models"].pop("warm"),
     "belongs to sub-model 'warm', which sub_models does not list"),
])
def test_a_tampered_model_json_is_one_named_line(deploy_run, tmp_path, edit, needle):
    model = tmp_path / "m"
    shutil.copytree(deploy_run / MODEL, model)
    _edit_json(model / MODEL_JSON, edit)
    with pytest.raises(InputError) as exc:
        load_bundle(model)
    assert str(exc.value).startswith(f"{model / MODEL_JSON}: ") and "\n" not in str(exc.value)
    assert needle in str(exc.value)


def test_a_negative_batch_size_writes_no_csv(deploy_run, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(deploy_run / MODEL, model)
    _edit_json(model / MODEL_JSON, lambda m: m["batching"].update(extract_batch_size=-1))
    out = tmp_path / "p.csv"
    assert _predict(model, _maps(deploy_run), out) == 2 and not out.exists()
    assert "batching.extract_batch_size: -1" in _one_line_error(capsys)


def test_extraction_refuses_a_non_positive_batch_size(tmp_path):
    from dataclasses import replace

    from hdmap_ad.config import BackboneConfig
    from hdmap_ad.features.extract import extract_to_cache
    from tests.conftest import write_map_items

    items = write_map_items(tmp_path / "maps", np.ones((2, 8, 12), np.float32))
    cfg = BackboneConfig.from_dict("raw", {"model": "raw", "layers": ["map"]})
    for size in (0, -1):  # built without from_dict, as a library caller may
        out = tmp_path / f"map{size}.parquet"
        with pytest.raises(InputError, match=f"backbones.raw.batch_size: {size} must be >= 1"):
            extract_to_cache(items, replace(cfg, batch_size=size), {"map": str(out)},
                             progress=False)
        assert not out.exists()


# -- NaN and inf -------------------------------------------------------------------------------
def test_a_nan_bank_is_refused_not_scored_inf(deploy_run, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(deploy_run / MODEL, model)
    state = model / "sub_models/cold.npz"
    with np.load(state) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["bank"][0, 0] = np.nan
    with open(state, "wb") as fh:
        np.savez(fh, **arrays)
    # its sha256 recorded too, as a model exported with a NaN bank would have it
    _edit_json(model / MODEL_JSON, lambda m: m["provenance"]["exported_from"][
        "sub_models_sha256"].update({"cold.npz": file_sha256(state)}))
    out = tmp_path / "p.csv"
    assert _predict(model, _maps(deploy_run), out) == 2 and not out.exists()
    assert "sub_models/cold.npz: sub-model 'cold': fitted state holds NaN or inf (arrays " \
        "['bank'])" in _one_line_error(capsys)


class _Inf:
    """A sub-model that scores every map inf (or NaN): what a model does on a map of 1e30."""

    def __init__(self, value: float = np.inf) -> None:
        self.value = value

    def score(self, desc):
        n, h, w = desc.shape[:3]
        return np.full(n, self.value, np.float32), np.full((n, h, w), self.value, np.float32)


def test_a_raw_map_autoencoder_on_1e30_is_refused_by_the_score_step():
    """The score step names the map; NaN too (it never wins a ``<`` and surfaced as inf)."""
    from hdmap_ad.methods import FitContext, MethodConfig
    from hdmap_ad.scoring.score import score_routed

    refs = np.random.default_rng(0).uniform(0, 1, (6, 8, 12, 1)).astype(np.float32)
    cfg = MethodConfig.from_dict({"name": "ae", "epochs": 2, "hidden": 4, "latent": 4}, "m")
    ae = cfg.method.fit(refs, cfg.options, FitContext())
    maps = refs[:3].copy()
    maps[2, 3, 4, 0] = 1e30  # finite, but its squared error is not
    ids = ["test/good/000000", "test/good/000001", "test/fault/000002"]
    with pytest.raises(InputError, match=r"^score: experiments.x: sub-model 'mixed' scored map "
                                         r"'test/fault/000002' inf"):
        score_routed(lambda sel: maps[sel], np.full(3, "mixed", object), {"mixed": ae},
                     ids=ids, where="score: experiments.x")
    with pytest.raises(InputError, match="sub-model 'warm' scored map 'test/good/000000' nan"):
        score_routed(lambda sel: refs[sel], np.full(3, "both", object),
                     {"cold": ae, "warm": _Inf(np.nan)}, ids=ids)


def test_the_fit_step_refuses_a_bank_holding_nan():
    from hdmap_ad.banks.bank import GateFit, check_finite_fit

    class Broken:
        def state(self):
            return {"bank": np.array([[0.0, np.nan]], np.float32)}, {}

    refs = pd.DataFrame({"image_id": ["train/good/000000", "train/good/000001"]})
    with pytest.raises(InputError, match=r"^fit: experiments.x: sub-model 'mixed' fitted on "
                                         r"references \['train/good/000000', 'train/good/"
                                         r"000001'\] holds NaN or inf \(arrays \['bank'\]\)"):
        check_finite_fit(refs, np.array(["mixed", "mixed"]), GateFit(None, "none"),
                         {"mixed": Broken()}, {}, "fit: experiments.x")
    with pytest.raises(InputError, match="gate threshold inf is not finite"):
        check_finite_fit(refs, np.array(["mixed", "mixed"]), GateFit(np.inf, "otsu"), {}, {},
                         "fit: experiments.x")


def test_metrics_and_app_refuse_an_inf_score_in_a_scores_file(deploy_run, tmp_path, capsys,
                                                              monkeypatch):
    """An older or edited scores file: one named line, never sklearn's traceback."""
    run = _copy_run(deploy_run, tmp_path / "project")
    path = run / f"work/scores/domain_C/{EXP}.parquet"
    table = pq.read_table(path)
    scores = table.column("score").to_numpy().copy()
    test = np.flatnonzero(table.column("role").to_numpy(zero_copy_only=False) == "test")
    scores[test[3]] = np.inf
    image_id = table.column("image_id")[int(test[3])].as_py()
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(scores))
    pq.write_table(table, path)

    monkeypatch.chdir(deploy_run)  # the manifest's map paths are relative to the run
    feats = [str(deploy_run / "work/features/domain_C/lite2/blocks.2.parquet")]
    out = tmp_path / "metrics.json"
    assert main(["metrics", "--scores", str(path), "--meta",
                 str(run / f"work/models/domain_C/{EXP}.json"), "--manifest",
                 str(run / "work/manifests/domain_C.parquet"), "--features", *feats,
                 "--domain", "C", "--out", str(out)]) == 2
    assert not out.exists()
    assert f"{path}: metrics: test map {image_id!r} has score inf" in _one_line_error(capsys)

    from hdmap_ad.app.data import Run, Target

    with pytest.raises(InputError, match=f"app: test map '{image_id}' has score inf"):
        Run(run).scores(Target(f"domainC_{EXP}", "C", EXP))


def test_predict_and_app_report_an_inf_score_as_an_error_not_a_number(deploy_run, tmp_path):
    from hdmap_ad.deploy.predict import Predictor, csv_row, predict_maps

    bundle = load_bundle(deploy_run / MODEL)
    bundle.models = {name: _Inf() for name in bundle.models}
    maps = _maps(deploy_run)
    rows = [csv_row(p, bundle) for p in predict_maps(Predictor(bundle, threads=1),
                                                      [(m, Path(m).stem) for m in maps])]
    assert [r["score"] for r in rows] == ["", ""] and [r["verdict"] for r in rows] == ["", ""]
    assert all(r["error"].startswith(f"predict: {m}: sub-model ") and " inf " in r["error"]
               for r, m in zip(rows, maps, strict=True))

    from hdmap_ad.app.data import Inspector, Run, Target

    insp = Inspector(Run(deploy_run), Target(f"domainC_{EXP}", "C", EXP))
    insp.bundle.models = {name: _Inf() for name in insp.bundle.models}
    with pytest.raises(InputError, match=f"^{maps[0]}: app: sub-model '(cold|warm)' scored "
                                         "it inf"):
        insp.upload(maps[0])


# -- mixed image sizes -------------------------------------------------------------------------
def test_a_folder_of_mixed_sizes_deploys_as_it_was_studied(tmp_path, capsys):
    """MVTec layout, every other image 56 x 80 beside 64 x 64: the export keeps each
    reference map's own size, and predict resizes every map as the extraction did."""
    from hdmap_ad.config import spec_json
    from tests.test_mvtec_masks import BACKBONE, EXPERIMENT, _dataset

    cat = _dataset(tmp_path / "data", mixed_sizes=True)
    w = tmp_path / "work"
    model = tmp_path / "model"
    for step in (
        *mvtec_run_steps(cat, w, BACKBONE, EXPERIMENT, metrics="widget.json", quiet_score=True),
        ["export", "--backbone-spec", spec_json(BACKBONE), "--meta", str(w / "b.json"),
         "--model", str(w / "model"), "--scores", str(w / "s.parquet"), "--metrics",
         str(w / "widget.json"), "--manifest", str(w / "m.parquet"), "--out", str(model)],
    ):
        assert main(step) == 0, (step[0], capsys.readouterr().err[-2000:])
    bundle = load_bundle(model)
    assert bundle.meta["preprocessing"]["map_sizes"] == [[56, 80], [64, 64]]
    refs = bundle.reference_maps()
    assert {m.shape for m in refs.values()} == {(56, 80, 3), (64, 64, 3)}
    assert sorted(refs) == sorted(r["image_id"] for r in bundle.references())

    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(model), "--input", str(cat / "test"), "--recursive",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    pred = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(pred) == 8 and (pred.error == "").all()
    manifest = pd.read_parquet(w / "m.parquet").set_index("image_id")
    scores = pq.read_table(w / "s.parquet").drop_columns(["patch_scores"]).to_pandas()
    test = scores[scores.role == "test"]
    paths = manifest.loc[test.image_id, "path"].tolist()
    # the same maps as the score step's, batched otherwise: equal to float32 rounding
    np.testing.assert_allclose(pred.loc[paths, "score"].to_numpy(float),
                               test.score.to_numpy(), rtol=1e-4)
    sizes = manifest.loc[test.image_id, ["height", "width"]].to_numpy()
    worst = pred.loc[paths, ["worst_y", "worst_x"]].to_numpy(int)
    assert ((worst >= 0) & (worst < sizes)).all()  # in each map's own pixels


# -- the export rule ---------------------------------------------------------------------------
def test_the_export_rule_rebuilds_when_its_experiment_reruns_on_changed_data(deploy_run,
                                                                            tmp_path):
    """The rule's inputs are the experiment's outputs: a data edit re-runs the experiment and
    the export after it (a dry run on a copy of the run)."""
    import tifffile

    project = tmp_path / "project"
    shutil.copytree(deploy_run, project, symlinks=True)
    one = project / "data/synthetic/domain_C/test/fault/000000.tiff"
    edited = tifffile.imread(one)
    edited[0, 0] += 0.5
    tifffile.imwrite(one, edited)
    proc = subprocess.run(["snakemake", "-n", "--cores", "1", "--profile", "profiles/default",
                           MODEL], cwd=project, env={**project_env(project),
                                                     "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert dry_run_jobs(proc.stdout) == {"manifest": 1, "extract_lite2": 1, "fit": 1,
                                         "score": 1, "metrics": 1, "export": 1}


def test_logging_is_quiet_for_a_fresh_model(deploy_run, caplog):
    caplog.set_level(logging.INFO)
    load_bundle(deploy_run / MODEL, judge_staleness=True)
    assert not _logged(caplog)
