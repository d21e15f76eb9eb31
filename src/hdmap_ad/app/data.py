"""What the web app shows, read from a run's ``results/`` and ``work/`` (no Streamlit here).

Everything is read lazily and per request: the results page reads the small metrics and
hypothesis JSONs; one experiment's scores are read only when it is shown, without the
patch-score grids (one grid is read for the map shown); a model is loaded only on the map page.
The Streamlit script (:mod:`hdmap_ad.app.main`) caches these results, keyed by file paths and
modification times, so a rerun after a click reads nothing again.

Paths follow the pipeline: ``results/{prefix}{domain}_{experiment}.json``,
``results/hypotheses/*.json``, ``work/scores/domain_{D}/{experiment}.parquet``,
``work/models/domain_{D}/{experiment}[.json]``, ``work/manifests/domain_{D}.parquet``,
``work/features/domain_{D}/{backbone}/{layer}.parquet``, and exported models under
``results/models/{prefix}{domain}_{experiment}/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdmap_ad.errors import InputError
from hdmap_ad.layout import RunLayout

#: Set (``python -m hdmap_ad app --allow-stale``): exported models whose experiment has re-run
#: since their export are used anyway (``hdmap_ad.deploy.bundle.verify_bundle``).
ALLOW_STALE_ENV = "HDMAP_AD_ALLOW_STALE"

#: Metrics columns of the results table: (column, path in the metrics JSON).
METRIC_COLUMNS = (
    ("auroc", ("metrics", "auroc")),
    ("aupr", ("metrics", "aupr")),
    ("f1_max", ("metrics", "f1_max")),
    ("acc_best*", ("metrics", "accuracy_best_threshold")),
    ("acc_deployable", ("metrics", "accuracy_deployable")),
    ("fpr_deployable", ("metrics", "false_positive_rate_deployable")),
    ("recall_deployable", ("metrics", "recall_deployable")),
    ("auroc_cold", ("per_condition", "cold", "auroc")),
    ("auroc_warm", ("per_condition", "warm", "auroc")),
    ("acc_deployable_cold", ("per_condition", "cold", "accuracy_deployable")),
    ("acc_deployable_warm", ("per_condition", "warm", "accuracy_deployable")),
    ("gate_accuracy", ("gate", "accuracy")),
    ("deployable_threshold", ("thresholds", "deployable")),
    ("n_test", ("counts", "test_scored")),
    ("references", ("counts", "references")),
)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Target:
    """One domain x experiment of a run."""

    name: str  # domainC_gated
    domain: str
    experiment: str


class Run:
    """A project folder holding a pipeline run's ``results/`` and ``work/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.layout = RunLayout(str(self.root))
        self.results = Path(self.layout.results_dir)
        self.work = Path(self.layout.work_dir)

    # -- paths (hdmap_ad.layout) --------------------------------------------------------------
    def scores_path(self, t: Target) -> Path:
        return Path(self.layout.scores(t.domain, t.experiment))

    def model_meta_path(self, t: Target) -> Path:
        return Path(self.layout.model_meta(t.domain, t.experiment))

    def model_dir(self, t: Target) -> Path:
        return Path(self.layout.model_dir(t.domain, t.experiment))

    def manifest_path(self, domain: str) -> Path:
        return Path(self.layout.manifest(domain))

    def exported_path(self, t: Target) -> Path:
        return Path(self.layout.exported(t.name))

    def signature(self) -> tuple[tuple[str, float], ...]:
        """(path, mtime) of every results JSON: a cache key that changes with the results."""
        files = sorted(self.results.glob("*.json")) + sorted(
            Path(self.layout.hypotheses_dir()).glob("*.json"))
        return tuple((str(p), p.stat().st_mtime) for p in files if p.is_file())

    # -- results page -------------------------------------------------------------------------
    def metrics_table(self) -> pd.DataFrame:
        """One row per domain x experiment metrics JSON (sweep summaries and the aggregate
        are skipped): target, domain, experiment, method, gate and :data:`METRIC_COLUMNS`."""
        rows = []
        for path in sorted(self.results.glob("*.json")):
            m = _read_json(path)
            if not m or "metrics" not in m or "experiment" not in m:
                continue
            row = {
                "target": path.stem,
                "domain": str(_get(m, ("provenance", "domain")) or ""),
                "experiment": m["experiment"],
                "method": m.get("method") or _get(m, ("params", "method", "name")),
                "gate": _get(m, ("gate", "mode")) or _get(m, ("params", "gate")),
                "protocol": _get(m, ("protocol", "references")),
            }
            for col, where in METRIC_COLUMNS:
                row[col] = _get(m, where)
            rows.append(row)
        cols = ["target", "domain", "experiment", "method", "gate", "protocol",
                *[c for c, _ in METRIC_COLUMNS]]
        return pd.DataFrame(rows, columns=cols)

    def targets(self) -> list[Target]:
        t = self.metrics_table()
        return [Target(r.target, r.domain, r.experiment) for r in t.itertuples()]

    def hypotheses_table(self) -> pd.DataFrame:
        """One row per hypothesis x domain x (budget, seed): the deltas of AUROC and of the
        deployable accuracy (b - a) with their 95% intervals, the verdicts with the margin,
        the adjusted p-value of the claimed verdict's test (None when inconclusive) and the
        correction over the family."""
        rows = []
        for path in sorted(Path(self.layout.hypotheses_dir()).glob("*.json")):
            h = _read_json(path)
            if not h or "results" not in h:
                continue
            for domain, results in sorted(h["results"].items()):
                for r in results:
                    au, acc = r.get("auroc") or {}, r.get("accuracy_deployable") or {}
                    per = r.get("per_condition") or {}
                    rows.append({
                        "hypothesis": h.get("hypothesis", path.stem),
                        "verdict": r.get("verdict"),
                        "domain": domain,
                        "a": r.get("a"), "b": r.get("b"),
                        "claim": r.get("claim") or h.get("claim") or "pooled",
                        "budget": r.get("budget"),
                        "seeds": _seeds(r),
                        "auroc_a": au.get("a"), "auroc_b": au.get("b"),
                        "delta_auroc": au.get("delta"),
                        "auroc_ci95": _interval(au.get("ci95")),
                        "margin": h.get("margin"),
                        "p_adjusted": (r.get("claims", {}).get(r.get("claim"), {})
                                       .get("p_adjusted") or {}).get(r.get("verdict")),
                        "correction": (f"{h['correction']} over {h.get('family_size')}"
                                       if h.get("correction") else None),
                        "delta_acc_deployable": acc.get("delta"),
                        "acc_ci95": _interval(acc.get("ci95")),
                        **{f"verdict_{c}": (per.get(c) or {}).get("verdict") for c in per},
                        "n": r.get("n"),
                        "description": h.get("description", ""),
                    })
        return pd.DataFrame(rows)

    def leaderboards(self) -> list[dict[str, Any]]:
        """Every ``results/leaderboards/<name>.json`` (``hdmap_ad.report.leaderboard``):
        ``{"name", "summary" (the tests in one line), "ranking" (a row per experiment, best
        first: average rank, mean and each domain's value), "figure" (the CD diagram's path,
        None when missing)}``."""
        out = []
        for path in sorted(Path(self.layout.leaderboards_dir()).glob("*.json")):
            lb = _read_json(path)
            if not lb or "ranking" not in lb or "table" not in lb:
                continue
            rows = [{"#": r["position"], "experiment": r["experiment"],
                     "average_rank": r["average_rank"], "mean": r["mean"],
                     **{d: lb["table"][d][r["experiment"]] for d in lb["domains"]}}
                    for r in lb["ranking"]]
            fr, iman, nem = lb["friedman"], lb["iman_davenport"], lb["nemenyi"]
            summary = (f"{lb.get('metric')} over {len(lb['domains'])} domains: Friedman "
                       f"p = {fr['p']:.3g}, Iman-Davenport p = {iman['p']:.3g}, Nemenyi "
                       f"CD = {nem['critical_difference']:.3f} at alpha {lb['alpha']:g}; "
                       f"{sum(p['untestable'] for p in lb['pairwise'])} of "
                       f"{len(lb['pairwise'])} Wilcoxon pairs untestable")
            figure = path.with_name(f"{path.stem}_critical_difference.png")
            out.append({"name": lb.get("leaderboard", path.stem), "summary": summary,
                        "ranking": pd.DataFrame(rows),
                        "figure": figure if figure.is_file() else None})
        return out

    def scores(self, t: Target) -> pd.DataFrame:
        """The experiment's scores without the patch grids (test and reference_cv rows)."""
        import pyarrow.parquet as pq

        from hdmap_ad.metrics.experiment import check_finite_scores

        path = self.scores_path(t)
        if not path.is_file():
            raise InputError(f"{path}: scores not found (run the pipeline for {t.name})")
        schema = pq.read_schema(path)
        cols = [c for c in schema.names if c != "patch_scores"]
        scores = pq.read_table(path, columns=cols).to_pandas()
        check_finite_scores(scores, str(path), "app")  # never an inf on a page
        return scores

    def patch_grid(self, t: Target, image_id: str) -> np.ndarray:
        """``(gh, gw)`` patch scores of one scored map (the test row)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(self.scores_path(t), columns=["image_id", "role", "patch_scores"],
                              filters=[("image_id", "=", image_id)])
        table = table.filter(pc.equal(table.column("role"), "test"))
        if not len(table):
            raise InputError(f"{self.scores_path(t)}: no test row for {image_id!r}")
        return np.array(table.column("patch_scores").combine_chunks().to_numpy_ndarray()[0])

    def manifest(self, domain: str) -> pd.DataFrame:
        """The domain's manifest, its map and mask paths resolved against the run's folder
        (the pipeline records them relative to where it ran, not to where the app runs)."""
        from hdmap_ad.data.manifest import read_manifest

        df = read_manifest(self.manifest_path(domain))
        for col in ("path", "mask_path"):
            if col in df:
                df[col] = [p if not p or Path(p).is_absolute() else str(self.root / p)
                           for p in df[col]]
        return df


def _seeds(result: dict[str, Any]) -> str:
    """Reference seeds of a hypothesis result: several (a verdict over draws) or one."""
    seeds = result.get("seeds")
    if seeds:
        return ",".join(str(s) for s in seeds)
    return "" if result.get("ref_seed") is None else str(result["ref_seed"])


def _interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""


# -- score summaries --------------------------------------------------------------------------
def deployable(scores: pd.DataFrame) -> float | None:
    """The deployable threshold (the largest held-out reference score), as the metrics."""
    cv = scores[scores.role == "reference_cv"]
    return float(cv.score.max()) if len(cv) else None


def test_rows(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[scores.role == "test"].reset_index(drop=True)


def roc_points(scores: pd.DataFrame) -> pd.DataFrame:
    """ROC curve of the test rows (fault = positive): columns ``fpr``, ``tpr``."""
    from sklearn.metrics import roc_curve

    test = test_rows(scores)
    y = (test.label != "good").to_numpy()
    if y.all() or not y.any():
        return pd.DataFrame({"fpr": [], "tpr": []})
    fpr, tpr, _ = roc_curve(y, test.score.to_numpy())
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def score_groups(scores: pd.DataFrame) -> pd.DataFrame:
    """Test scores with their group ``condition/label`` (``cold/fault`` ...), and the held-out
    reference scores as ``references`` (the sample the deployable threshold is fit on)."""
    test = test_rows(scores)
    group = np.where(test.condition.isin(["cold", "warm"]),
                     test.condition + "/" + np.where(test.label == "good", "good", "fault"),
                     np.where(test.label == "good", "good", "fault"))
    cv = scores[scores.role == "reference_cv"]
    return pd.concat([
        pd.DataFrame({"score": test.score.to_numpy(), "group": group}),
        pd.DataFrame({"score": cv.score.to_numpy(), "group": "references"}),
    ], ignore_index=True)


def verdicts(scores: pd.DataFrame, threshold: float | None) -> pd.Series:
    """``anomalous`` / ``normal`` per row at ``threshold`` (``score >= threshold``)."""
    if threshold is None:
        return pd.Series([""] * len(scores), index=scores.index)
    return pd.Series(np.where(scores.score >= threshold, "anomalous", "normal"),
                     index=scores.index)


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Test maps of two experiments side by side, each judged at its own deployable
    threshold: one row per map scored by both, with ``changed`` (the verdicts differ) and
    ``effect`` (``fixed``: b is right where a was wrong, ``broken``: the reverse)."""
    ta, tb = test_rows(a), test_rows(b)
    va, vb = verdicts(ta, deployable(a)), verdicts(tb, deployable(b))
    left = ta.assign(verdict=va)[["image_id", "label", "condition", "score", "verdict",
                                  "gate"]]
    right = tb.assign(verdict=vb)[["image_id", "score", "verdict", "gate"]]
    both = left.merge(right, on="image_id", suffixes=("_a", "_b"))
    truth = np.where(both.label == "good", "normal", "anomalous")
    right_a, right_b = both.verdict_a == truth, both.verdict_b == truth
    both["changed"] = both.verdict_a != both.verdict_b
    both["effect"] = np.where(~both.changed, "", np.where(right_b & ~right_a, "fixed",
                                                           np.where(right_a & ~right_b,
                                                                    "broken", "")))
    return both


# -- map page ---------------------------------------------------------------------------------
@dataclass
class MapView:
    """One map as the map page shows it."""

    name: str
    image: np.ndarray  # (H, W) or (H, W, 3)
    patch_scores: np.ndarray  # (gh, gw)
    score: float
    threshold: float | None
    routing: str  # the gate's decision: cold | warm | mixed | both
    sub_model: str  # the sub-model whose score was kept
    p90: float
    gate_threshold: float | None
    label: str = ""  # test maps: good | fault ...
    condition: str = ""
    sub_scores: dict[str, float] | None = None

    @property
    def verdict(self) -> str:
        if self.threshold is None:
            return "no deployable threshold"
        return "anomalous" if self.score >= self.threshold else "normal"


def gate_rule(gate: dict[str, Any]) -> str:
    """How a gate mode routes a map, in words (``gate``: the model metadata's gate block),
    as the gate registry states it (:meth:`hdmap_ad.gating.Gate.describe`)."""
    from hdmap_ad.gating import describe_gate

    return describe_gate(str(gate.get("mode")), gate.get("threshold"))


@dataclass
class NearestReference:
    """The normal reference patch nearest to a map's worst patch (PatchCore), or why not."""

    available: bool
    note: str
    image_id: str = ""
    image: np.ndarray | None = None
    patch: tuple[int, int] | None = None  # (row, col) in the reference's grid
    distance: float | None = None


class Inspector:
    """One domain x experiment of a run, for the map page: maps, scores, nearest references.

    The model comes from the exported folder ``results/models/<target>`` when there is one,
    else from the fit step's files (the backbone spec then comes from the run's params.yaml,
    needed only for uploaded maps).
    """

    def __init__(self, run: Run, target: Target) -> None:
        from hdmap_ad.io import read_json

        self.run, self.target = run, target
        meta_path = run.model_meta_path(target)
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: model metadata not found (run the fit step)")
        self.meta = read_json(meta_path)
        exp = dict(self.meta["experiment"])
        from hdmap_ad.config import ExperimentConfig

        self.experiment = ExperimentConfig.from_dict(exp.pop("key"), exp)
        self.scores = run.scores(target)
        self.threshold = deployable(self.scores)
        self.grid = (int(self.meta["grid"][0]), int(self.meta["grid"][1]))
        first = self.meta["provenance"]["features"][self.experiment.layers[0]]
        self.map_shape = tuple(first["map_shape"])
        size = first.get("input_size")  # None: the map's own size (the raw backbone)
        self.input_size, self.resize = (None if size is None else int(size)), str(first["resize"])
        self._bundle = None
        self._models = None
        self._predictor = None
        self._manifest: pd.DataFrame | None = None

    @property
    def models(self):
        """The fitted sub-models (from the fit step's folder; no backbone needed)."""
        if self._models is None:
            if self._bundle is not None:
                self._models = self._bundle.models
            else:
                from hdmap_ad.banks.bank import load_models

                self._models = load_models(self.run.model_dir(self.target), self.meta,
                                           self.experiment)
        return self._models

    def references(self, sub_model: str) -> list[dict[str, Any]]:
        """References of one sub-model, in the order its fit saw them (a PatchCore
        ``sources`` row's first column indexes this list)."""
        return [r for r in self.meta["references"] if r["sub_bank"] == sub_model]

    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            self._manifest = self.run.manifest(self.target.domain).set_index("image_id")
        return self._manifest

    @property
    def bundle(self):
        """The model with its backbone spec (for uploaded maps), loaded on first use."""
        if self._bundle is None:
            from hdmap_ad.deploy.bundle import bundle_from_record, load_bundle

            exported = self.run.exported_path(self.target)
            if (exported / "model.json").is_file():
                # verified as predict verifies it; stale against this run's work/: refused
                self._bundle = load_bundle(
                    exported, work=self.run.work, judge_staleness=True,
                    allow_stale=os.environ.get(ALLOW_STALE_ENV, "") not in ("", "0"))
            else:
                from hdmap_ad.config import load_params
                from hdmap_ad.deploy.export import model_record

                params = load_params(self.run.root / "params.yaml")
                exp = params.experiments.get(self.target.experiment)
                if exp is None:
                    raise InputError(f"{self.run.root / 'params.yaml'}: no experiment "
                                     f"{self.target.experiment!r}")
                t, run = self.target, self.run
                metrics = run.results / f"{t.name}.json"
                record = model_record(params.backbones[exp.backbone],
                                      str(run.model_meta_path(t)), str(run.model_dir(t)),
                                      str(run.scores_path(t)), str(metrics), t.name)
                self._bundle = bundle_from_record(record, run.model_dir(t), run.model_dir(t))
        return self._bundle

    def test_ids(self, order: str = "score") -> list[str]:
        """Scored test maps, highest score first (``order="score"``) or by id."""
        test = test_rows(self.scores)
        if order == "score":
            test = test.sort_values("score", ascending=False, kind="stable")
        else:
            test = test.sort_values("image_id", kind="stable")
        return test.image_id.tolist()

    def test_map(self, image_id: str) -> MapView:
        from hdmap_ad.data.maps import read_map

        test = test_rows(self.scores)
        row = test[test.image_id == image_id]
        if not len(row):
            raise InputError(f"{self.target.name}: {image_id!r} is not a scored test map")
        r = row.iloc[0]
        return MapView(
            name=image_id, image=read_map(self.manifest.loc[image_id, "path"]),
            patch_scores=self.run.patch_grid(self.target, image_id), score=float(r.score),
            threshold=self.threshold, routing=str(r.routing), sub_model=str(r.gate),
            p90=float(r.p90), gate_threshold=self.meta["gate"]["threshold"],
            label=str(r.label), condition=str(r.condition))

    def descriptors(self, image_id: str) -> np.ndarray:
        """``(1, H, W, D)`` descriptors of a map of the run, from the feature cache."""
        from hdmap_ad.features.descriptors import DescriptorSource

        exp = self.experiment
        lay, domain = self.run.layout, self.target.domain
        paths = [lay.features(domain, exp.backbone, layer) for layer in exp.layers]
        # input_map names a raw backbone with one layer: its one cache file
        inputs = (sorted(Path(lay.features_dir(domain, exp.input_map)).glob("*.parquet"))
                  if exp.input_map else [])
        return DescriptorSource(paths, [image_id], exp.descriptor, f"experiments.{exp.key}",
                                input_path=str(inputs[0]) if inputs else None)()

    def upload(self, path: str) -> tuple[MapView, np.ndarray]:
        """Score an uploaded map file (read, extracted and scored as ``predict`` does);
        returns the view and its ``(1, H, W, D)`` descriptors."""
        from hdmap_ad.deploy.predict import Predictor, non_finite_score

        if self._predictor is None:
            self._predictor = Predictor(self.bundle)
        pred = self._predictor
        img, p90 = pred.read(path)
        feats = pred.extract(img[None])
        decision = str(pred.decide(np.array([p90]))[0])
        one = [{k: v[0] for k, v in feats.items()}]
        scores, patches, kept, each = pred.score_features(one, decision)
        bad = non_finite_score(scores[0], patches[0], {k: v[0] for k, v in each.items()})
        if bad:  # never an inf on the page
            raise InputError(f"{path}: app: {bad}")
        desc = pred.describe(one)
        # the model's own threshold: the run's equals it unless the model is stale (allowed)
        view = MapView(name=Path(path).name, image=img, patch_scores=patches[0],
                       score=float(scores[0]), threshold=self.bundle.deployable,
                       routing=decision,
                       sub_model=str(kept[0]), p90=p90,
                       gate_threshold=self.bundle.gate.threshold,
                       sub_scores={k: float(v[0]) for k, v in each.items()})
        return view, desc

    def nearest_reference(self, desc: np.ndarray, sub_model: str,
                          patch: tuple[int, int]) -> NearestReference:
        """The bank patch nearest to ``patch`` of a map (``desc`` its ``(1, H, W, D)``
        descriptors) in ``sub_model``, traced back to its reference map through the bank's
        ``sources`` (reference position in the sub-model, patch index)."""
        model = self.models.get(sub_model)
        method = self.experiment.method.name
        if model is None or not hasattr(model, "nearest") or not hasattr(model, "sources"):
            return NearestReference(False, f"{method} keeps no memory bank of reference "
                                           "patches, so there is no nearest reference patch; "
                                           "the references of the sub-model are listed below")
        dist, rows = model.nearest(desc)
        r, c = patch
        pos, index = (int(v) for v in model.sources[int(rows[0, r, c])])
        ref_id = self.references(sub_model)[pos]["image_id"]
        gw = self.grid[1]
        return NearestReference(True, f"nearest of {len(model.sources)} patches in the "
                                      f"{sub_model} bank",
                                image_id=ref_id, image=self.reference_image(ref_id),
                                patch=(index // gw, index % gw), distance=float(dist[0, r, c]))

    def reference_image(self, image_id: str) -> np.ndarray | None:
        """A reference map: from the exported folder, else from the run's manifest."""
        from hdmap_ad.data.maps import read_map

        try:
            return read_map(self.manifest.loc[image_id, "path"])
        except (KeyError, InputError, OSError):
            pass
        if self._bundle is not None or (self.run.exported_path(self.target) / "model.json"
                                        ).is_file():
            return self.bundle.reference_maps().get(image_id)
        return None
