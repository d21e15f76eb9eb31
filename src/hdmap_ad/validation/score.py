"""The ``validation-score`` step: an experiment's validation AUROC on a validation set.

The fit step stores reference-fold models (:func:`hdmap_ad.banks.bank.fit_fold_models`):
fold ``f``'s sub-models never saw the references of fold ``f``. Each fold's models score
the synthetic anomalies made from that fold's held-out references
(:mod:`hdmap_ad.validation.build`), routed by the experiment's gate as a test map would be,
and the held-out references themselves (the normal side, scored exactly as the score step
scores them for the deployable threshold: :func:`hdmap_ad.scoring.score.reference_cv_scores`).
Validation AUROC = anomalies vs held-out references; no test map is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError


def model_bytes(model_dir: str | Path) -> int:
    """Bytes of the stored headline model (its sub-models' files, not the fold models): what
    selection calls the cheaper point when two tie."""
    return sum(p.stat().st_size for p in sorted(Path(model_dir).iterdir()) if p.is_file())


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float | None:
    """AUROC of anomalies (positive) against normals; None without both."""
    from sklearn.metrics import roc_auc_score

    if len(normal) == 0 or len(anomalous) == 0:
        return None
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(y, np.r_[normal, anomalous]))


def score_anomalies(vset: pd.DataFrame, desc_of: Any, exp: ExperimentConfig, fit: Any,
                    fold_models: dict[int, dict[str, Any]], where: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(scored (M,) bool, scores (M,))`` of validation maps, each by its fold's models.

    A fold without models (the fit skipped it) leaves its maps unscored; a map routed to a
    sub-model its fold lacks is scored by that fold's mixed model, as held-out references
    are (:func:`hdmap_ad.scoring.score.reference_cv_scores`).
    """
    from hdmap_ad.gating import BOTH, MIXED
    from hdmap_ad.scoring.score import experiment_decisions, score_routed

    scored = np.zeros(len(vset), dtype=bool)
    scores = np.zeros(len(vset), dtype=np.float64)
    decisions = experiment_decisions(exp, vset, fit)
    folds = vset.fold.to_numpy()
    ids = vset.image_id.to_numpy()
    for f, models in sorted(fold_models.items()):
        pos = np.flatnonzero(folds == f)
        if not len(pos):
            continue
        route = decisions[pos].copy()
        missing = ~np.isin(route, [*models, BOTH])
        route[missing] = MIXED
        s, _, _ = score_routed(lambda sel, p=pos: desc_of(p[sel]), route, models,
                               ids=ids[pos].tolist(), where=f"{where} fold {f}")
        scores[pos], scored[pos] = s, True
    return scored, scores


def validate_experiment(exp: ExperimentConfig, set_dir: str, set_features: list[str],
                        manifest_path: str, feature_paths: list[str], model_dir: str,
                        meta_path: str, out: str, device: str = "cpu") -> None:
    """The ``validation-score`` step: write ``out`` (JSON) with the validation AUROC (pooled and per
    condition), the anomaly and normal counts, the model's bytes and every map's score.

    Raises:
        InputError: the set was made for other references or folds than the model's, the
            model has no reference folds, or nothing was scored.
    """
    from hdmap_ad.banks.bank import cv_folds, load_fold_models, read_fit
    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.features.descriptors import DescriptorSource
    from hdmap_ad.io import read_json, write_json
    from hdmap_ad.metrics.image import round_floats
    from hdmap_ad.scoring.score import reference_cv_scores
    from hdmap_ad.validation.build import MANIFEST, SPEC

    where = f"validation-score: experiments.{exp.key}"
    meta, fit, manifest, refs = read_fit(meta_path, manifest_path)
    ref_ids = refs.image_id.tolist()
    vset = read_manifest(Path(set_dir) / MANIFEST)
    spec = read_json(Path(set_dir) / SPEC)
    folds = cv_folds(refs, exp, fit)
    if folds is None:
        raise InputError(f"{where}: the model has no reference folds to score a validation "
                         "set with (deploy_folds 0, or one reference per sub-model)")
    fold_of = dict(zip(refs.image_id, folds.tolist(), strict=True))
    made_for = vset.source.map(fold_of)
    if made_for.isna().any() or (made_for.to_numpy() != vset.fold.to_numpy()).any():
        bad = vset.source[made_for.isna() | (made_for != vset.fold)].iloc[0]
        raise InputError(f"{set_dir}: made from reference {bad!r} in another fold than "
                         f"{exp.key}'s fit (or not one of its references): the set and the "
                         "experiment disagree on references or folds; rebuild both")
    fold_models = load_fold_models(model_dir, meta, exp, device)
    layer_paths, input_path = exp.split_features(feature_paths)
    ref_desc = DescriptorSource(layer_paths, ref_ids, exp.descriptor, f"experiments.{exp.key}",
                                input_path=input_path)()
    ok, normal, _, _, _ = reference_cv_scores(refs, ref_desc, exp, fit, fold_models)
    v_layers, v_input = exp.split_features(set_features)
    source = DescriptorSource(v_layers, vset.image_id.tolist(), exp.descriptor,
                              f"experiments.{exp.key}", stream=True, input_path=v_input)
    scored, anomalous = score_anomalies(vset, source, exp, fit, fold_models, where)
    value = auroc(normal[ok], anomalous[scored])
    if value is None:
        raise InputError(f"{where}: {int(ok.sum())} held-out references and "
                         f"{int(scored.sum())} anomalies scored; validation AUROC needs both")
    conditions = {}
    for c in sorted(set(refs.condition[ok]) | set(vset.condition[scored])):
        conditions[c] = {"auroc": auroc(normal[ok & (refs.condition == c).to_numpy()],
                                        anomalous[scored & (vset.condition == c).to_numpy()]),
                         "n_normal": int((ok & (refs.condition == c).to_numpy()).sum()),
                         "n_anomaly": int((scored & (vset.condition == c).to_numpy()).sum())}
    result = {
        "experiment": exp.key,
        "validation_set": {"id": Path(set_dir).parent.name, **spec},
        "auroc": value,
        "n_normal": int(ok.sum()),
        "n_anomaly": int(scored.sum()),
        "n_anomaly_unscored": int((~scored).sum()),
        "per_condition": conditions,
        "model_bytes": model_bytes(model_dir),
        "normal": [{"image_id": i, "condition": c, "fold": int(f), "score": float(s)}
                   for i, c, f, s, k in zip(refs.image_id, refs.condition, folds, normal, ok,
                                            strict=True) if k],
        "anomalies": [{"image_id": r.image_id, "source": r.source, "condition": r.condition,
                       "fold": int(r.fold), "strength": float(r.strength),
                       "contrast": float(r.contrast), "score": float(s)}
                      for r, s, k in zip(vset.itertuples(), anomalous, scored, strict=True)
                      if k],
    }
    write_json(out, round_floats(result, 9))
