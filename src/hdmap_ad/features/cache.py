"""The feature cache: one Parquet file per domain/backbone/layer, one row per image.

Columns: ``image_id`` (string) and ``features``, an Arrow ``fixed_shape_tensor`` of float32
with shape ``(gh, gw, C)`` (the layer's patch grid, channels last). The schema metadata holds,
under the key ``hdmap_ad``, a JSON object describing how the features were made (model, layer,
weights and their hashes, preprocessing, library versions); it has no timestamps, so the same
input gives byte-identical files.

Example:
    >>> write_features("f.parquet", ["a", "b"], feats, {"layer": "blocks.2"})  # doctest: +SKIP
    >>> ids, feats, meta = read_features("f.parquet", ["b", "a"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hdmap_ad.errors import InputError
from hdmap_ad.io import atomic_path

METADATA_KEY = b"hdmap_ad"
PathLike = str | os.PathLike[str]


def feature_schema(shape: tuple[int, int, int], metadata: dict[str, Any]) -> pa.Schema:
    """Arrow schema of a cache file with ``(gh, gw, C)`` features and ``metadata`` as JSON."""
    meta = {**metadata, "feature_shape": [int(s) for s in shape]}
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)
    tensor_type = pa.fixed_shape_tensor(pa.float32(), [int(s) for s in shape])
    return pa.schema(
        [pa.field("image_id", pa.string(), nullable=False), pa.field("features", tensor_type)],
        metadata={METADATA_KEY: blob.encode()},
    )


def _batch(schema: pa.Schema, image_ids: Sequence[str], feats: np.ndarray) -> pa.RecordBatch:
    """One record batch: ``feats`` ``(n, gh, gw, C)`` float32 rows under ``image_ids``."""
    tensor_type = schema.field("features").type
    expected = tuple(tensor_type.shape)
    if feats.ndim != 4 or tuple(feats.shape[1:]) != expected or len(image_ids) != len(feats):
        raise ValueError(
            f"features {feats.shape} for {len(image_ids)} ids do not fit (n, *{expected})"
        )
    flat = np.ascontiguousarray(feats, dtype=np.float32).reshape(-1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat), int(np.prod(expected)))
    column = pa.ExtensionArray.from_storage(tensor_type, storage)
    ids = pa.array([str(i) for i in image_ids], type=pa.string())
    return pa.RecordBatch.from_arrays([ids, column], schema=schema)


class FeatureWriter:
    """Streams row groups into one cache file; the file appears (atomically) on :meth:`close`.

    Use :func:`open_feature_writer`; it removes the partial temp file when the block fails.
    """

    def __init__(self, tmp_path: Path, target: Path, schema: pa.Schema) -> None:
        self._target = target
        self._schema = schema
        self._writer = pq.ParquetWriter(tmp_path, schema, compression="zstd")
        self._seen: set[str] = set()

    def write(self, image_ids: Sequence[str], feats: np.ndarray) -> None:
        """Append ``feats`` ``(n, gh, gw, C)`` float32 for ``image_ids`` as one row group."""
        dup = []
        for image_id in image_ids:
            if image_id in self._seen:
                dup.append(image_id)
            self._seen.add(image_id)
        if dup:
            raise InputError(f"{self._target}: duplicate image id(s), e.g. {dup[:5]}")
        self._writer.write_batch(_batch(self._schema, image_ids, feats))

    def close(self) -> None:
        self._writer.close()


@contextlib.contextmanager
def open_feature_writer(
    path: PathLike, shape: tuple[int, int, int], metadata: dict[str, Any]
) -> Iterator[FeatureWriter]:
    """Context manager yielding a :class:`FeatureWriter` for ``(gh, gw, C)`` features.

    The file is written to a temp path beside ``path`` and renamed onto it only when the block
    succeeds (``hdmap_ad.io.atomic_path``).
    """
    schema = feature_schema(shape, metadata)
    with atomic_path(path) as tmp:
        writer = FeatureWriter(tmp, Path(path), schema)
        try:
            yield writer
        finally:
            writer.close()


def write_features(
    path: PathLike, image_ids: Sequence[str], feats: np.ndarray, metadata: dict[str, Any]
) -> None:
    """Write a whole cache file at once.

    Args:
        path: target Parquet file (written atomically).
        image_ids: one unique id per row.
        feats: float32 ``(N, gh, gw, C)``.
        metadata: JSON-serialisable description (no timestamps); ``feature_shape`` is added.
    """
    if feats.ndim != 4:
        raise ValueError(f"features must be (N, gh, gw, C), got {feats.shape}")
    with open_feature_writer(path, tuple(feats.shape[1:]), metadata) as writer:
        writer.write(image_ids, feats)


def _metadata_from_schema(schema: pa.Schema, path: PathLike) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(f"{path}: not a feature cache (no '{METADATA_KEY.decode()}' metadata)")
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(f"{path}: feature cache metadata is not valid JSON") from None


def _parquet(path: PathLike, read: Callable[[], Any]) -> Any:
    """``read()``, with a missing, non-Parquet or truncated ``path`` as an :class:`InputError`."""
    try:
        return read()
    except FileNotFoundError:
        raise InputError(f"{path}: feature cache not found") from None
    except Exception as exc:  # not Parquet, truncated, corrupt pages
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a cache file (schema only; no rows are read)."""
    return _metadata_from_schema(_parquet(path, lambda: pq.read_schema(path)), path)


def _features_array(column: pa.ChunkedArray, path: PathLike) -> np.ndarray:
    """``(N, gh, gw, C)`` float32 from a ``fixed_shape_tensor`` column."""
    tensor_type = column.type
    if not isinstance(tensor_type, pa.FixedShapeTensorType):
        raise InputError(f"{path}: column 'features' is {tensor_type}, not a fixed_shape_tensor")
    if column.null_count:
        raise InputError(f"{path}: column 'features' has {column.null_count} null row(s)")
    shape = tuple(tensor_type.shape)
    parts = [chunk.storage.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return flat.astype(np.float32, copy=False).reshape((-1, *shape))


def read_features(
    path: PathLike, image_ids: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read a cache file.

    Args:
        path: a file written by :func:`write_features` or :func:`open_feature_writer`.
        image_ids: if given, return exactly these rows, in this order.

    Returns:
        ``(ids, feats, metadata)``: the row ids, float32 ``(N, gh, gw, C)`` features and the
        JSON metadata.

    Raises:
        InputError: the file is missing, not a feature cache, or lacks a requested id.
    """
    reader = FeatureReader(path)
    ids = reader.ids if image_ids is None else list(image_ids)
    return ids, reader.rows(ids), reader.metadata


class FeatureReader:
    """Random access to the rows of one cache file, one Parquet row group in memory at a time.

    Only the ``image_id`` column is read up front; :meth:`rows` decodes the row groups holding
    the requested ids, keeping the last one decoded, so reading a list of ids in file order
    decodes every row group once and memory stays at one row group plus the rows returned.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self._file = _parquet(path, lambda: pq.ParquetFile(path))
        schema = self._file.schema_arrow
        self.metadata = _metadata_from_schema(schema, path)
        for name in ("image_id", "features"):
            if name not in schema.names:
                raise InputError(f"{path}: feature cache has no {name!r} column")
        tensor_type = schema.field("features").type
        if not isinstance(tensor_type, pa.FixedShapeTensorType):
            raise InputError(
                f"{path}: column 'features' is {tensor_type}, not a fixed_shape_tensor"
            )
        self.shape = tuple(tensor_type.shape)
        column = _parquet(path, lambda: self._file.read(columns=["image_id"]))
        self.ids = [str(i) for i in column.column("image_id").to_pylist()]
        self._row_of = {image_id: row for row, image_id in enumerate(self.ids)}
        sizes = [self._file.metadata.row_group(i).num_rows
                 for i in range(self._file.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._row_of)

    def check_ids(self, image_ids: Sequence[str]) -> None:
        """Raise :class:`InputError` naming the ids that are not in the file."""
        missing = [i for i in image_ids if i not in self._row_of]
        if missing:
            raise InputError(
                f"{self.path}: {len(missing)} image id(s) not in the feature cache, "
                f"e.g. {missing[:5]}"
            )

    def _group(self, g: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != g:
            table = _parquet(self.path, lambda: self._file.read_row_group(g, columns=["features"]))
            self._cached = (g, _features_array(table.column("features"), self.path))
        return self._cached[1]

    def rows(self, image_ids: Sequence[str]) -> np.ndarray:
        """``(n, gh, gw, C)`` float32 features of ``image_ids``, in that order."""
        self.check_ids(image_ids)
        rows = np.fromiter((self._row_of[i] for i in image_ids), np.int64, len(image_ids))
        groups = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        for pos in np.argsort(groups, kind="stable"):
            g = int(groups[pos])
            out[pos] = self._group(g)[rows[pos] - self._starts[g]]
        return out
