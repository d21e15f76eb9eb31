"""The method registry: every anomaly-detection method, by its params name.

Adding a method = one module in this package (a :class:`~hdmap_ad.methods.base.Method`
subclass with its options dataclass) plus one line in ``_REGISTERED`` below, or
:func:`register_method` at run time (a plugin, a test's toy method). The params schema's
``method`` block, the README's method table and every pipeline step derive from this registry;
nothing else branches on a method's name. Method modules import only numpy at
import time (torch, faiss, sklearn inside their functions), so parsing params stays light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hdmap_ad.methods.ae import AE
from hdmap_ad.methods.base import FitContext, FittedModel, Method, load_model, save_model
from hdmap_ad.methods.dfm import DFM
from hdmap_ad.methods.fastflow import FastFlow
from hdmap_ad.methods.image_baselines import KnnImage, MahalanobisImage
from hdmap_ad.methods.padim import PaDiM
from hdmap_ad.methods.patchcore import PatchCore
from hdmap_ad.methods.spade import Spade
from hdmap_ad.methods.stfpm import STFPM
from hdmap_ad.methods.supersimplenet import SuperSimpleNet
from hdmap_ad.methods.unet_ae import UNetAE
from hdmap_ad.methods.vae import VAE
from hdmap_ad.options import build_options, fit_stage, options_schema
from hdmap_ad.registry import Registry

_REGISTERED: tuple[Method, ...] = (
    PatchCore(),
    PaDiM(),
    DFM(),
    Spade(),
    KnnImage(),
    MahalanobisImage(),
    AE(),
    UNetAE(),
    VAE(),
    FastFlow(),
    SuperSimpleNet(),
    STFPM(),
)

#: An unknown method's message: its wording is older than the gates' and kinds' enum wording,
#: and users and tests match "unknown method".
_UNKNOWN = "{where}: unknown method {name!r}; registered: {names}"
_REGISTRY: Registry[Method] = Registry("method", _REGISTERED, unknown=_UNKNOWN)
METHODS: dict[str, Method] = _REGISTRY.entries
DEFAULT_METHOD = "patchcore"


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry at run time (a plugin's or a test's own method): the
    params schema built afterwards accepts its name and options. Returns it.

    Raises:
        ValueError: the method has no name, or a method of that name is registered already.
    """
    return _REGISTRY.register(method)


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (built-in methods stay)."""
    _REGISTRY.unregister(name)


def get_method(name: str, where: str = "method.name") -> Method:
    """The registered method called ``name``; an unknown name is an ``InputError``."""
    return _REGISTRY.get(name, where)


@dataclass(frozen=True)
class MethodConfig:
    """An experiment's ``method`` block: ``{name: <method>, ...its options}``."""

    name: str = DEFAULT_METHOD
    options: Any = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "method") -> MethodConfig:
        data = dict(data or {})
        name = data.pop("name", DEFAULT_METHOD)
        method = get_method(name, f"{where}.name")
        return cls(name, build_options(method.Options, data, where))

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", get_method(self.name).Options())

    @property
    def method(self) -> Method:
        return get_method(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.options)}

    def fit_dict(self) -> dict[str, Any]:
        """``to_dict`` without the score-stage options: what the fitted model depends on."""
        return {"name": self.name, **fit_stage(self.options)}


def method_schema() -> dict[str, Any]:
    """JSON schema of the ``method`` block, derived from the registry (draft 7)."""
    branches = []
    for name, m in sorted(METHODS.items()):
        props = {"name": {"const": name}, **options_schema(m.Options)["properties"]}
        then = {"properties": props, "additionalProperties": False}
        branches.append({"if": {"required": ["name"], "properties": {"name": {"const": name}}},
                         "then": then})
        if name == DEFAULT_METHOD:  # ``name`` left out means the default method
            branches.append({"if": {"not": {"required": ["name"]}}, "then": then})
    return {
        "type": "object",
        "properties": {"name": {"enum": sorted(METHODS)}},
        "allOf": branches,
    }


def methods_markdown() -> str:
    """The README's method table: every registered method, its options, defaults and docs."""
    from hdmap_ad.options import options_table

    lines = ["| method | what it does | option | default | meaning |", "|---|---|---|---|---|"]
    for name, m in METHODS.items():
        rows = options_table(m.Options) or [("-", "-", "no options")]
        flags = [f for f, on in (("per-position", m.per_position),
                                 ("no localisation", not m.localizes))
                 if on and f not in m.summary]
        what = m.summary + (f" ({', '.join(flags)})" if flags else "")
        for i, (opt, default, doc) in enumerate(rows):
            cells = ["`" + name + "`" if i == 0 else "", what if i == 0 else "", f"`{opt}`",
                     f"`{default}`", doc]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "METHODS", "DEFAULT_METHOD", "FitContext", "FittedModel", "Method", "MethodConfig",
    "get_method", "load_model", "method_schema", "methods_markdown", "register_method",
    "save_model", "unregister_method",
]
