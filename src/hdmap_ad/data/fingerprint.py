"""Content fingerprint of a dataset folder: what makes a data change re-run the pipeline.

Snakemake's own triggers miss data changes: a folder's timestamp does not move when a file
deeper inside is edited, and ``mv`` keeps a file's old timestamp. The manifest rule therefore
takes the folder's *content fingerprint* as a param: the sha256 over ``relative path: file
sha256`` of every data file (hidden files and macOS ``._*`` files skipped, as the manifest
does). Any file added, removed, renamed or edited changes it; ``touch``, ``dvc checkout`` or
copying the checkout elsewhere do not.

Hashing every file at every DAG build would read the whole dataset each time, so file hashes
are cached by ``(size, mtime_ns, inode)`` in a small JSON file under ``work/``: only files
whose stat changed are read again.

Generated data (``synthesize``) records the fingerprint it wrote in ``.fingerprint`` inside the
domain folder; while the folder still has that content, :func:`dataset_param` reports it as
``generated`` (the same before and after generation, so the first run's manifest is not redone
on the second), and the real fingerprint once anything was changed by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from hdmap_ad.io import write_text

#: Written by ``synthesize`` beside the maps: the fingerprint of what it generated.
GENERATED_MARK = ".fingerprint"


def skipped(name: str) -> bool:
    """Hidden files and macOS resource forks (``._x.png``) are not data."""
    return name.startswith(".")


def data_files(root: str | Path) -> list[Path]:
    """Every data file under ``root`` (recursively, sorted), hidden files and folders skipped."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not skipped(d))
        out += [Path(dirpath) / f for f in sorted(filenames) if not skipped(f)]
    return sorted(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(root: str | Path, cache: str | Path | None = None) -> str:
    """sha256 over ``relpath:sha256`` lines of the data files under ``root``.

    ``cache``: JSON file of ``relpath -> [size, mtime_ns, inode, sha256]``; files whose stat is
    unchanged are not read again. The cache is rewritten only when it changed. An absent
    ``root`` gives the fingerprint of no files.
    """
    root = Path(root)
    known: dict[str, list] = {}
    if cache is not None:
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(Path(cache).read_text())
    fresh: dict[str, list] = {}
    h = hashlib.sha256()
    for path in data_files(root) if root.is_dir() else []:
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = known.get(rel)
        digest = entry[3] if entry and entry[:3] == key else _sha256(path)
        fresh[rel] = [*key, digest]
        h.update(f"{rel}:{digest}\n".encode())
    if cache is not None and fresh != known:
        with contextlib.suppress(OSError):
            write_text(cache, json.dumps(fresh, sort_keys=True))
    return h.hexdigest()


def mark_generated(root: str | Path) -> str:
    """Record the fingerprint of freshly generated data in ``root/.fingerprint``."""
    digest = fingerprint(root)
    write_text(Path(root) / GENERATED_MARK, digest + "\n")
    return digest


def dataset_param(root: str | Path, generated: bool, cache: str | Path | None = None) -> str:
    """The manifest rule's data param: ``generated`` for untouched generated data (or data
    still to be generated), else ``sha256:<fingerprint>``."""
    root = Path(root)
    if generated:
        mark = root / GENERATED_MARK
        if not root.exists():
            return "generated"
        with contextlib.suppress(OSError):
            if mark.read_text().strip() == fingerprint(root, cache):
                return "generated"
    return "sha256:" + fingerprint(root, cache)
