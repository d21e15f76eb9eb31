"""The metrics JSON of one target ``results/{domain}_{experiment}.json``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from hdmap_ad.banks.references import threshold_unavailable
from hdmap_ad.gating import BOTH, is_per_condition
from hdmap_ad.metrics.image import (
    TEST_TUNED,
    best_accuracy,
    detection_metrics,
    round_floats,
)

CONDITIONS = ("cold", "warm")


def gate_summary(test: pd.DataFrame, gated: bool) -> dict[str, Any]:
    """Gate accuracy and the condition x label confusion of decisions (gated banks only).

    The decision counted is the sub-bank whose score was kept (``gate`` column): for
    ``both-min`` and ``fallback`` that is the winning bank.
    """
    if not gated:
        return {"accuracy": None, "note": "ungated: one bank, no gate decision"}
    known = test[test.condition.isin(CONDITIONS)]
    out: dict[str, Any] = {
        "accuracy": float((known.gate == known.condition).mean()) if len(known) else None
    }
    confusion: dict[str, dict[str, int]] = {}
    for cond in CONDITIONS:
        for label in sorted(test.label.unique()):
            grp = known[(known.condition == cond) & (known.label == label)]
            confusion[f"{cond}/{label}"] = {
                "to_cold": int((grp.gate == "cold").sum()),
                "to_warm": int((grp.gate == "warm").sum()),
            }
    out["decisions"] = confusion
    if "routing" in test:
        out["searched_both"] = int((test.routing == BOTH).sum())
    return out


def check_finite_scores(scores: pd.DataFrame, where: str, step: str = "metrics") -> None:
    """Refuse NaN or inf image scores of a scores table read from ``where``, naming the step
    and the first such map: the score step refuses them, so only an older or edited scores
    file holds one (sklearn would fail on it, a threshold would become inf)."""
    from hdmap_ad.errors import InputError

    bad = ~np.isfinite(scores.score.to_numpy(dtype=np.float64))
    if bad.any():
        row = scores[bad].iloc[0]
        raise InputError(f"{where}: {step}: {row.role} map {row.image_id!r} has score "
                         f"{row.score} ({int(bad.sum())} non-finite); re-run the score step")


def bank_counts(bank_meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per sub-model: the fit step's counts (``sub_banks``) and what the experiment's
    score-stage options amount to for its references (``Method.score_counts``, e.g. SPADE's
    ``image_k_effective``: its K clamped to the references)."""
    from collections import Counter

    from hdmap_ad.methods import MethodConfig

    exp = bank_meta["experiment"]
    cfg = MethodConfig.from_dict(exp["method"], f"experiments.{exp['key']}.method")
    refs = Counter(r["sub_bank"] for r in bank_meta["references"])
    return {name: {**counts, **cfg.method.score_counts(cfg.options, refs[name])}
            for name, counts in bank_meta["sub_banks"].items()}


def build_metrics(
    scores: pd.DataFrame,
    bank_meta: dict[str, Any],
    provenance: dict[str, Any],
    pixel: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything reported for one domain x experiment, with stable key order and rounding.

    Args:
        scores: the scores table (``hdmap_ad.scoring.score``), test and reference_cv rows.
        bank_meta: the bank's JSON metadata (experiment params, gate fit, references).
        provenance: dataset / features provenance (data hash, weights sha256, versions).
        pixel: pixel AUROC and PRO (FPR <= 0.3) where ground-truth masks exist, else None.
    """
    test = scores[scores.role == "test"]
    cv = scores[scores.role == "reference_cv"]
    y = (test.label != "good").to_numpy().astype(np.int64)
    s = test.score.to_numpy()
    _, best_thr = best_accuracy(y, s)
    deploy_thr = float(cv.score.max()) if len(cv) else None
    exp = bank_meta["experiment"]
    overall = detection_metrics(y, s, best_thr, deploy_thr)
    per_condition = {}
    for cond in CONDITIONS:
        grp = test[test.condition == cond]
        if len(grp):
            yc = (grp.label != "good").to_numpy().astype(np.int64)
            per_condition[cond] = detection_metrics(yc, grp.score.to_numpy(), best_thr,
                                                    deploy_thr)
    metrics = {
        "experiment": exp["key"],
        "method": exp["method"]["name"],
        "metrics": overall,
        "pixel": pixel,
        "per_condition": per_condition,
        "test_tuned": {
            "keys": [*TEST_TUNED, "thresholds.best"],
            "note": "tuned on the test scores themselves (the threshold is picked on the test "
                    "maps): for comparison with figures tuned the same way only; the "
                    "deployable figures use a threshold fit on the references alone",
        },
        "thresholds": {
            "deployable": deploy_thr,
            "deployable_note": (
                "max reference score from sub-models fit without that reference "
                f"({min(exp['deploy_folds'], len(bank_meta['references']))}-fold, "
                "stratified by sub-model); fit on references only"
                if deploy_thr is not None else
                "unavailable: " + (threshold_unavailable(
                    [r["sub_bank"] for r in bank_meta["references"]], exp["deploy_folds"])
                    or "no reference could be scored by a model fit without it")
            ),
            "best": best_thr,
            "best_note": "tuned on the test scores themselves (for comparison only)",
        },
        "gate": gate_summary(test, is_per_condition(exp["gate"])) | {
            "mode": bank_meta["gate"]["mode"],
            "threshold": bank_meta["gate"]["threshold"],
            "fit": bank_meta["gate"]["fit"],
        },
        "counts": {
            "test_scored": int(len(test)),
            "references": len(bank_meta["references"]),
            "reference_cv_scored": int(len(cv)),
            "bank": bank_counts(bank_meta),
        },
        "protocol": {
            "references": exp["references"]["protocol"],
            "leaky": exp["references"]["protocol"] == "user_leaky",
        },
        "params": exp,
        "provenance": provenance,
    }
    return round_floats(metrics)


def metrics_step(scores_path: str, meta_path: str, manifest_path: str,
                 feature_paths: list[str], domain: str, out: str, progress: bool = True) -> None:
    """The ``metrics`` step: image metrics, pixel metrics where masks exist and the method
    localizes, gate summary and provenance, written as one JSON. ``progress``: the pixel
    metrics' bars (maps/s) on stderr."""
    import pyarrow.parquet as pq

    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.io import read_json, write_json
    from hdmap_ad.methods import get_method
    from hdmap_ad.metrics.pixel import masked_pixel_metrics
    from hdmap_ad.provenance import provenance

    table = pq.read_table(scores_path)
    scores = table.drop_columns(["patch_scores"]).to_pandas()
    check_finite_scores(scores, scores_path)
    meta = read_json(meta_path)
    manifest = read_manifest(manifest_path)
    prov = provenance(domain, manifest, feature_paths)
    scores_meta = json.loads((table.schema.metadata or {}).get(b"hdmap_ad", b"{}"))
    # the score step's thread count stays in the scores' metadata: here it would make the
    # metrics JSON of the same params and data differ between --cores settings
    # the model metadata holds the fit step's view of the experiment; the scores the whole
    # experiment (score-stage options included), which the metrics report
    if "experiment" in scores_meta:
        meta = {**meta, "experiment": scores_meta["experiment"]}
    test = (scores.role == "test").to_numpy()
    pixel = None
    rows = manifest.set_index("image_id").loc[scores.image_id[test]]
    sizes = list(zip(rows.height, rows.width, strict=True)) if "height" in rows else []
    first_layer = next(iter(prov["features"].values()))
    mixed = len(set(sizes)) > 1
    # aspect-pad on maps of several sizes: each grid covers a different share of padding, so
    # no common pixel frame exists; pixel metrics are then not reported
    if get_method(meta["experiment"]["method"]["name"]).localizes and not (
            mixed and first_layer.get("resize") == "aspect-pad"):
        shape = tuple(sizes[0]) if sizes else tuple(first_layer["map_shape"][:2])
        pixel = masked_pixel_metrics(
            table.column("patch_scores").combine_chunks().to_numpy_ndarray()[test],
            rows.mask_path.tolist(), (scores.label[test] == "good").to_numpy(), shape,
            own_shapes=sizes if mixed else None, progress=progress,
        )
    write_json(out, build_metrics(scores, meta, prov, pixel))
