"""Atomic writers: every file the pipeline writes goes through a temp file and a rename.

A reader never sees half a file: either the old content (or nothing) or the new one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import tempfile
import threading
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


#: tempfile's random part: 8 of ``[a-z0-9_]``, never a dot (so temp names parse unambiguously)
_RANDOM = r"[a-z0-9_]{8}"


def write_location(path: str | os.PathLike[str]) -> Path:
    """Where a rename onto ``path`` lands: its folder with symlinks resolved, then its name
    (``.``, ``..`` and ``out/`` become the folder's own name)."""
    full = Path(os.path.abspath(path))
    return Path(os.path.realpath(full.parent)) / full.name


def _temp_prefix(target: Path) -> str:
    """``.<name>.<pid>.``: the start of a writer's temp file or folder beside ``target``; the
    pid tells a later writer whether this one still runs (:func:`_stale_temps`)."""
    return f".{target.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows has no signal-0 probe: keep them
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _stale_temps(target: Path, suffix: str) -> list[Path]:
    """Temp files (``suffix`` ``.tmp``) or folders (``.tmpdir``) of ``target`` whose writer is
    gone. Only names of exactly this target match (``.x.<pid>.<random><suffix>``: not the temps
    of ``x.json`` beside ``x``), and only those of processes that no longer run on this machine
    (two writers of one path, e.g. two ``predict`` runs, leave each other's temps alone)."""
    if not target.parent.is_dir():
        return []
    exact = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.{_RANDOM}{re.escape(suffix)}")
    stale = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*{suffix}"):
        m = exact.fullmatch(tmp.name)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(tmp)
    return sorted(stale)


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files that a killed writer of ``path`` left beside it; returns them.

    A process killed with SIGKILL (or a power cut) cannot remove its own temp file. Only temps
    of writers no longer running are removed (:func:`_stale_temps`).
    """
    stale = _stale_temps(write_location(path), ".tmp")
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            tmp.unlink()
    return stale


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Temp files left by an earlier killed writer of ``path`` are removed first. The temp name
    is unique (``mkstemp``) and carries the writer's pid.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp",
                                    dir=target.parent)
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
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (Snakemake's or SLURM's cancel) raises SystemExit inside the block, so its
    ``finally`` clauses run as for an exception or Ctrl-C (main thread only: signals are
    delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is moved aside first and removed after the rename (put back if the
    rename fails), so a reader sees the old folder, or the new one, never a mix. Temp folders
    (unique ``mkdtemp`` names) are removed on every exit path: an exception, Ctrl-C, SIGTERM;
    stale ones of killed writers are removed first.
    """
    import shutil

    target = write_location(path)
    if not target.name or target.parent == target:
        raise OSError(f"cannot replace the file system's root: {path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temps(target, ".tmpdir"):
        shutil.rmtree(stale, ignore_errors=True)
    old: Path | None = None
    with _terminate_as_exit():
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmpdir",
                                    dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~_UMASK)
            yield tmp
            if os.path.lexists(target):
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmpdir",
                                            dir=target.parent))
                os.replace(target, old / "old")
            try:
                os.replace(tmp, target)
            except BaseException:
                if old is not None and os.path.lexists(old / "old"):
                    os.replace(old / "old", target)  # put the old folder back
                raise
        finally:
            for leftover in (tmp, old):  # tmp is gone after a successful rename
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temp file beside it, renamed over it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON with a stable layout (keys in the caller's order, 2-space indent)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_table(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write a pyarrow table to Parquet atomically (zstd, no statistics noise)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())
