"""The ``validation-set`` step: synthetic anomalies made from an experiment's references.

For each reference fold (the folds the fit step holds out to fit its fold models,
:func:`hdmap_ad.banks.bank.cv_folds`) and each sub-model's references in it (a condition, or
all for ``mixed``), every held-out reference gives ``per_reference`` anomalous maps by the
set's recipe (:mod:`hdmap_ad.validation.recipes`); a recipe that reads a donor takes another
reference held out of the same fold, of the same sub-model where there is one. So neither
the map nor the donor was seen by the fold model that will score it, and no test map is
read. Each anomaly is seeded by ``(seed, fold, sub-model, reference, draw)``.

Output folder (replaced as a whole; :func:`hdmap_ad.outputs.replacing_folder`)::

    <out>/maps/000000.tiff ...     float32 anomalous maps (as HDMAP maps are stored)
    <out>/masks/000000.tiff ...    uint8 masks (255 where the recipe changed the map)
    <out>/manifest.parquet         one row per map, the domain manifest's columns (so the
                                   ``extract`` step caches its features like any map's) +
                                   fold, sub_model, source, donor, recipe, strength, contrast
    <out>/spec.json                the set's spec: recipe, options, strength, references
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from hdmap_ad.errors import InputError
from hdmap_ad.validation import ValidationConfig

#: Columns a validation manifest adds to the domain manifest's.
EXTRA_COLUMNS = ("fold", "sub_model", "source", "donor", "recipe", "strength", "contrast")
MANIFEST = "manifest.parquet"
SPEC = "spec.json"
#: ``split`` and ``label`` of every validation map.
SPLIT, LABEL = "validation", "synthetic"


def set_folds(spec: dict[str, Any], manifest: pd.DataFrame, where: str
              ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(references, fold (N,), sub-model (N,))`` as the fit step deals them, for a set's
    ``references``, ``gate`` and ``deploy_folds`` (:func:`hdmap_ad.banks.bank.cv_folds`)."""
    from hdmap_ad.banks.bank import assign_references, cv_folds, fit_gate
    from hdmap_ad.banks.references import select_references, threshold_unavailable
    from hdmap_ad.config import ExperimentConfig
    from hdmap_ad.specs import ReferenceConfig

    refs_cfg = ReferenceConfig.from_dict(spec["references"], f"{where}.references")
    gate = spec["gate"]
    exp = ExperimentConfig(key=where, backbone="", layers=(), references=refs_cfg, gate=gate,
                           deploy_folds=int(spec["deploy_folds"]))
    refs = select_references(manifest, refs_cfg, f"{where}.references")
    fit = fit_gate(refs, gate)
    assignment = assign_references(refs, gate, fit)
    folds = cv_folds(refs, exp, fit)
    if folds is None:
        why = threshold_unavailable(assignment, exp.deploy_folds)
        raise InputError(f"{where}: no held-out reference fold to make anomalies from ({why})")
    return refs, folds, assignment


def _donor(pos: int, fold_pos: np.ndarray, same: np.ndarray, rng: np.random.Generator) -> int:
    """Another reference held out of the same fold (same sub-model first), else ``pos``."""
    for pool in (same, fold_pos):
        others = pool[pool != pos]
        if len(others):
            return int(rng.choice(others))
    return pos


def _stats(arr: np.ndarray) -> dict[str, float]:
    gray = arr if arr.ndim == 2 else arr.mean(axis=-1)
    return {"mean": float(gray.mean()), "p90": float(np.percentile(gray, 90)),
            "max": float(gray.max())}


def make_anomalies(cfg: ValidationConfig, refs: pd.DataFrame, folds: np.ndarray,
                   assignment: np.ndarray, read: Any, progress: bool = False
                   ) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Every anomaly of the set: ``(map, mask, row)`` in fold, sub-model, reference order.

    Args:
        cfg: the validation set (recipe, options, strength, per_reference, seed).
        refs: the references (manifest rows, ``image_id``, ``condition``, ``path``).
        folds: ``(N,)`` fold of each reference; ``assignment``: ``(N,)`` its sub-model.
        read: ``path -> float32 map`` (:func:`hdmap_ad.data.maps.read_map`).

    Returns:
        maps ``(H, W[, C])`` float32, masks ``(H, W)`` bool, and per map its ``fold``,
        ``sub_model``, ``source`` and ``donor`` (image ids), ``condition`` (the source's),
        ``strength`` and measured ``contrast``.
    """
    from tqdm import tqdm

    from hdmap_ad.validation.recipes import contrast

    recipe = cfg.recipe_impl
    groups = sorted(set(assignment))
    out = []
    cache: dict[int, np.ndarray] = {}

    def image(pos: int) -> np.ndarray:
        if pos not in cache:
            cache[pos] = read(refs.path.iloc[pos])
        return cache[pos]

    bar = tqdm(total=len(refs) * cfg.per_reference, unit="map", desc=f"{cfg.key} anomalies",
               disable=not progress, mininterval=2.0, file=sys.stderr)
    for f in sorted(set(folds.tolist())):
        fold_pos = np.flatnonzero(folds == f)
        for gi, g in enumerate(groups):
            same = np.flatnonzero((folds == f) & (assignment == g))
            for pos in same.tolist():
                for j in range(cfg.per_reference):
                    rng = np.random.default_rng([cfg.seed, int(f), gi, pos, j])
                    lo, hi = cfg.strength
                    strength = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
                    donor = _donor(pos, fold_pos, same, rng) if recipe.uses_donor else pos
                    src = image(pos)
                    anomalous, mask = recipe.make(src, image(donor), strength, cfg.options, rng)
                    out.append((anomalous, mask, {
                        "fold": int(f), "sub_model": str(g),
                        "source": str(refs.image_id.iloc[pos]),
                        "donor": str(refs.image_id.iloc[donor]) if recipe.uses_donor else "",
                        "condition": str(refs.condition.iloc[pos]),
                        "strength": strength, "contrast": contrast(src, anomalous, mask)}))
                    bar.update(1)
    bar.close()
    return out


def build_validation_set(spec: dict[str, Any], manifest_path: str, out: str,
                         progress: bool = True) -> None:
    """The ``validation-set`` step (see the module docstring).

    Args:
        spec: ``{"validation": ValidationConfig.to_dict(), "references": {...},
            "gate": <name>, "deploy_folds": n}`` (a selection plan's ``set_spec``).
        manifest_path: the domain manifest.
        out: the set's folder (replaced).
    """
    import tifffile

    from hdmap_ad.data.manifest import COLUMNS, read_manifest
    from hdmap_ad.data.maps import read_map
    from hdmap_ad.io import atomic_path, write_json, write_table
    from hdmap_ad.outputs import FOLDER, check_output, replacing_folder

    cfg = ValidationConfig.from_spec(spec["validation"])
    where = f"validation.{cfg.key}"
    check_output(out, "--out", kind=FOLDER, inputs=[manifest_path])
    manifest = read_manifest(manifest_path)
    refs, folds, assignment = set_folds(spec, manifest, where)
    anomalies = make_anomalies(cfg, refs, folds, assignment, read_map, progress=progress)
    rows = []
    with replacing_folder(out) as tmp:
        for sub in ("maps", "masks"):
            (tmp / sub).mkdir()
        for i, (arr, mask, info) in enumerate(anomalies):
            name = f"{i:06d}.tiff"
            with atomic_path(tmp / "maps" / name) as part:
                tifffile.imwrite(part, arr, photometric="rgb" if arr.ndim == 3
                                 else "minisblack")
                digest = hashlib.sha256(part.read_bytes()).hexdigest()
            with atomic_path(tmp / "masks" / name) as part:
                tifffile.imwrite(part, mask.astype(np.uint8) * 255, photometric="minisblack")
            rows.append({
                "image_id": f"{SPLIT}/{cfg.key}/{i:06d}", "path": str(Path(out) / "maps" / name),
                "split": SPLIT, "label": LABEL, "index": i, "condition": info["condition"],
                "mask_path": str(Path(out) / "masks" / name), **_stats(arr), "sha256": digest,
                "height": int(arr.shape[0]), "width": int(arr.shape[1]),
                **{k: info[k] for k in EXTRA_COLUMNS if k in info},
                "recipe": cfg.recipe})
        frame = pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])
        write_table(tmp / MANIFEST, pa.Table.from_pandas(frame, preserve_index=False))
        write_json(tmp / SPEC, {**spec, "n_maps": len(rows),
                                "references": spec["references"],
                                "held_out": {"n_references": len(refs),
                                             "folds": sorted(set(folds.tolist()))}})
