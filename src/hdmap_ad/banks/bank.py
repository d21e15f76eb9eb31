"""Gated and ungated memory banks: build from reference descriptors, store, load.

A bank is a dict of sub-banks ``{name: (M, D) float32}``: ``{"mixed": ...}`` for an ungated
bank, ``{"cold": ..., "warm": ...}`` for a gated one. Stored as one Parquet file (one row per
kept patch: ``bank``, ``ref_id``, ``patch``, ``feature``) plus a JSON file describing how it
was made (references, gate fit, sizes before and after the coreset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hdmap_ad.banks.coreset import greedy_coreset
from hdmap_ad.banks.gate import (
    COLD,
    MIXED,
    WARM,
    fit_threshold_otsu,
    fit_threshold_supervised,
    p90_decisions,
)
from hdmap_ad.config import ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.io import write_json, write_table


@dataclass(frozen=True)
class GateFit:
    """The gate's threshold on p90 and how it was fit (``supervised`` | ``otsu`` | ``none``)."""

    threshold: float | None
    method: str


def fit_gate(refs: pd.DataFrame, mode: str) -> GateFit:
    """Fit the p90 threshold on the references only (never on test labels).

    References with known conditions (test/good hold-outs) give a supervised threshold;
    unlabelled train references give Otsu's split. ``mixed`` fits nothing.
    """
    if mode == "mixed":
        return GateFit(None, "none")
    known = refs.condition.isin([COLD, WARM])
    if known.all() and refs.condition.nunique() == 2:
        thr = fit_threshold_supervised(refs.p90.to_numpy(), (refs.condition == WARM).to_numpy())
        return GateFit(thr, "supervised")
    return GateFit(fit_threshold_otsu(refs.p90.to_numpy()), "otsu")


def assign_references(refs: pd.DataFrame, mode: str, fit: GateFit) -> np.ndarray:
    """Sub-bank of each reference: its known condition, else the gate's decision."""
    if mode == "mixed":
        return np.full(len(refs), MIXED, dtype=object)
    cond = refs.condition.to_numpy(dtype=object)
    unknown = ~np.isin(cond, [COLD, WARM])
    out = cond.copy()
    if unknown.any():
        out[unknown] = p90_decisions(refs.p90.to_numpy()[unknown], fit.threshold)
    return out


def build_sub_banks(
    desc: np.ndarray, assignment: np.ndarray, exp: ExperimentConfig, device: str = "cpu"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Coreset-subsample each sub-bank.

    Args:
        desc: ``(N, H, W, D)`` reference descriptors.
        assignment: ``(N,)`` sub-bank name per reference.
        exp: the experiment; its ``coreset_ratio``, ``seed`` and ``coreset_proj_dim`` drive
            the coreset.
        device: ``cuda`` runs the coreset selection on the GPU (see ``greedy_coreset``).

    Returns:
        ``(banks, sources)``: ``banks[name]`` is ``(M, D)`` float32; ``sources[name]`` is
        ``(M, 2)`` int64 of (reference position, patch index) for every kept patch.
    """
    n, h, w, d = desc.shape
    banks, sources = {}, {}
    for name in sorted(set(assignment)):
        pos = np.flatnonzero(assignment == name)
        patches = desc[pos].reshape(-1, d)
        keep = np.sort(greedy_coreset(patches, exp.coreset_ratio, exp.seed,
                                         proj_dim=exp.coreset_proj_dim, device=device))
        banks[name] = np.ascontiguousarray(patches[keep])
        sources[name] = np.stack([pos[keep // (h * w)], keep % (h * w)], axis=1)
    return banks, sources


def save_bank(
    path: str | Path,
    banks: dict[str, np.ndarray],
    sources: dict[str, np.ndarray],
    ref_ids: list[str],
) -> None:
    """Write sub-banks to one Parquet file atomically."""
    names, rid, patch, feats = [], [], [], []
    for name, bank in banks.items():
        names += [name] * len(bank)
        rid += [ref_ids[i] for i in sources[name][:, 0]]
        patch.append(sources[name][:, 1])
        feats.append(bank)
    d = next(iter(banks.values())).shape[1]
    flat = pa.array(np.concatenate(feats).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "bank": pa.array(names, type=pa.string()),
            "ref_id": pa.array(rid, type=pa.string()),
            "patch": pa.array(np.concatenate(patch).astype(np.int32)),
            "feature": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )
    write_table(path, table)


def load_bank(path: str | Path) -> dict[str, np.ndarray]:
    """Read sub-banks written by :func:`save_bank`: ``{name: (M, D) float32}``."""
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read memory bank ({exc})") from None
    feat = table.column("feature").combine_chunks()
    d = feat.type.list_size
    values = feat.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    names = np.asarray(table.column("bank").to_pylist(), dtype=object)
    return {n: np.ascontiguousarray(values[names == n]) for n in sorted(set(names))}


def build_bank(
    refs: pd.DataFrame, desc: np.ndarray, exp: ExperimentConfig, device: str = "cpu"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], GateFit, np.ndarray]:
    """Fit the gate on ``refs``, assign each to a sub-bank and coreset-subsample.

    Returns ``(banks, sources, gate_fit, assignment)``.
    """
    fit = fit_gate(refs, exp.gate)
    assignment = assign_references(refs, exp.gate, fit)
    if exp.gate != "mixed":
        for cond in (COLD, WARM):
            if not (assignment == cond).any():
                raise InputError(
                    f"experiments.{exp.key}: gated bank has no {cond} references "
                    f"(gate {exp.gate}, threshold {fit.threshold}); add references of both "
                    "conditions or use gate: mixed"
                )
    banks, sources = build_sub_banks(desc, assignment, exp, device)
    return banks, sources, fit, assignment


def bank_metadata(
    exp: ExperimentConfig,
    refs: pd.DataFrame,
    assignment: np.ndarray,
    fit: GateFit,
    banks: dict[str, np.ndarray],
    grid: tuple[int, int],
) -> dict[str, Any]:
    """JSON-ready description of a bank."""
    per_bank_patches = {
        name: int((assignment == name).sum()) * grid[0] * grid[1] for name in banks
    }
    return {
        "experiment": exp.to_dict(),
        "gate": {"mode": exp.gate, "threshold": fit.threshold, "fit": fit.method},
        "grid": list(grid),
        "dim": int(next(iter(banks.values())).shape[1]),
        "sub_banks": {
            name: {"patches": per_bank_patches[name], "kept": int(len(b))}
            for name, b in banks.items()
        },
        "references": [
            {"image_id": i, "condition": c, "sub_bank": a, "p90": round(float(p), 6)}
            for i, c, a, p in zip(refs.image_id, refs.condition, assignment, refs.p90, strict=True)
        ],
    }


def write_bank_metadata(path: str | Path, meta: dict[str, Any]) -> None:
    write_json(path, meta)
