"""Score a domain's test maps with a fitted experiment, plus held-out scores of the references.

Output is one table: a row per scored map with its gate decision, image score and patch-score
grid. ``role`` is ``test`` for test maps and ``reference_cv`` for references scored by
sub-models fit on the other folds of references (the normal-score sample the deployable
threshold is fit on; see ``hdmap_ad.metrics``). Works for every registered method.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from hdmap_ad.banks.bank import cv_folds
from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.gating import BOTH, MIXED, GateFit, MapStats, combine_both, route, searched
from hdmap_ad.io import write_table
from hdmap_ad.methods import FittedModel

BATCH_MAPS = 32
SCORE_COLUMNS = (
    "image_id", "role", "label", "condition", "index", "p90", "routing", "gate", "score"
)


def experiment_decisions(exp: ExperimentConfig, rows: pd.DataFrame, fit: GateFit) -> np.ndarray:
    """The experiment's gate applied to manifest ``rows`` (p90 and condition columns):
    :func:`hdmap_ad.gating.route`, as predict and the app route new maps."""
    return route(exp.gate_config, fit, MapStats.of(rows))


def score_routed(
    desc_of: Callable[[np.ndarray], np.ndarray],
    decisions: np.ndarray,
    models: dict[str, FittedModel],
    progress: bool = False,
    ids: Sequence[str] | None = None,
    where: str = "score",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score maps, each with the sub-model its gate decision names (any method).

    A ``both`` decision scores with every sub-model and keeps the lowest image score (with
    that sub-model's patch scores: :func:`hdmap_ad.gating.combine_both`, as predict does).

    Args:
        desc_of: returns ``(B, H, W, D)`` descriptors for an int array of map positions.
        decisions: ``(N,)`` sub-model name (or ``both``) per map.
        models: sub-model name -> fitted model.
        progress: a progress bar (maps/s) on stderr.
        ids: ``(N,)`` image ids, to name a map in errors (default: its position).
        where: the step and experiment, to name them in errors.

    Returns:
        ``(scores (N,), patch_scores (N, H, W), bank (N,))``: float32 scores and the name of
        the sub-model each kept score came from.

    Raises:
        InputError: a sub-model scored a map NaN or inf (image or patch score), naming the
            map: a NaN never wins the ``<`` below and would be written as inf.
    """
    from tqdm import tqdm

    n = len(decisions)
    scores = np.full(n, np.inf, dtype=np.float32)
    banks = np.empty(n, dtype=object)
    patches: np.ndarray | None = None
    bar = tqdm(total=n, unit="map", desc="score", disable=not progress, mininterval=2.0)
    for name in sorted(set(decisions)):
        pos = np.flatnonzero(decisions == name)
        candidates = searched(name, models)
        for start in range(0, len(pos), BATCH_MAPS):
            sel = pos[start : start + BATCH_MAPS]
            desc = desc_of(sel)
            b, h, w, _ = desc.shape
            if patches is None:
                patches = np.zeros((n, h, w), dtype=np.float32)
            scored = {}
            for bank in candidates:
                s, ps = models[bank].score(desc)
                _check_finite(s, ps, bank, [ids[i] if ids is not None else f"#{i}"
                                            for i in sel], where)
                scored[bank] = (s, ps)
            scores[sel], patches[sel], banks[sel] = combine_both(scored)
            bar.update(len(sel))
    bar.close()
    assert patches is not None
    return scores, patches, banks


def _check_finite(s: np.ndarray, ps: np.ndarray, bank: str, names: list[str],
                  where: str) -> None:
    bad = ~(np.isfinite(s) & np.isfinite(ps.reshape(len(ps), -1)).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: sub-model {bank!r} scored map {names[i]!r} {float(s[i])} (NaN or inf "
            f"in its image or patch scores; {int(bad.sum())} of {len(s)} in its batch): map "
            "values far beyond the references' (e.g. 1e30), or a diverged model (lower lr)")


def reference_cv_scores(
    refs: pd.DataFrame, ref_desc: np.ndarray, exp: ExperimentConfig, fit: GateFit,
    fold_models: dict[int, dict[str, FittedModel]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Score references with sub-models fit on the other folds (stratified by sub-model).

    ``fold_models``: the fit step's fold sub-models (``hdmap_ad.banks.bank.fit_fold_models``,
    stored with the model); ``None`` fits them here (tests and callers without a model folder).

    Each held-out reference is routed as a test map would be; where the routed sub-model has
    no references left in that fold, it is scored by a mixed model fit on all remaining
    references (documented fallback; with one reference per condition that is the other
    condition's reference). A reference is only reported when it was scored.

    Returns ``(scored (N,) bool, scores (N,), patch_scores (N, H, W), decisions (N,),
    bank (N,))``; ``scored`` is all False when there are fewer than two references or
    ``deploy_folds`` is 0 (no deployable threshold; saves refitting on full-train banks).
    """
    n = len(refs)
    h, w = ref_desc.shape[1:3]
    scored = np.zeros(n, dtype=bool)
    scores = np.zeros(n, dtype=np.float32)
    patches = np.zeros((n, h, w), dtype=np.float32)
    bank_used = np.empty(n, dtype=object)
    decisions = np.empty(n, dtype=object)
    folds = cv_folds(refs, exp, fit)
    if folds is None:
        return scored, scores, patches, decisions, bank_used
    if fold_models is None:
        from hdmap_ad.banks.bank import fit_fold_models

        fold_models = fit_fold_models(refs, ref_desc, exp, fit)
    decisions = experiment_decisions(exp, refs, fit)
    for f, models in sorted(fold_models.items()):
        held = folds == f
        route = decisions[held].copy()
        missing = ~np.isin(route, [*models, BOTH])
        if missing.any():
            route[missing] = MIXED  # a fold short of the routed sub-model: its mixed one
        held_pos = np.flatnonzero(held)
        s, ps, used = score_routed(lambda sel, hp=held_pos: ref_desc[hp[sel]], route, models,
                                   ids=refs.image_id.to_numpy()[held_pos].tolist(),
                                   where=f"score: experiments.{exp.key}: reference_cv fold {f}")
        scores[held_pos], patches[held_pos], bank_used[held_pos] = s, ps, used
        scored[held_pos] = True
    return scored, scores, patches, decisions, bank_used


def scores_table(rows: pd.DataFrame, role: str, decisions: np.ndarray, banks: np.ndarray,
                 scores: np.ndarray, patches: np.ndarray) -> pa.Table:
    """Arrow table of scored maps (columns ``SCORE_COLUMNS`` + ``patch_scores`` grid).

    ``routing`` is the gate's decision (``cold``, ``warm``, ``mixed`` or ``both``); ``gate`` is
    the sub-bank whose score was kept (the winner where both were searched).
    """
    n, h, w = patches.shape
    tensor_type = pa.fixed_shape_tensor(pa.float32(), (h, w))
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array(patches.reshape(-1), type=pa.float32()), h * w
    )
    return pa.table(
        {
            "image_id": pa.array(rows.image_id.tolist(), pa.string()),
            "role": pa.array([role] * n, pa.string()),
            "label": pa.array(rows.label.tolist(), pa.string()),
            "condition": pa.array(rows.condition.tolist(), pa.string()),
            "index": pa.array(rows["index"].to_numpy(np.int64)),
            "p90": pa.array(rows.p90.to_numpy(np.float64)),
            "routing": pa.array([str(x) for x in decisions], pa.string()),
            "gate": pa.array([str(x) for x in banks], pa.string()),
            "score": pa.array(scores.astype(np.float64)),
            "patch_scores": pa.ExtensionArray.from_storage(tensor_type, storage),
        }
    )


def write_scores(path: str, tables: list[pa.Table], metadata: dict) -> None:
    """Write the scores atomically; ``metadata`` (JSON) goes in the schema under ``hdmap_ad``."""
    table = pa.concat_tables(tables)
    meta = {b"hdmap_ad": json.dumps(metadata, sort_keys=True).encode()}
    write_table(path, table.replace_schema_metadata(meta))


def score_experiment(exp: ExperimentConfig, manifest_path: str, feature_paths: list[str],
                     model_dir: str, meta_path: str, out: str, device: str = "cpu",
                     progress: bool = True) -> None:
    """The ``score`` step: test maps through the gate and the fitted sub-models, then the
    references' held-out scores; one Parquet table with the experiment in its metadata."""
    from hdmap_ad.banks.bank import load_fold_models, load_models, read_fit
    from hdmap_ad.banks.references import scored_rows
    from hdmap_ad.features.descriptors import DescriptorSource

    where = f"experiments.{exp.key}"
    meta, fit, manifest, refs = read_fit(meta_path, manifest_path)
    ref_ids = refs.image_id.tolist()
    test = scored_rows(manifest, refs, exp.references.protocol)
    models = load_models(model_dir, meta, exp, device)
    decisions = experiment_decisions(exp, test, fit)
    layer_paths, input_path = exp.split_features(feature_paths)
    scores, patches, used = score_routed(
        DescriptorSource(layer_paths, test.image_id.tolist(), exp.descriptor, where,
                         stream=True, input_path=input_path),
        decisions, models, progress=progress, ids=test.image_id.tolist(),
        where=f"score: {where}",
    )
    ref_desc = DescriptorSource(layer_paths, ref_ids, exp.descriptor, where,
                                input_path=input_path)()
    ok, cv_scores, cv_patches, cv_dec, cv_used = reference_cv_scores(
        refs, ref_desc, exp, fit, load_fold_models(model_dir, meta, exp, device))
    write_scores(
        out,
        [
            scores_table(test, "test", decisions, used, scores, patches),
            # only references that were scored (none with one reference or deploy_folds 0)
            scores_table(refs[ok], "reference_cv", cv_dec[ok], cv_used[ok], cv_scores[ok],
                         cv_patches[ok]),
        ],
        {"experiment": exp.to_dict(), "gate": meta["gate"],
         "provenance": meta.get("provenance"),
         # BLAS / faiss sum in thread-dependent order: scores can differ in the last float
         # bits between thread counts, so the count is recorded with them
         "threads": int(os.environ.get("OMP_NUM_THREADS") or 0) or None},
    )
