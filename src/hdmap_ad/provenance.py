"""What every output records about how it was made: data hash, weights and library versions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd


def data_hash(manifest: pd.DataFrame) -> str:
    """sha256 over the manifest's ``image_id:file-sha256`` lines (content, not paths)."""
    h = hashlib.sha256()
    for image_id, digest in zip(manifest.image_id, manifest.sha256, strict=True):
        h.update(f"{image_id}:{digest}\n".encode())
    return h.hexdigest()


def feature_provenance(feature_paths: list[str]) -> dict[str, Any]:
    """Per-layer cache metadata (model, weights sha256, preprocessing, versions).

    The weights file is recorded by name, not by this machine's path, so the same inputs
    give the same bytes on any machine.
    """
    from hdmap_ad.features.cache import read_metadata

    out = {}
    for p in feature_paths:
        meta = read_metadata(p)
        weights = meta.get("weights", {})
        if weights.get("file"):
            weights["file"] = Path(weights["file"]).name
        out[Path(p).stem] = meta
    return out


def provenance(domain: str, manifest: pd.DataFrame, feature_paths: list[str]) -> dict[str, Any]:
    return {
        "domain": domain,
        "data_sha256": data_hash(manifest),
        "features": feature_provenance(feature_paths),
    }
