"""Per-domain manifest of a dataset folder, stored as Parquet.

Two layouts:

- ``hdmap`` (the real ``datasets/HDMAP/1000_tiff_minmax`` and the synthetic one)::

      <root>/domain_X/train/good/000000.tiff ...
      <root>/domain_X/test/good/000000.tiff ...
      <root>/domain_X/test/fault/000000.tiff ...

  Test maps get a ``condition`` by the index rule: the first half of each test folder is
  ``cold``, the second half ``warm`` (so each test folder needs an even count).
- ``mvtec`` (MVTec AD style, one folder per category)::

      <root>/<category>/train/good/*.png
      <root>/<category>/test/<type>/*.png          (type "good" or a defect name)
      <root>/<category>/ground_truth/<type>/<stem>_mask.png   (optional)

  png, jpg, bmp or tiff; RGB or grayscale. No condition (``unknown``).

One row per map: ``image_id`` (``test/fault/000123``), ``path``, ``split`` (train | test),
``label`` (``good`` or the fault/defect folder name), ``index`` (from the file name, else the
position), ``condition`` (cold | warm | unknown), ``mask_path`` (``""`` when none), the
intensity statistics the gate uses: ``mean``, ``p90``, ``max``, the file's ``sha256`` (the
data hash in every output's provenance is computed from these) and the map's ``height`` and
``width``. Every map of a domain must share one stored dtype; HDMAP maps must also share one
shape, while folder (``mvtec``) datasets may mix image sizes (each map is resized to the
backbone's input on its own). Hidden files and macOS ``._*`` files are skipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hdmap_ad.data.fingerprint import skipped
from hdmap_ad.data.maps import IMAGE_SUFFIXES, TIFF_SUFFIXES, read_map_raw
from hdmap_ad.errors import InputError
from hdmap_ad.io import write_table

HDMAP_SPLITS = (("train", "good"), ("test", "good"), ("test", "fault"))
COLUMNS = (
    "image_id", "path", "split", "label", "index", "condition", "mask_path",
    "mean", "p90", "max", "sha256", "height", "width",
)


def _list_files(folder: Path, suffixes: tuple[str, ...], numbered: bool) -> list[tuple[int, Path]]:
    """``(index, path)`` of the images in ``folder``, sorted by index.

    With ``numbered`` every stem must be an integer (HDMAP) and indices must be unique;
    otherwise the index is the stem's integer value when it has one, else the position.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: folder missing")
    # hidden files and macOS resource forks (._x.png) are not maps
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in suffixes and not skipped(p.name))
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(suffixes)}) found")
    seen: dict[int, Path] = {}
    out = []
    for pos, p in enumerate(files):
        try:
            idx = int(p.stem)
        except ValueError:
            if numbered:
                raise InputError(f"{p}: file name is not a map index like 000123.tiff") from None
            idx = pos
        if idx in seen:
            raise InputError(f"{p}: duplicate map index {idx} (also {seen[idx].name})")
        seen[idx] = p
        out.append((idx, p))
    return sorted(out)


def _row(path: Path, split: str, label: str, idx: int, condition: str, mask: str,
         arr: np.ndarray) -> dict:
    gray = arr if arr.ndim == 2 else arr.mean(axis=-1)
    return {
        "image_id": f"{split}/{label}/{path.stem}",
        "path": str(path),
        "split": split,
        "label": label,
        "index": idx,
        "condition": condition,
        "mask_path": mask,
        "mean": float(gray.mean()),
        "p90": float(np.percentile(gray, 90)),
        "max": float(gray.max()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "height": int(arr.shape[0]),
        "width": int(arr.shape[1]),
    }


class _ShapeCheck:
    """Every map of one domain must have the stored dtype of the first one read (a folder
    mixing uint16 and float32 maps would mix two intensity scales), and its shape too unless
    ``mixed_sizes`` (folder datasets: every map is resized to the backbone's input anyway;
    grayscale and RGB may mix, as every map becomes 3 channels)."""

    def __init__(self, mixed_sizes: bool = False) -> None:
        self.shape: tuple[int, ...] | None = None
        self.dtype: str | None = None
        self.first: Path | None = None
        self.mixed_sizes = mixed_sizes

    def read(self, path: Path) -> np.ndarray:
        arr, dtype = read_map_raw(path)
        if self.shape is None:
            self.shape, self.dtype, self.first = arr.shape, dtype, path
        elif arr.shape != self.shape and not self.mixed_sizes:
            raise InputError(f"{path}: shape {arr.shape} differs from {self.shape} of {self.first}")
        elif dtype != self.dtype:
            raise InputError(f"{path}: stored as {dtype}, but {self.first} as {self.dtype}; "
                             "one domain's maps must share one dtype (one intensity scale)")
        return arr


def scan_hdmap(domain_root: Path) -> list[dict]:
    check, rows = _ShapeCheck(), []
    for split, label in HDMAP_SPLITS:
        folder = domain_root / split / label
        maps = _list_files(folder, TIFF_SUFFIXES, numbered=True)
        n = len(maps)
        if split == "test" and n % 2:
            raise InputError(
                f"{folder}: {n} maps; the cold/warm rule needs an even count (first half "
                "cold, second half warm)"
            )
        for pos, (idx, path) in enumerate(maps):
            cond = "unknown" if split == "train" else ("cold" if pos < n // 2 else "warm")
            rows.append(_row(path, split, label, idx, cond, "", check.read(path)))
    return rows


def scan_mvtec(domain_root: Path) -> list[dict]:
    check, rows = _ShapeCheck(mixed_sizes=True), []
    test_root = domain_root / "test"
    if not test_root.is_dir():
        raise InputError(f"{test_root}: folder missing (expected MVTec layout train/good, test/*)")
    types = sorted(p.name for p in test_root.iterdir() if p.is_dir())
    if not types:
        raise InputError(f"{test_root}: no test/<type> folders")
    folders = [("train", "good")] + [("test", t) for t in types]
    for split, label in folders:
        for idx, path in _list_files(domain_root / split / label, IMAGE_SUFFIXES, numbered=False):
            mask = ""
            if split == "test" and label != "good":
                candidate = domain_root / "ground_truth" / label / f"{path.stem}_mask.png"
                mask = str(candidate) if candidate.is_file() else ""
            rows.append(_row(path, split, label, idx, "unknown", mask, check.read(path)))
    return rows


def scan_domain(domain_root: str | Path, kind: str = "hdmap") -> pd.DataFrame:
    """Scan one domain folder into a manifest DataFrame (see module docstring).

    Args:
        domain_root: ``<root>/domain_X`` (hdmap) or ``<root>/<category>`` (mvtec).
        kind: ``hdmap`` (also the synthetic data) or ``mvtec``.
    """
    domain_root = Path(domain_root)
    if not domain_root.is_dir():
        raise InputError(f"{domain_root}: domain folder not found")
    rows = scan_mvtec(domain_root) if kind == "mvtec" else scan_hdmap(domain_root)
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
