"""The dataset-kind registry: every ``dataset.kind``, by its params name.

Adding a kind = one module in this package (a :class:`~hdmap_ad.data.kinds.base.DatasetKind`
subclass: what it provides and one ``scan`` that builds a domain's manifest rows) plus one
line in ``_REGISTERED`` below, or :func:`register_kind` at run time. The params schema's
``dataset.kind`` enum, the ``manifest`` step's ``--kind`` choices, the domain folder and
result names, and the params checks (a gate needs conditions, a pixel metric masks) derive
from this registry; nothing after the manifest step branches on the kind.

Example:
    >>> from hdmap_ad.data.kinds import get_kind
    >>> kind = get_kind("hdmap")
    >>> kind.domain_dir("C"), kind.conditions, kind.masks
    ('domain_C', True, False)
"""

from __future__ import annotations

from hdmap_ad.data.kinds.base import COLUMNS, DatasetKind, Provides
from hdmap_ad.data.kinds.folder import FolderKind
from hdmap_ad.data.kinds.hdmap import SYNTHETIC_ROOT, HdmapKind, SyntheticKind
from hdmap_ad.data.kinds.mvtec import MvtecKind
from hdmap_ad.registry import Registry

__all__ = ["COLUMNS", "KINDS", "SYNTHETIC_ROOT", "DatasetKind", "Provides", "get_kind",
           "kind_names", "kinds_markdown", "register_kind", "unregister_kind"]

_REGISTERED: tuple[DatasetKind, ...] = (
    SyntheticKind(),
    HdmapKind(),
    MvtecKind(),
    FolderKind(),
)

_REGISTRY: Registry[DatasetKind] = Registry("dataset kind", _REGISTERED)
KINDS: dict[str, DatasetKind] = _REGISTRY.entries


def register_kind(kind: DatasetKind) -> DatasetKind:
    """Add ``kind`` to the registry at run time (a plugin's or a test's own kind): the params
    schema built afterwards and the ``manifest`` step's ``--kind`` accept its name. Returns
    it.

    Raises:
        ValueError: the kind has no name, or a kind of that name is registered already.
    """
    return _REGISTRY.register(kind)


def unregister_kind(name: str) -> None:
    """Remove a kind added with :func:`register_kind` (built-in kinds stay)."""
    _REGISTRY.unregister(name)


def get_kind(name: str, where: str = "dataset.kind") -> DatasetKind:
    """The registered kind called ``name``; an unknown name is an ``InputError``."""
    return _REGISTRY.get(name, where)


def kind_names() -> tuple[str, ...]:
    """Every registered kind's name, in registration order."""
    return _REGISTRY.names()


def kinds_markdown() -> str:
    """A markdown table of the kinds: name, conditions, masks, summary (for the docs)."""
    def said(value: bool | None) -> str:
        return "from the data" if value is None else ("yes" if value else "no")

    lines = ["| kind | conditions | masks | layout |", "|---|---|---|---|"]
    lines += [f"| `{k.name}` | {said(k.conditions)} | {said(k.masks)} | {k.summary} |"
              for k in KINDS.values()]
    return "\n".join(lines) + "\n"
