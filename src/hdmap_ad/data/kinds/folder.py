"""``folder``: your own maps, listed in an index file per domain (anomalib's ``Folder``, as a
table instead of folder names)::

    <root>/<domain>/samples.csv                  (dataset.index; or a .parquet file)
    <root>/<domain>/<any path in the index>      the maps and masks, anywhere below

The index has one row per map and the columns ``path``, ``split``, ``label`` and, optionally,
``condition`` and ``mask`` (no others, so a misspelt column is an error, not a silently lost
one)::

    path,split,label,condition,mask
    train/0001.tiff,train,good,,
    scans/cold/a.tiff,test,good,cold,
    scans/warm/b.tiff,test,fault,warm,masks/b.png

- ``path``: relative to the domain folder (``/`` separated; no ``..``, no hidden parts);
- ``split``: ``train`` or ``test``; ``label``: ``good`` or ``fault`` (train maps are good);
- ``condition``: ``cold`` | ``warm`` (or empty / ``unknown`` on train maps). With the column,
  every test map needs one and the dataset provides conditions (gates can be fit); without
  it, only ungated (``gate: mixed``) experiments run;
- ``mask``: a defect's pixel mask (any image, nonzero = defect, the map's size). With the
  column, every test fault map needs one and good maps have none; the metrics then add pixel
  AUROC and PRO.

Rows become the manifest in a fixed order whatever the index's order: train before test,
good before fault, then by index (the file name's integer, else its rank by path) and path.
The ``image_id`` is ``<split>/<label>/<file stem>`` as for the other kinds, so stems must be
unique within a split and label. Maps may be any image the other kinds read, in mixed sizes;
one domain shares one stored dtype. Errors name the index file and the line (CSV, counting
the header as line 1) or row (Parquet, from 1).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from hdmap_ad.data.kinds.base import (
    CONDITIONS,
    SPLITS,
    UNKNOWN,
    DatasetKind,
    Provides,
    ShapeCheck,
    map_row,
)
from hdmap_ad.data.maps import IMAGE_SUFFIXES
from hdmap_ad.errors import InputError

REQUIRED = ("path", "split", "label")
OPTIONAL = ("condition", "mask")
LABELS = ("good", "fault")
INDEX_SUFFIXES = (".csv", ".parquet")
DEFAULT_INDEX = "samples.csv"


def index_path(domain_root: Path, options: Mapping[str, Any]) -> Path:
    """``<domain_root>/<index>``: the index file of one domain."""
    name = str(options.get("index", DEFAULT_INDEX))
    if Path(name).suffix.lower() not in INDEX_SUFFIXES or Path(name).name != name \
            or name.startswith("."):
        raise InputError(f"dataset.index: {name!r} is not a file name ending in .csv or "
                         ".parquet")
    return domain_root / name


def read_columns(path: Path) -> list[str]:
    """The index's column names (its header), without reading its rows."""
    try:
        found = path.is_file()
    except OSError as exc:  # a name too long, a folder without permission ...
        raise InputError(f"{path}: cannot read the index ({exc.strerror})") from None
    if not found:
        raise InputError(f"{path}: index file not found (dataset.kind folder reads "
                         "<root>/<domain>/<dataset.index>)")
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(f"{path}: cannot read the index ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None


def read_index(path: Path) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """Columns and ``(where, row)`` pairs of an index file; ``where`` is ``line N`` (CSV) or
    ``row N`` (Parquet) for messages; every cell is a stripped string (null -> ``""``)."""
    columns = read_columns(path)
    where = f"{path}"
    bad = sorted({c for c in columns if columns.count(c) > 1})
    if bad:
        raise InputError(f"{where}: column(s) {bad} given more than once")
    missing = [c for c in REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        problem = (f"missing column(s) {missing}" if missing else
                   f"unknown column(s) {unknown}")
        raise InputError(f"{where}: {problem}; the columns are path, split, label and "
                         "optionally condition, mask")
    rows: list[tuple[str, dict[str, str]]] = []
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pydict()
            n = len(next(iter(table.values()), []))
            for i in range(n):
                rows.append((f"row {i + 1}", {c: "" if table[c][i] is None
                                              else str(table[c][i]).strip() for c in columns}))
            return columns, rows
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for cells in reader:
                line = f"line {reader.line_num}"
                if not any(c.strip() for c in cells):
                    continue  # blank lines (a trailing newline, a spreadsheet's empty rows)
                if len(cells) != len(columns):
                    raise InputError(f"{path}, {line}: {len(cells)} fields, the header has "
                                     f"{len(columns)}")
                rows.append((line, {c: v.strip() for c, v in zip(columns, cells, strict=True)}))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(f"{path}: cannot read the index ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    return columns, rows


def _relative(value: str, what: str, at: str) -> PurePosixPath:
    """A path cell as a safe relative path below the domain folder."""
    if not value:
        raise InputError(f"{at}: {what} is empty")
    rel = PurePosixPath(value)
    if rel.is_absolute() or "\\" in value or ".." in rel.parts:
        raise InputError(f"{at}: {what} {value!r} must be relative to the domain folder "
                         "(/-separated, no '..')")
    if any(part.startswith(".") for part in rel.parts if part != "."):
        raise InputError(f"{at}: {what} {value!r} has a hidden part; hidden files are not "
                         "data (the data fingerprint skips them)")
    return rel


def _image_size(path: Path, at: str) -> tuple[int, int]:
    """``(height, width)`` of a mask image, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception as exc:  # not an image: one line, whatever PIL says
        raise InputError(f"{at}: cannot read mask {path} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None


class FolderKind(DatasetKind):
    name = "folder"
    summary = ("your own maps: root/<domain>/<index> (samples.csv or .parquet) lists path, "
               "split, label and optionally condition, mask; conditions and masks where the "
               "index has those columns")
    conditions = None  # where the index has a condition column
    masks = None  # where the index has a mask column
    options = {"index": DEFAULT_INDEX}

    def provides(self, domain_roots: Sequence[Path], options: Mapping[str, Any]) -> Provides:
        """Conditions where every domain's index has a ``condition`` column, masks where
        every one has a ``mask`` column (read from the headers only)."""
        notes, found = [], {"conditions": True, "masks": True}
        for root in domain_roots:
            path = index_path(root, options)
            columns = read_columns(path)
            for what, column in (("conditions", "condition"), ("masks", "mask")):
                if column not in columns and found[what]:
                    found[what] = False
                    notes.append((what, f"{path} has no {column} column"))
        return Provides(found["conditions"], found["masks"], tuple(notes))

    def scan(self, domain_root: Path, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        from tqdm import tqdm

        path = index_path(domain_root, options)
        columns, table = read_index(path)
        if not table:
            raise InputError(f"{path}: no rows (one row per map: path, split, label)")
        has_conditions, has_masks = "condition" in columns, "mask" in columns
        entries, seen_paths, seen_ids = [], {}, {}
        for where, row in table:
            at = f"{path}, {where}"
            rel = _relative(row["path"], "path", at)
            split, label = row["split"], row["label"]
            if split not in SPLITS:
                raise InputError(f"{at}: split {split!r} is not one of {', '.join(SPLITS)}")
            if label not in LABELS:
                raise InputError(f"{at}: label {label!r} is not one of {', '.join(LABELS)}")
            if split == "train" and label != "good":
                raise InputError(f"{at}: a train map labelled {label!r}; train maps are the "
                                 "normal ones references come from (label good)")
            condition = row.get("condition", "") or UNKNOWN
            if condition not in (*CONDITIONS, UNKNOWN):
                raise InputError(f"{at}: condition {condition!r} is not one of cold, warm "
                                 "(or empty / unknown on train maps)")
            if has_conditions and split == "test" and condition == UNKNOWN:
                raise InputError(f"{at}: a test map without a condition; with a condition "
                                 "column every test map is cold or warm (or drop the column)")
            mask = row.get("mask", "")
            if mask and label == "good":
                raise InputError(f"{at}: a mask on a good map; masks mark the defects of "
                                 "fault maps (leave it empty)")
            if has_masks and split == "test" and label == "fault" and not mask:
                raise InputError(f"{at}: a fault map without a mask; with a mask column every "
                                 "test fault map has one (or drop the column)")
            key = str(rel)
            if key in seen_paths:
                raise InputError(f"{at}: path {key!r} is listed again (first at "
                                 f"{seen_paths[key]})")
            seen_paths[key] = where
            image_id = f"{split}/{label}/{rel.stem}"
            if image_id in seen_ids:
                raise InputError(f"{at}: image id {image_id!r} again (first at "
                                 f"{seen_ids[image_id]}): file names without their suffix "
                                 "must be unique within a split and label")
            seen_ids[image_id] = where
            file = domain_root / rel
            if rel.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{at}: {key!r} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            if not file.is_file():
                raise InputError(f"{at}: {file}: file not found")
            mask_file = ""
            if mask:
                mask_path = domain_root / _relative(mask, "mask", at)
                if not mask_path.is_file():
                    raise InputError(f"{at}: mask {mask_path}: file not found")
                mask_file = str(mask_path)
            entries.append((where, split, label, rel, file, condition, mask_file))
        for label in LABELS:
            if not any(e[1] == "test" and e[2] == label for e in entries):
                raise InputError(f"{path}: the test split has no {label} maps; detection "
                                 "metrics need good and fault test maps")
        # the index from the file name (else its rank by path in its split and label), as
        # list_maps numbers a folder: the order below never depends on the index's row order
        ordered = []
        for split in SPLITS:
            for label in LABELS:
                group = sorted((e for e in entries if e[1] == split and e[2] == label),
                               key=lambda e: str(e[3]))
                keyed = []
                for pos, entry in enumerate(group):
                    try:
                        idx = int(entry[3].stem)
                    except ValueError:
                        idx = pos
                    keyed.append((idx, str(entry[3]), entry))
                ordered += sorted(keyed, key=lambda k: (k[0], k[1]))
        check, rows = ShapeCheck(mixed_sizes=True), []
        for idx, _, (where, split, label, _rel, file, condition, mask_file) in tqdm(
                ordered, desc=f"scan {domain_root.name}", unit="map", mininterval=2.0):
            arr = check.read(file)
            if mask_file:
                size = _image_size(Path(mask_file), f"{path}, {where}")
                if size != tuple(arr.shape[:2]):
                    raise InputError(f"{path}, {where}: mask {mask_file} is {size[0]}x"
                                     f"{size[1]}, its map {arr.shape[0]}x{arr.shape[1]}")
            rows.append(map_row(file, split, label, idx, condition, mask_file, arr))
        return rows
