"""The layering contract: a lower layer never imports a higher one.

Flow (bottom to top): base utilities -> data -> features -> provenance -> components ->
methods -> gating -> params (config and the pure parts of validation and selection it
parses) -> banks (an experiment's references and fitted sub-models) -> scoring -> metrics ->
validation and selection steps -> report -> deploy -> app -> cli. Every import counts,
module-level or inside a function (a lazy import is still a dependency). Modules of one
layer may import each other.

The graph is read from the source with ``ast`` (what import-linter's grimp does), so the
contract needs no installed package and runs in well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hdmap_ad"

#: Layers from the bottom up; a module belongs to the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hdmap_ad.errors", "hdmap_ad.io", "hdmap_ad.specs", "hdmap_ad.options",
     "hdmap_ad.registry", "hdmap_ad.outputs", "hdmap_ad.depgraph", "hdmap_ad.outdated",
     "hdmap_ad.layout", "hdmap_ad"),
    ("hdmap_ad.data",),
    ("hdmap_ad.features",),
    ("hdmap_ad.provenance",),
    ("hdmap_ad.components",),
    ("hdmap_ad.methods",),
    ("hdmap_ad.gating",),
    ("hdmap_ad.config", "hdmap_ad.validation", "hdmap_ad.validation.recipes",
     "hdmap_ad.selection", "hdmap_ad.selection.grid"),
    ("hdmap_ad.banks",),
    ("hdmap_ad.scoring",),
    ("hdmap_ad.metrics",),
    ("hdmap_ad.validation.build", "hdmap_ad.validation.score", "hdmap_ad.selection.choose"),
    ("hdmap_ad.report",),
    ("hdmap_ad.deploy",),
    ("hdmap_ad.app",),
    ("hdmap_ad.cli", "hdmap_ad.__main__"),
)


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ``hdmap_ad`` modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        name = module_name(path, src)
        is_pkg = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] == PACKAGE:
                    found.add(mod)
                    # `from pkg import sub` imports the submodule when one exists
                    found |= {f"{mod}.{a.name}" for a in node.names
                              if (src / Path(*f"{mod}.{a.name}".split("."))).with_suffix(
                                  ".py").exists()
                              or (src / Path(*f"{mod}.{a.name}".split("."))).is_dir()}
        graph[name] = found
    return graph


def layer_of(module: str, layers=LAYERS) -> int:
    best, best_len = None, -1
    for i, names in enumerate(layers):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS")
    return best


def back_edges(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import from a lower layer to a higher one, as ``a -> b``."""
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep, layers) > layer_of(mod, layers):
                out.append(f"{mod} -> {dep}")
    return out


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    graph = import_graph()
    assert len(graph) > 50  # the package was found
    assert back_edges(graph) == []


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_the_contract_fails_when_a_back_edge_is_added(tmp_path):
    # a copy of the package where a method imports the CLI
    import shutil

    shutil.copytree(SRC / PACKAGE, tmp_path / PACKAGE)
    target = tmp_path / PACKAGE / "methods" / "base.py"
    target.write_text(target.read_text() + "\n\ndef _oops():\n    from hdmap_ad.cli import main\n")
    assert back_edges(import_graph(tmp_path)) == ["hdmap_ad.methods.base -> hdmap_ad.cli"]


@pytest.mark.parametrize("module, layer", [("hdmap_ad.methods.patchcore", "hdmap_ad.methods"),
                                           ("hdmap_ad.validation.build",
                                            "hdmap_ad.validation.build"),
                                           ("hdmap_ad.validation.recipes", "hdmap_ad.config")])
def test_layer_lookup_takes_the_longest_prefix(module, layer):
    assert layer_of(module) == layer_of(layer)
