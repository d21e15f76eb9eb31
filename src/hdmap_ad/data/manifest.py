"""Per-domain manifest of an HDMAP-layout root, stored as Parquet.

Layout scanned (the real ``datasets/HDMAP/1000_tiff_minmax`` and the synthetic one)::

    <root>/domain_X/train/good/000000.tiff ...
    <root>/domain_X/test/good/000000.tiff ...
    <root>/domain_X/test/fault/000000.tiff ...

One row per map: ``image_id`` (``test/fault/000123``), ``path``, ``split`` (train | test),
``label`` (good | fault), ``index`` (int from the file name), ``condition`` (cold | warm for
test maps by the index rule: the first half of a test folder is cold, the second half warm;
``unknown`` for train), the intensity statistics the gate uses: ``mean``, ``p90``, ``max``,
and the file's ``sha256`` (the data hash in every output's provenance is computed from these).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hdmap_ad.data.maps import TIFF_SUFFIXES, read_map
from hdmap_ad.errors import InputError
from hdmap_ad.io import write_table

SPLITS = (("train", "good"), ("test", "good"), ("test", "fault"))
COLUMNS = (
    "image_id", "path", "split", "label", "index", "condition", "mean", "p90", "max", "sha256"
)


def _list_maps(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: folder missing (expected HDMAP layout train/good, test/good, "
                         "test/fault)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no .tif/.tiff maps found")
    seen: dict[int, Path] = {}
    out = []
    for p in files:
        try:
            idx = int(p.stem)
        except ValueError:
            raise InputError(f"{p}: file name is not a map index like 000123.tiff") from None
        if idx in seen:
            raise InputError(f"{p}: duplicate map index {idx} (also {seen[idx].name})")
        seen[idx] = p
        out.append((idx, p))
    return sorted(out)


def scan_domain(domain_root: str | Path) -> pd.DataFrame:
    """Scan one domain folder into a manifest DataFrame (see module docstring for columns)."""
    domain_root = Path(domain_root)
    if not domain_root.is_dir():
        raise InputError(f"{domain_root}: domain folder not found")
    rows = []
    shape: tuple[int, ...] | None = None
    first: Path | None = None
    for split, label in SPLITS:
        maps = _list_maps(domain_root / split / label)
        n = len(maps)
        if split == "test" and n % 2:
            raise InputError(
                f"{domain_root / split / label}: {n} maps; the cold/warm rule needs an even "
                "count (first half cold, second half warm)"
            )
        for pos, (idx, path) in enumerate(maps):
            arr = read_map(path)
            if shape is None:
                shape, first = arr.shape, path
            elif arr.shape != shape:
                raise InputError(f"{path}: shape {arr.shape} differs from {shape} of {first}")
            gray = arr if arr.ndim == 2 else arr.mean(axis=-1)
            condition = "unknown" if split == "train" else ("cold" if pos < n // 2 else "warm")
            rows.append(
                {
                    "image_id": f"{split}/{label}/{path.stem}",
                    "path": str(path),
                    "split": split,
                    "label": label,
                    "index": idx,
                    "condition": condition,
                    "mean": float(gray.mean()),
                    "p90": float(np.percentile(gray, 90)),
                    "max": float(gray.max()),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    write_table(path, pa.Table.from_pandas(df, preserve_index=False))


def read_manifest(path: str | Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read manifest ({exc})") from None
