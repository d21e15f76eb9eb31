"""Where a step may write: the one check every writer of user-visible outputs calls first.

``synth``, ``export``, ``predict`` and ``report`` take their output paths from the user. Before
anything is read or written, :func:`check_output` refuses a path that

- is an input, or holds one (writing it would overwrite or delete what the step reads);
- is, holds, or lies inside the model folder a step reads (``predict --model``);
- lies inside an input folder (``--force`` writes there anyway);
- is a folder where a file goes (``--out .``), a symbolic link where a file or folder is
  replaced, or the current folder (or one above it) where a folder is replaced;
- is a non-empty folder that hdmap-ad did not make (``--force`` overrides).

Folders that hdmap-ad makes carry a :data:`MARKER` file, so re-running a step (by hand or by
Snakemake) replaces its own output without ``--force``. A replaced folder is built beside the
old one and renamed onto it (:func:`replacing_folder`, through :func:`hdmap_ad.io.atomic_dir`).
Each refusal is one :class:`~hdmap_ad.errors.InputError` line naming the option, the path and
the reason, and saying where ``--force`` overrides it.

Example:
    >>> check_output("pred.csv", "--out", kind=FILE, inputs=["maps/"])  # doctest: +SKIP
    >>> with replacing_folder("results/models/x") as tmp:  # doctest: +SKIP
    ...     (tmp / "model.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from hdmap_ad.errors import InputError
from hdmap_ad.io import atomic_dir, write_location, write_text

#: The marker file in every folder hdmap-ad makes (hidden: data scans skip it).
MARKER = ".hdmap-ad"
MARKER_TEXT = "made by hdmap-ad\n"

#: What an output path is: a file (replaced by a rename), a folder replaced as a whole, or a
#: folder that files are written into (``predict --maps-dir``).
FILE, FOLDER, INTO = "file", "folder", "into"

PathLike = str | os.PathLike[str]


def is_marked(folder: PathLike) -> bool:
    """Whether ``folder`` was made by hdmap-ad (holds :data:`MARKER`)."""
    return (Path(folder) / MARKER).is_file()


def mark(folder: PathLike) -> None:
    """Write :data:`MARKER` into ``folder``."""
    write_text(Path(folder) / MARKER, MARKER_TEXT)


def _id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing path (symlinks followed), else None: two names of one
    file or folder (hard links, symlinks, a case-insensitive file system) compare equal."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _names(path: PathLike) -> list[Path]:
    """The places an input occupies: where its name is, and what it links to."""
    where = write_location(path)
    real = Path(os.path.realpath(path))
    return [where] if real == where else [where, real]


def _is_nonempty_dir(path: Path) -> bool:
    with os.scandir(path) as entries:
        return any(True for _ in entries)


def check_output(path: PathLike, option: str = "--out", *, kind: str = FILE,
                 inputs: Iterable[PathLike] = (), model: PathLike | None = None,
                 force: bool = False) -> None:
    """Refuse ``path`` as an output unless writing it destroys nothing the user did not ask to.

    Args:
        path: the output path the user gave.
        option: the option that named it, for the message (``--out``, ``--maps-dir``).
        kind: :data:`FILE`, :data:`FOLDER` (replaced as a whole) or :data:`INTO` (files are
            written into it).
        inputs: files and folders the step reads.
        model: the model folder the step reads (never written, not even with ``force``).
        force: write inside an input folder, or over a non-empty folder hdmap-ad did not make.

    Raises:
        InputError: one line: option, path, why, and ``--force`` where it overrides.
    """
    if kind not in (FILE, FOLDER, INTO):
        raise ValueError(f"kind must be one of {FILE}, {FOLDER}, {INTO}: {kind!r}")
    where = write_location(path)
    head = f"{option} {path}"
    if kind in (FILE, FOLDER) and where.is_symlink():
        what = "file" if kind == FILE else "folder"
        raise InputError(f"{head}: is a symbolic link; name the {what} itself")
    own = where if kind != INTO else Path(os.path.realpath(where))
    if kind == FILE and own.is_dir():
        raise InputError(f"{head}: is a folder; name a file")
    known: dict[Path, tuple[int, int] | None] = {}  # folders shared by many inputs: one stat

    def ident(p: Path) -> tuple[int, int] | None:
        if p not in known:
            known[p] = _id(p)
        return known[p]

    own_id = ident(own)
    own_parents = {ident(p) for p in own.parents} - {None}
    holds = own_id is not None and own.is_dir()
    protected = [(p, "the input") for p in inputs]
    if model is not None:
        protected.append((model, "the model folder"))
    inside_input = None
    for item, what in protected:
        for name in _names(item):
            item_id = _id(name)
            if item_id is None:
                continue
            if own_id == item_id:
                raise InputError(f"{head}: is {what} {item}; write elsewhere")
            if holds and any(ident(p) == own_id for p in name.parents):
                raise InputError(f"{head}: contains {what} {item}; writing it could overwrite "
                                 "or delete it")
            if item_id in own_parents:
                if what == "the model folder":
                    raise InputError(f"{head}: is inside the model folder {item}; write "
                                     "elsewhere")
                inside_input = inside_input or item
    if inside_input is not None and not force:
        raise InputError(f"{head}: is inside the input folder {inside_input} (--force writes "
                         "there anyway)")
    if kind == FILE:
        return
    if own.exists() and not own.is_dir():
        raise InputError(f"{head}: exists and is not a folder")
    if kind == FOLDER and own_id is not None:
        home = Path(os.path.expanduser("~"))  # "~" itself when there is no home
        for place, what in ((Path.cwd(), "current"), (home, "home")):
            if place.is_absolute() and own_id in {_id(p) for p in (place, *place.parents)}:
                raise InputError(f"{head}: is or contains the {what} folder, which would be "
                                 "replaced as a whole; name a new folder")
    if own.is_dir() and not is_marked(own) and _is_nonempty_dir(own) and not force:
        action = "replaces it" if kind == FOLDER else "writes into it"
        raise InputError(f"{head}: is a non-empty folder that hdmap-ad did not make (no "
                         f"{MARKER} file); --force {action}")


def make_folder(path: PathLike) -> Path:
    """Create folder ``path`` (parents too) for files to be written into, after
    :func:`check_output` with :data:`INTO`; marks it when hdmap-ad created it or it was
    empty (a foreign folder written into with ``--force`` stays unmarked)."""
    folder = Path(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if created or not _is_nonempty_dir(folder):
        mark(folder)
    return folder


@contextlib.contextmanager
def replacing_folder(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``path`` (a unique ``mkdtemp`` name) that replaces
    ``path`` by a rename if the block succeeds, marked as made by hdmap-ad; call
    :func:`check_output` with :data:`FOLDER` first. The temp folder is removed on every exit
    path (exception, Ctrl-C, SIGTERM); a failed block leaves the old folder as it was."""
    with atomic_dir(path) as tmp:
        yield tmp
        mark(tmp)
