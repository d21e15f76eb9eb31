"""Method options as typed dataclasses: one source for parsing, the JSON schema and the docs.

A method declares its options as a frozen dataclass whose fields carry their constraints in
``field(metadata=...)``:

- ``doc``: one line for the README's method table;
- ``enum``: allowed values;
- ``min`` / ``max`` (inclusive), ``gt`` (exclusive minimum);
- ``stage``: ``"score"`` for an option only the score step reads (how patch distances become
  scores, the search index ...). The fit step never sees these (:func:`fit_stage`), so changing
  one re-runs scoring but no fit or training.

:func:`build_options` turns a params mapping into that dataclass with strict types (``9.0`` is
not an integer, ``true`` is not a number), naming the offending key; :func:`options_schema`
derives the JSON schema params.yaml is validated against; :func:`options_table` the docs.
Only the standard library and numpy are imported here, so parsing params needs no torch/faiss.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

from hdmap_ad.errors import InputError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def _check_value(value: Any, f: dataclasses.Field, tp: Any, where: str) -> Any:
    base, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise InputError(f"{where}: must not be null")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return build_options(base, value, where)
    if not _type_ok(value, base):
        raise InputError(f"{where}: {value!r} is not {_type_name(base)}")
    if base is float:
        # NaN passes every bound below; an int past 1e308 does not fit a float
        if (isinstance(value, int) and abs(value) > 2**1023) or not math.isfinite(value):
            raise InputError(f"{where}: {value!r:.40} is not a finite number")
        value = float(value)
    meta = f.metadata
    if "enum" in meta and value not in meta["enum"]:
        raise InputError(f"{where}: {value!r} is not one of {tuple(meta['enum'])}")
    check_bounds(value, meta, where)
    return value


def check_bounds(value: Any, meta: Any, where: str) -> None:
    """Refuse ``value`` outside a field's ``min`` / ``gt`` / ``max`` metadata (one line naming
    ``where``); the one bound check of every options dataclass."""
    if "min" in meta and value < meta["min"]:
        raise InputError(f"{where}: {value!r} must be >= {meta['min']}")
    if "gt" in meta and value <= meta["gt"]:
        raise InputError(f"{where}: {value!r} must be > {meta['gt']}")
    if "max" in meta and value > meta["max"]:
        raise InputError(f"{where}: {value!r} must be <= {meta['max']}")


def build_options(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build options dataclass ``cls`` from ``data``; an unknown key or bad value names
    ``where.<key>``."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown option; {where} takes "
                         f"{sorted(names) or 'no options'}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _check_value(data[f.name], f, hints[f.name], f"{where}.{f.name}")
    return cls(**values)


def score_stage_fields(cls: type) -> tuple[str, ...]:
    """Names of the options of ``cls`` that only the score step reads."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("stage") == "score")


def fit_stage(options: Any) -> dict[str, Any]:
    """``asdict(options)`` without the score-stage options: what a fitted model depends on."""
    skip = set(score_stage_fields(type(options)))
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in skip}


def _json_type(tp: Any) -> dict[str, Any]:
    base, optional = _split_optional(tp)
    if dataclasses.is_dataclass(base):
        out: dict[str, Any] = options_schema(base)
        if optional:
            out = {"oneOf": [out, {"type": "null"}]}
        return out
    name = {bool: "boolean", int: "integer", float: "number", str: "string"}[base]
    return {"type": [name, "null"] if optional else name}


def options_schema(cls: type) -> dict[str, Any]:
    """JSON schema (draft 7) of an options dataclass: types, enums and bounds."""
    hints = _hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        prop = _json_type(hints[f.name])
        meta = f.metadata
        if "enum" in meta:
            prop["enum"] = list(meta["enum"]) + ([None] if _split_optional(hints[f.name])[1]
                                                 else [])
        if "min" in meta:
            prop["minimum"] = meta["min"]
        if "gt" in meta:
            prop["exclusiveMinimum"] = meta["gt"]
        if "max" in meta:
            prop["maximum"] = meta["max"]
        props[f.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props}


def options_table(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(option, default, doc)`` rows for the README's method table (nested options
    flattened as ``search.index``)."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            nested = options_table(type(default), f"{prefix}{f.name}.")
            if f.metadata.get("stage") == "score":
                nested = [(o, d, f"{doc} (score step only: no refit)") for o, d, doc in nested]
            rows += nested
            continue
        doc = f.metadata.get("doc", "")
        if f.metadata.get("stage") == "score":
            doc = f"{doc} (score step only: no refit)" if doc else "score step only"
        rows.append((f"{prefix}{f.name}", "null" if default is None else repr(default), doc))
    return rows
