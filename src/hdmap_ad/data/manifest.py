"""Per-domain manifest of a dataset folder, stored as Parquet.

Each dataset kind (``hdmap_ad.data.kinds``: ``hdmap``/``synthetic``, ``mvtec``, ``folder``)
scans one domain folder into rows with the same columns (:data:`COLUMNS`); this module makes
them one frame and stores it. Every later step reads the manifest, never the kind.

One row per map: ``image_id`` (``test/fault/000123``), ``path``, ``split`` (train | test),
``label`` (``good`` or the fault/defect name), ``index`` (from the file name, else the
position), ``condition`` (cold | warm | unknown), ``mask_path`` (``""`` when none), the
intensity statistics the gate uses: ``mean``, ``p90``, ``max``, the file's ``sha256`` (the
data hash in every output's provenance is computed from these) and the map's ``height`` and
``width``. Every map of a domain must share one stored dtype; HDMAP maps must also share one
shape, while image datasets (``mvtec``, ``folder``) may mix sizes (each map is resized to the
backbone's input on its own). Hidden files and macOS ``._*`` files are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from hdmap_ad.data.kinds import COLUMNS, get_kind
from hdmap_ad.errors import InputError
from hdmap_ad.io import write_table

__all__ = ["COLUMNS", "read_manifest", "scan_domain", "write_manifest"]


def scan_domain(domain_root: str | Path, kind: str = "hdmap",
                options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Scan one domain folder into a manifest DataFrame (see module docstring).

    Args:
        domain_root: ``<root>/domain_X`` (hdmap), ``<root>/<category>`` (mvtec),
            ``<root>/<domain>`` (folder).
        kind: a registered dataset kind (``hdmap_ad.data.kinds``).
        options: the kind's ``dataset`` options (``folder``: ``index``); its defaults where
            absent.
    """
    spec = get_kind(kind, "--kind")
    unknown = sorted(set(options or {}) - set(spec.options))
    if unknown:
        raise InputError(f"dataset.{unknown[0]}: not an option of dataset.kind {kind!r} "
                         f"(it takes {sorted(spec.options) or 'none'})")
    domain_root = Path(domain_root)
    if not domain_root.is_dir():
        raise InputError(f"{domain_root}: domain folder not found")
    rows = spec.scan(domain_root, {**spec.options, **(options or {})})
    for row in rows:
        if tuple(row) != COLUMNS:
            raise TypeError(f"dataset kind {kind!r} built a row with the keys {list(row)}; "
                            f"a manifest row has exactly {list(COLUMNS)}, in that order")
    ids = [row["image_id"] for row in rows]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"{domain_root}: two maps have the image id {twice!r}")
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
