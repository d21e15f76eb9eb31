"""What a dataset kind is: a declaration of what it provides and one scan per domain folder.

A kind turns one domain folder into manifest rows (:data:`COLUMNS`, one dict per map);
``hdmap_ad.data.manifest`` makes them the Parquet manifest every later step reads, so nothing
after the manifest branches on the kind (anomalib's ``samples`` frame plays the same part).
The helpers below (:func:`list_maps`, :func:`map_row`, :class:`ShapeCheck`) are what the
built-in kinds share; a new kind reuses them so its rows and its errors look like theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hdmap_ad.data.fingerprint import skipped
from hdmap_ad.data.maps import read_map_raw
from hdmap_ad.errors import InputError

#: The manifest's columns, in order: ``image_id`` (``test/fault/000123``: split/label/stem),
#: ``path``, ``split`` (train | test), ``label`` (``good`` or the fault/defect name),
#: ``index`` (from the file name, else the position), ``condition`` (cold | warm | unknown),
#: ``mask_path`` (``""`` when none), the intensity statistics the gate uses (``mean``,
#: ``p90``, ``max``), the file's ``sha256`` and the map's ``height`` and ``width``.
COLUMNS = (
    "image_id", "path", "split", "label", "index", "condition", "mask_path",
    "mean", "p90", "max", "sha256", "height", "width",
)
SPLITS = ("train", "test")
CONDITIONS = ("cold", "warm")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Provides:
    """What a dataset gives the experiments beyond images and labels.

    ``conditions``: every test map is ``cold`` or ``warm`` (gates, condition-stratified
    references and per-condition metrics need them). ``masks``: defects carry pixel masks
    (pixel AUROC and PRO need them). ``notes``: ``(capability, why it is missing)`` pairs
    for error messages where the data decides (the ``folder`` kind names its index file).
    """

    conditions: bool
    masks: bool
    notes: tuple[tuple[str, str], ...] = ()

    def require(self, what: str, subject: str, kind: str, instead: str) -> None:
        """Raise the params error for ``subject`` (``experiments.x.gate: 'p90'``) when this
        dataset lacks ``what`` (``conditions`` or ``masks``); ``instead`` says what to write
        instead."""
        if getattr(self, what):
            return
        need = {"conditions": "cold/warm conditions", "masks": "pixel masks"}[what]
        why = dict(self.notes).get(what)
        seen = f" ({why})" if why else ""
        raise InputError(f"{subject} needs {need}, which dataset.kind {kind!r} does not "
                         f"provide{seen}; {instead}")


class DatasetKind:
    """One ``dataset.kind``: subclass it, set the class attributes, write :meth:`scan`.

    Class attributes:
        name: the params name (``dataset.kind``).
        summary: one line for the docs and the schema.
        conditions, masks: what every dataset of this kind provides (:class:`Provides`);
            ``None`` where it depends on the dataset, and :meth:`provides` reads it there.
        domain_prefix: a domain's folder under ``dataset.root`` is ``<prefix><domain>``.
        result_prefix: results are ``results/<prefix><domain>_<experiment>.json``.
        generated_root: the one root of a generated kind (the pipeline writes its data).
        options: the further ``dataset`` keys this kind reads, with their defaults.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    conditions: ClassVar[bool | None] = False
    masks: ClassVar[bool | None] = False
    domain_prefix: ClassVar[str] = ""
    result_prefix: ClassVar[str] = ""
    generated_root: ClassVar[str | None] = None
    options: ClassVar[Mapping[str, Any]] = {}

    def scan(self, domain_root: Path, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Manifest rows of one domain folder (every key of :data:`COLUMNS`, one dict per
        map, in a deterministic order); bad input is an :class:`InputError` naming the file.

        Args:
            domain_root: the domain's folder (``<root>/<domain_prefix><domain>``); exists.
            options: :attr:`options` with the params' values filled in.
        """
        raise NotImplementedError

    def provides(self, domain_roots: Sequence[Path], options: Mapping[str, Any]) -> Provides:
        """What the datasets under ``domain_roots`` provide; the declared :attr:`conditions`
        and :attr:`masks` unless a kind overrides this to read them (before any scan)."""
        if self.conditions is None or self.masks is None:
            raise NotImplementedError(f"dataset kind {self.name!r}: conditions or masks "
                                      "depend on the data, so it must override provides()")
        return Provides(self.conditions, self.masks)

    def domain_dir(self, domain: str) -> str:
        """Folder of a domain under ``dataset.root``: ``C`` -> ``domain_C`` (HDMAP)."""
        return f"{self.domain_prefix}{domain}"


def list_maps(folder: Path, suffixes: tuple[str, ...], numbered: bool) -> list[tuple[int, Path]]:
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


def map_row(path: Path, split: str, label: str, idx: int, condition: str, mask: str,
            arr: np.ndarray) -> dict[str, Any]:
    """One manifest row: ``arr`` is the map as read (``(H, W)`` or ``(H, W, 3)`` float32);
    its gray mean, 90th percentile and maximum feed the gates."""
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


class ShapeCheck:
    """Every map of one domain must have the stored dtype of the first one read (a folder
    mixing uint16 and float32 maps would mix two intensity scales), and its shape too unless
    ``mixed_sizes`` (image datasets: every map is resized to the backbone's input anyway;
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
