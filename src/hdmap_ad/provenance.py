"""What every output records about how it was made: data hash, weights and library versions."""

from __future__ import annotations

import hashlib
import json
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


def json_sha256(obj: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def code_sha256(*modules: str) -> str:
    """sha256 over ``path:file-sha256`` lines of the source files ``modules`` run (their
    ``hdmap_ad`` import closure, :func:`hdmap_ad.depgraph.closure`), paths relative to the
    package: the same code gives the same digest wherever it is installed."""
    from hdmap_ad.depgraph import SRC, closure

    h = hashlib.sha256()
    for path in closure(*modules):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        h.update(f"{path.relative_to(SRC).as_posix()}:{digest}\n".encode())
    return h.hexdigest()


def provenance(domain: str, manifest: pd.DataFrame, feature_paths: list[str]) -> dict[str, Any]:
    return {
        "domain": domain,
        "data_sha256": data_hash(manifest),
        "features": feature_provenance(feature_paths),
    }
