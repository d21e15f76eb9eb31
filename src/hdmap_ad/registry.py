"""One shape for every seam: a registry of named items (methods, gates, dataset kinds).

Each seam keeps its built-in items in one tuple and lets a plugin or a test add its own at run
time; the params schema's enums and every lookup read the registry, so nothing else branches
on a name. :class:`Registry` is that shape, written once: the method, gate and dataset-kind
registries (``hdmap_ad.methods``, ``hdmap_ad.gating``, ``hdmap_ad.data.kinds``) each hold one.

Layering: this module sits in the lowest layer (beside ``errors`` and ``options``) and imports
only :mod:`hdmap_ad.errors`.

Example:
    >>> from types import SimpleNamespace
    >>> colours = Registry("colour", [SimpleNamespace(name="red")])
    >>> colours.register(SimpleNamespace(name="blue")).name
    'blue'
    >>> colours.names()
    ('red', 'blue')
    >>> colours.get("green", "paint.colour")
    Traceback (most recent call last):
    ...
    hdmap_ad.errors.InputError: paint.colour: 'green' is not one of ('red', 'blue')
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from hdmap_ad.errors import InputError

T = TypeVar("T")

#: :meth:`Registry.get`'s message for an unknown name (the options' enum message).
UNKNOWN = "{where}: {name!r} is not one of {names}"


class Registry(Generic[T]):
    """Named items of one sort, the built-ins first in their order, then those registered
    at run time. An item's ``name`` attribute is its key (its params name).

    Args:
        what: what an item is, in words (``"gate"``, ``"dataset kind"``): errors name it.
        builtins: the items every run has; :meth:`unregister` refuses them.
        unknown: :meth:`get`'s message for an unknown name, formatted with ``where``,
            ``name`` and ``names`` (the registered names, a tuple).

    Attributes:
        entries: the live ``name -> item`` dict (the module-level ``METHODS``, ``GATES`` and
            ``KINDS`` are this very dict, so code that reads them sees run-time additions).
        changes: class-wide count of run-time registrations and removals in any registry:
            what is derived from the registries (the params schema's validator) is cached
            per value of it.
    """

    changes: int = 0

    def __init__(self, what: str, builtins: Iterable[T], unknown: str = UNKNOWN) -> None:
        self.what = what
        self.unknown = unknown
        self.entries: dict[str, T] = {}
        for item in builtins:
            self.register(item)
        self.builtins = frozenset(self.entries)

    def register(self, item: T) -> T:
        """Add ``item`` under its ``name``; returns it.

        Raises:
            ValueError: the name is empty, or an item of that name is registered already
                (unregister it first: a silent replacement would hide a name clash).
        """
        name = getattr(item, "name", "")
        if not name:
            raise ValueError(f"a {self.what} needs a name")
        if name in self.entries:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self.entries[name] = item
        Registry.changes += 1
        return item

    def unregister(self, name: str) -> None:
        """Remove the item called ``name`` (nothing happens when none is registered).

        Raises:
            ValueError: ``name`` is a built-in.
        """
        if name in self.builtins:
            raise ValueError(f"{name!r} is a built-in {self.what}")
        if self.entries.pop(name, None) is not None:
            Registry.changes += 1

    def get(self, name: str, where: str) -> T:
        """The item called ``name``; an unknown (or unhashable) name is an ``InputError``
        naming the params key ``where`` and the registered names."""
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise InputError(self.unknown.format(where=where, name=name,
                                                 names=self.names())) from None

    def names(self) -> tuple[str, ...]:
        """Every registered name: built-ins first in their order, then run-time additions."""
        return tuple(self.entries)
