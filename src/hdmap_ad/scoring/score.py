"""Score a domain's test maps against a bank, plus held-out scores of the references.

Output is one table: a row per scored map with its gate decision, image score and patch-score
grid. ``role`` is ``test`` for test maps and ``reference_cv`` for references scored by a bank
built from the other folds of references (the normal-score sample the deployable threshold
is fit on; see ``hdmap_ad.metrics``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from hdmap_ad.banks.bank import GateFit, assign_references, build_sub_banks
from hdmap_ad.banks.gate import BOTH, MIXED, gate_decisions
from hdmap_ad.config import ExperimentConfig
from hdmap_ad.io import write_table
from hdmap_ad.scoring.knn import BankIndex, image_scores

BATCH_MAPS = 32
SCORE_COLUMNS = (
    "image_id", "role", "label", "condition", "index", "p90", "routing", "gate", "score"
)


def experiment_decisions(exp: ExperimentConfig, rows: pd.DataFrame, fit: GateFit) -> np.ndarray:
    """The experiment's gate applied to manifest ``rows`` (p90 and condition columns)."""
    return gate_decisions(
        exp.gate, rows.p90.to_numpy(), rows.condition.to_numpy(dtype=object), fit.threshold,
        margin=exp.gate_margin, seed=exp.seed,
    )


def score_routed(
    desc_of: Callable[[np.ndarray], np.ndarray],
    decisions: np.ndarray,
    indexes: dict[str, BankIndex],
    num_neighbors: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score maps, each against the sub-bank its gate decision names.

    A ``both`` decision searches every sub-bank and keeps the lowest image score (with that
    bank's patch scores).

    Args:
        desc_of: returns ``(B, H, W, D)`` descriptors for an int array of map positions.
        decisions: ``(N,)`` sub-bank name (or ``both``) per map.
        indexes: sub-bank name -> index.
        num_neighbors: PatchCore reweighting neighbours.

    Returns:
        ``(scores (N,), patch_scores (N, H, W), bank (N,))``: float32 scores and the name of
        the sub-bank each kept score came from.
    """
    n = len(decisions)
    scores = np.full(n, np.inf, dtype=np.float32)
    banks = np.empty(n, dtype=object)
    patches: np.ndarray | None = None
    for name in sorted(set(decisions)):
        pos = np.flatnonzero(decisions == name)
        candidates = sorted(indexes) if name == BOTH else [name]
        for start in range(0, len(pos), BATCH_MAPS):
            sel = pos[start : start + BATCH_MAPS]
            desc = desc_of(sel)
            b, h, w, d = desc.shape
            if patches is None:
                patches = np.zeros((n, h, w), dtype=np.float32)
            for bank in candidates:
                s, ps = image_scores(desc.reshape(b, h * w, d), indexes[bank], num_neighbors)
                better = s < scores[sel]
                scores[sel[better]] = s[better]
                patches[sel[better]] = ps.reshape(b, h, w)[better]
                banks[sel[better]] = bank
    assert patches is not None
    return scores, patches, banks


def reference_cv_scores(
    refs: pd.DataFrame, ref_desc: np.ndarray, exp: ExperimentConfig, fit: GateFit
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score every reference with a bank built from the other folds (stratified by sub-bank).

    Each held-out reference is routed as a test map would be; where the routed sub-bank has
    no references left in that fold, it is scored against all remaining references.

    Returns ``(scores (N,), patch_scores (N, H, W), decisions (N,), bank (N,))``; empty
    arrays when there are fewer than two references or ``deploy_folds`` is 0 (no deployable
    threshold; saves the fold banks' coresets on full-train banks).
    """
    n = len(refs)
    if n < 2 or exp.deploy_folds == 0:
        h, w = ref_desc.shape[1:3]
        empty = np.zeros(0, object)
        return np.zeros(0, np.float32), np.zeros((0, h, w), np.float32), empty, empty
    assignment = assign_references(refs, exp.gate, fit)
    folds = np.zeros(n, dtype=np.int64)
    n_folds = min(exp.deploy_folds, n)
    for name in sorted(set(assignment)):
        pos = np.flatnonzero(assignment == name)
        folds[pos] = np.arange(len(pos)) % n_folds
    decisions = experiment_decisions(exp, refs, fit)
    scores = np.zeros(n, dtype=np.float32)
    patches = np.zeros(ref_desc.shape[:3], dtype=np.float32)
    bank_used = np.empty(n, dtype=object)
    for f in range(n_folds):
        held, kept = folds == f, folds != f
        if not held.any() or not kept.any():
            continue
        banks, _ = build_sub_banks(ref_desc[kept], assignment[kept], exp)
        route = decisions[held].copy()
        missing = ~np.isin(route, [*banks, BOTH])
        if missing.any():
            banks[MIXED] = build_sub_banks(
                ref_desc[kept], np.full(kept.sum(), MIXED, dtype=object), exp
            )[0][MIXED]
            route[missing] = MIXED
        indexes = {k: BankIndex(v, exp.search) for k, v in banks.items()}
        held_pos = np.flatnonzero(held)
        s, ps, used = score_routed(lambda sel, hp=held_pos: ref_desc[hp[sel]], route, indexes,
                                   exp.num_neighbors)
        scores[held_pos], patches[held_pos], bank_used[held_pos] = s, ps, used
    return scores, patches, decisions, bank_used


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
