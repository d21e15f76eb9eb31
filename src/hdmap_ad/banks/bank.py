"""The gate around any method: fit one sub-model per condition (or one mixed), store, load.

An experiment's fitted state is a dict of sub-models ``{name: FittedModel}``: ``{"mixed":
...}`` ungated, ``{"cold": ..., "warm": ...}`` gated, each fit by the experiment's method
(``hdmap_ad.methods``) on its own references only. Stored as a folder with one file set per
sub-model (``<name>.npz`` + ``<name>.json``) plus a JSON file describing how it was made
(references, gate fit, method, sizes). Historically "bank" (PatchCore's memory bank): the
word stays for the sub-model of any method.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdmap_ad.banks.references import threshold_unavailable
from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.gating import COLD, MIXED, WARM, GateFit, MapStats, get_gate
from hdmap_ad.io import atomic_dir, write_json
from hdmap_ad.methods import FitContext, FittedModel, load_model, save_model
from hdmap_ad.methods.base import non_finite_arrays


def fit_gate(refs: pd.DataFrame, mode: str) -> GateFit:
    """Gate ``mode`` fit on the references only (never on test labels): the registry's
    :meth:`hdmap_ad.gating.Gate.fit` on the ``p90`` and ``condition`` columns of ``refs``."""
    return get_gate(mode).fit(MapStats.of(refs))


def assign_references(refs: pd.DataFrame, mode: str, fit: GateFit) -> np.ndarray:
    """Sub-model of each reference (:meth:`hdmap_ad.gating.Gate.assign`): its known
    condition, else the gate's decision; ``mixed`` for every reference of an ungated fit."""
    return get_gate(mode).assign(MapStats.of(refs), fit)


def fit_sub_models(
    desc: np.ndarray, assignment: np.ndarray, exp: ExperimentConfig, device: str = "cpu",
    progress: bool = False, layout: dict[str, Any] | None = None,
) -> dict[str, FittedModel]:
    """Fit the experiment's method once per sub-model, each on its own references only.

    Args:
        desc: ``(N, H, W, D)`` reference descriptors.
        assignment: ``(N,)`` sub-model name per reference (``mixed``, or ``cold``/``warm``).
        exp: the experiment; its ``method`` (name and options) and ``seed`` drive the fit.
        device: resolved device (``cpu`` | ``cuda``) for methods that can use a GPU.
        layout: what the descriptor channels are (``DescriptorSource.layout``), for methods
            that need it (STFPM's student).

    Returns:
        sub-model name -> fitted model, in sorted name order.
    """
    method = exp.method.method
    models = {}
    for name in sorted(set(assignment)):
        pos = np.flatnonzero(assignment == name)
        ctx = FitContext(seed=exp.seed, device=device, where=f"experiments.{exp.key}.method",
                         ref_ids=tuple(str(i) for i in pos), progress=progress,
                         layout=layout)
        # contiguous references (ungated: all of them) as a view, not a copy of the input
        own = desc[pos[0] : pos[-1] + 1] if pos[-1] - pos[0] + 1 == len(pos) else desc[pos]
        models[name] = method.fit(own, exp.method.options, ctx)
    return models


def reference_folds(assignment: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold of each reference, stratified by sub-model: references are ranked sub-model by
    sub-model (sorted names, original order within) and dealt round-robin, so each fold holds
    about the same share of every sub-model and, with one reference per sub-model, the
    references land in different folds instead of all in fold 0."""
    order = np.concatenate([np.flatnonzero(assignment == name)
                            for name in sorted(set(assignment))])
    folds = np.empty(len(assignment), dtype=np.int64)
    folds[order] = np.arange(len(order)) % n_folds
    return folds


def cv_folds(refs: pd.DataFrame, exp: ExperimentConfig, fit: GateFit) -> np.ndarray | None:
    """Fold of each reference for the deployable threshold (``None``: no folds, when
    :func:`threshold_unavailable` gives a reason)."""
    assignment = assign_references(refs, exp.gate, fit)
    if threshold_unavailable(assignment, exp.deploy_folds) is not None:
        return None
    return reference_folds(assignment, min(exp.deploy_folds, len(refs)))


def fit_fold_models(refs: pd.DataFrame, desc: np.ndarray, exp: ExperimentConfig,
                    fit: GateFit, device: str = "cpu", progress: bool = False,
                    layout: dict[str, Any] | None = None) -> dict[int, dict[str, FittedModel]]:
    """The sub-models that score each fold of references for the deployable threshold.

    Fold ``f``'s sub-models are fit on the references outside ``f`` only (each on its own
    condition's, as the experiment's); a sub-model left with too few references is skipped,
    and then a ``mixed`` one on all references outside ``f`` is fit too (the documented
    fallback of :func:`hdmap_ad.scoring.score.reference_cv_scores`). Fit in the fit step, so
    that scoring never fits or trains. Empty when :func:`cv_folds` gives no folds.
    ``progress``: a bar over the folds on stderr (the fit step's log).
    """
    from tqdm import tqdm

    folds = cv_folds(refs, exp, fit)
    if folds is None:
        return {}
    assignment = assign_references(refs, exp.gate, fit)
    expected = sorted(set(assignment))
    min_refs = exp.method.method.min_references(exp.method.options)
    out: dict[int, dict[str, FittedModel]] = {}
    for f in tqdm(range(int(folds.max()) + 1), desc="reference folds", unit="fold",
                  disable=not progress, mininterval=2.0):
        held, kept = folds == f, folds != f
        if not held.any() or kept.sum() < min_refs:
            continue
        kept_assign = assignment[kept]
        usable = [name for name in sorted(set(kept_assign))
                  if (kept_assign == name).sum() >= min_refs]
        keep_mask = np.isin(kept_assign, usable)
        models = fit_sub_models(desc[kept][keep_mask], kept_assign[keep_mask], exp, device,
                                layout=layout)
        if MIXED not in models and any(name not in models for name in expected):
            models[MIXED] = fit_sub_models(
                desc[kept], np.full(int(kept.sum()), MIXED, dtype=object), exp, device,
                layout=layout)[MIXED]
        out[f] = models
    return out


CV_DIR = "cv"


def save_models(folder: str | Path, models: dict[str, FittedModel], exp: ExperimentConfig,
                fold_models: dict[int, dict[str, FittedModel]] | None = None) -> None:
    """Write every sub-model into ``folder`` and the fold sub-models into
    ``folder/cv/fold<f>/`` (the folder replaced as a whole, atomically)."""
    with atomic_dir(folder) as tmp:
        for name, model in models.items():
            save_model(tmp, name, exp.method.method, exp.method.options, model)
        for f, fold in (fold_models or {}).items():
            sub = Path(tmp) / CV_DIR / f"fold{f}"
            sub.mkdir(parents=True)
            for name, model in fold.items():
                save_model(sub, name, exp.method.method, exp.method.options, model)


def load_fold_models(folder: str | Path, meta: dict[str, Any], exp: ExperimentConfig,
                     device: str = "cpu") -> dict[int, dict[str, FittedModel]]:
    """Read the fold sub-models named in ``meta["cv"]`` (see :func:`save_models`)."""
    method = exp.method.method
    out = {}
    for f, names in sorted((meta.get("cv") or {}).get("sub_models", {}).items(),
                           key=lambda kv: int(kv[0])):
        ctx = FitContext(seed=exp.seed, device=device,
                         where=f"experiments.{exp.key}.method (fold {f})")
        sub = Path(folder) / CV_DIR / f"fold{f}"
        out[int(f)] = {name: load_model(sub, name, method, exp.method.options, ctx)
                       for name in names}
    return out


def load_models(folder: str | Path, meta: dict[str, Any], exp: ExperimentConfig,
                device: str = "cpu") -> dict[str, FittedModel]:
    """Read the sub-models named in the model metadata ``meta`` from ``folder``."""
    method = exp.method.method
    if meta["experiment"].get("method") != exp.method.fit_dict():
        raise InputError(f"{folder}: fitted with method {meta['experiment'].get('method')}, "
                         f"but experiments.{exp.key}.method is {exp.method.fit_dict()}; "
                         "re-run the fit step")
    ctx = FitContext(seed=exp.seed, device=device, where=f"experiments.{exp.key}.method")
    return {name: load_model(folder, name, method, exp.method.options, ctx)
            for name in sorted(meta["sub_banks"])}


def read_fit(meta_path: str | Path, manifest_path: str | Path
             ) -> tuple[dict[str, Any], GateFit, pd.DataFrame, pd.DataFrame]:
    """What the fit step recorded, for the steps that score with its model: ``(meta, gate
    fit, manifest, references)``, the references as manifest rows in the fit's order."""
    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.io import read_json

    meta = read_json(meta_path)
    fit = GateFit(meta["gate"]["threshold"], meta["gate"]["fit"])
    manifest = read_manifest(manifest_path)
    ref_ids = [r["image_id"] for r in meta["references"]]
    refs = manifest.set_index("image_id").loc[ref_ids].reset_index()
    return meta, fit, manifest, refs


def build_bank(
    refs: pd.DataFrame, desc: np.ndarray, exp: ExperimentConfig, device: str = "cpu",
    progress: bool = False, layout: dict[str, Any] | None = None,
) -> tuple[dict[str, FittedModel], GateFit, np.ndarray]:
    """Fit the gate on ``refs``, assign each to a sub-model and fit the method on each.

    Returns ``(models, gate_fit, assignment)``.
    """
    fit = fit_gate(refs, exp.gate)
    assignment = assign_references(refs, exp.gate, fit)
    gate = get_gate(exp.gate)
    if gate.per_condition:
        for cond in gate.sub_models:
            if not (assignment == cond).any():
                raise InputError(
                    f"experiments.{exp.key}: gated bank has no {cond} references "
                    f"(gate {exp.gate}, threshold {fit.threshold}); add references of both "
                    "conditions or use gate: mixed"
                )
    method = exp.method.method
    for name in sorted(set(assignment)):
        n = int((assignment == name).sum())
        if n < method.min_references(exp.method.options):
            raise InputError(
                f"experiments.{exp.key}.method: {method.name} needs at least "
                f"{method.min_references(exp.method.options)} references per sub-model; "
                f"sub-model {name!r} has {n}")
    return (fit_sub_models(desc, assignment, exp, device, progress=progress, layout=layout),
            fit, assignment)


def bank_metadata(
    exp: ExperimentConfig,
    refs: pd.DataFrame,
    assignment: np.ndarray,
    fit: GateFit,
    models: dict[str, FittedModel],
    shape: tuple[int, int, int],
) -> dict[str, Any]:
    """JSON-ready description of a fitted experiment (gate, sub-models, references).

    ``shape`` is the descriptors' ``(H, W, D)``. ``sub_banks`` gives, per sub-model, the
    reference patches it was fit on and the method's own counts (PatchCore: ``kept``).
    """
    grid = shape[:2]
    per_bank_patches = {
        name: int((assignment == name).sum()) * grid[0] * grid[1] for name in models
    }
    return {
        "experiment": exp.fit_dict(),
        "method": exp.method.name,
        "gate": {"mode": exp.gate, "threshold": fit.threshold, "fit": fit.method},
        "grid": list(grid),
        "dim": int(shape[2]),
        "sub_banks": {
            name: {"patches": per_bank_patches[name], **m.counts()}
            for name, m in models.items()
        },
        "references": [
            {"image_id": i, "condition": c, "sub_bank": a, "p90": round(float(p), 6)}
            for i, c, a, p in zip(refs.image_id, refs.condition, assignment, refs.p90, strict=True)
        ],
    }


def check_finite_fit(refs: pd.DataFrame, assignment: np.ndarray, fit: GateFit,
                     models: dict[str, FittedModel],
                     fold_models: dict[int, dict[str, FittedModel]], where: str) -> None:
    """Refuse a fit whose gate threshold or a sub-model's state (a bank, a Gaussian, network
    weights) holds NaN or inf, naming the sub-model and its references: it would score NaN
    or inf (descriptors are checked finite before any fit; this catches what a fit makes)."""
    if fit.threshold is not None and not np.isfinite(fit.threshold):
        raise InputError(f"{where}: gate threshold {fit.threshold} is not finite (p90 of "
                         f"references {refs.image_id.tolist()[:5]})")
    named = [(name, m, "") for name, m in sorted(models.items())] + [
        (name, m, f" (reference fold {f})") for f, ms in sorted(fold_models.items())
        for name, m in sorted(ms.items())]
    for name, model, fold in named:
        bad = non_finite_arrays(model.state()[0])
        if bad:
            ids = refs.image_id[assignment == name].tolist() if name in set(assignment) \
                else refs.image_id.tolist()
            raise InputError(f"{where}: sub-model {name!r}{fold} fitted on references "
                             f"{ids[:5]}{' ...' if len(ids) > 5 else ''} holds NaN or inf "
                             f"(arrays {bad[:3]}); a diverged training (lower lr) or "
                             "references of extreme values")


def write_bank_metadata(path: str | Path, meta: dict[str, Any]) -> None:
    write_json(path, meta)


def thread_counts() -> dict[str, int | None]:
    """The threads this process fits with: ``OMP_NUM_THREADS`` as set (None: unset), the
    BLAS pools' (threadpoolctl; the largest) and torch's intra-op threads (None where torch
    is not loaded). They split float sums differently, so the same fit on other thread counts
    gives models that differ in the last bits (scores by 2.2e-5 between 1 and 2 threads)."""
    import os

    from threadpoolctl import threadpool_info

    blas = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    torch = sys.modules.get("torch")
    return {"omp_num_threads": int(os.environ.get("OMP_NUM_THREADS") or 0) or None,
            "blas": max(blas) if blas else None,
            "torch": int(torch.get_num_threads()) if torch is not None else None}


def fit_experiment(exp: ExperimentConfig, manifest_path: str, feature_paths: list[str],
                   domain: str, model_dir: str, meta_path: str, device: str = "cpu") -> None:
    """The ``fit`` step: pick the references, fit the gate and one sub-model per condition
    (or one mixed), write the model folder and its metadata JSON."""
    from hdmap_ad.banks.references import select_references
    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.features.descriptors import DescriptorSource
    from hdmap_ad.provenance import provenance

    where = f"experiments.{exp.key}"
    manifest = read_manifest(manifest_path)
    test_conditions = manifest.condition[manifest.split == "test"]
    if get_gate(exp.gate).per_condition and not test_conditions.isin([COLD, WARM]).any():
        raise InputError(f"{where}.gate: {exp.gate!r} needs cold/warm conditions, which the "
                         f"maps of {manifest_path} do not have; use gate: mixed")
    refs = select_references(manifest, exp.references, f"{where}.references")
    prov = provenance(domain, manifest, feature_paths)
    resize = next(iter(prov["features"].values())).get("resize")
    sizes = set(zip(manifest.height, manifest.width, strict=True)) if "height" in manifest \
        else set()
    if exp.method.method.per_position and resize == "aspect-pad" and len(sizes) > 1:
        raise InputError(
            f"{where}.method: {exp.method.name} models each patch position, but these maps "
            f"have {len(sizes)} sizes and resize: aspect-pad pads each differently; use "
            "resize: bilinear for this backbone or a method that is not per-position")
    layer_paths, input_path = exp.split_features(feature_paths)
    source = DescriptorSource(layer_paths, refs.image_id.tolist(), exp.descriptor, where,
                              input_path=input_path)
    desc = source()
    models, fit, assignment = build_bank(refs, desc, exp, device, progress=True,
                                         layout=source.layout)
    fold_models = fit_fold_models(refs, desc, exp, fit, device, progress=True,
                                  layout=source.layout)
    check_finite_fit(refs, assignment, fit, models, fold_models, f"fit: {where}")
    meta = bank_metadata(exp, refs, assignment, fit, models, desc.shape[1:4])
    meta["cv"] = {"folds": exp.deploy_folds if fold_models else 0,
                  "sub_models": {str(f): sorted(m) for f, m in fold_models.items()}}
    meta["provenance"] = prov
    # the model's, never the metrics' (results/*.json stay byte-identical across --cores)
    meta["threads"] = thread_counts()
    print(f"fit {where}: threads {meta['threads']}", file=sys.stderr)  # the step's log
    save_models(model_dir, models, exp, fold_models)
    write_bank_metadata(meta_path, meta)
