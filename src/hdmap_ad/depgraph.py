"""Which source files a pipeline step runs: the import closure of its entry modules.

Each Snakemake rule lists the sources its step executes as inputs, so editing one of them
re-runs the step (and nothing else). The list is derived here from the code itself, not typed
in a rule: every ``hdmap_ad`` import (at module level or inside a function) of the entry
modules, followed transitively. Parsed with :mod:`ast`, nothing is imported.

``cli.py`` is never included: it only dispatches to one module function per step, so an edit
there re-runs nothing (change a step's behaviour in its module, not in the CLI).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "hdmap_ad"
SRC = Path(__file__).resolve().parent
#: Never listed: the dispatcher (see the module docstring).
EXCLUDED = frozenset({"hdmap_ad.cli", "hdmap_ad.__main__"})


def module_file(module: str, src: Path = SRC) -> Path | None:
    """``hdmap_ad.a.b`` -> ``<src>/a/b.py`` or ``<src>/a/b/__init__.py`` (None if neither)."""
    parts = module.split(".")[1:]
    base = src.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


@cache
def _imports(path: Path) -> tuple[str, ...]:
    """``hdmap_ad`` modules imported anywhere in ``path`` (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != PACKAGE:
                continue
            found.append(node.module)
            # ``from hdmap_ad.x import y`` may import the submodule ``hdmap_ad.x.y``
            found += [f"{node.module}.{a.name}" for a in node.names]
    return tuple(found)


def module_imports(module: str, src: Path = SRC) -> tuple[str, ...]:
    """The ``hdmap_ad`` modules that ``module`` itself imports (not transitively)."""
    path = module_file(module, src)
    return _imports(path) if path is not None else ()


def closure(*modules: str, src: Path = SRC, skip: frozenset[str] = frozenset()) -> list[Path]:
    """Source files of ``modules`` and of every ``hdmap_ad`` module they import, sorted.

    Importing ``hdmap_ad.a.b`` also runs the ``__init__.py`` of its packages, which are
    included as well. Modules in ``skip`` are left out (with what only they import): the
    registry imports every method module, but a step runs only its experiment's method.
    """
    seen: set[str] = set(skip)
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen or mod in EXCLUDED:
            continue
        seen.add(mod)
        path = module_file(mod, src)
        if path is None:
            continue  # a name imported from a module, not a module
        files.add(path)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += list(_imports(path))
    return sorted(files)
