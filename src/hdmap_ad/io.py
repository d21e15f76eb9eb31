"""Atomic writers: every file the pipeline writes goes through a temp file and a rename.

A reader never sees half a file: either the old content (or nothing) or the new one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files that a killed writer of ``path`` left beside it; returns them.

    A process killed with SIGKILL (or a power cut) cannot remove its own ``.<name>.*.tmp``.
    Safe because one job writes one output (Snakemake never runs two writers of a path).
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    stale = sorted(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Temp files left by an earlier killed writer of ``path`` are removed first.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is moved aside first and removed after the rename, so a reader sees
    the old folder, or the new one, never a mix. Stale temp folders of killed writers are
    removed first.
    """
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmpdir"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmpdir", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmpdir",
                                        dir=target.parent))
            os.replace(target, old / "old")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON with a stable layout (keys in the caller's order, 2-space indent)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_table(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write a pyarrow table to Parquet atomically (zstd, no statistics noise)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())
