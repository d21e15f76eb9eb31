"""Validation sets without labelled faults: synthetic anomalies made from the references.

params ``validation:`` names validation sets; each is one recipe (:data:`RECIPES`: a small
registry, one options dataclass per recipe, see :mod:`hdmap_ad.validation.recipes`), its
strength (contrast) range, how many anomalies each held-out reference gives and a seed::

    validation:
      band: {recipe: noise_band, strength: [0.2, 1.0], per_reference: 2, rows: [1, 3]}

An experiment's ``select:`` grid (:mod:`hdmap_ad.selection`) names one. The set is built per
domain from the experiment's references only, never from test maps
(:mod:`hdmap_ad.validation.build`), and scored by the reference-fold models the fit step
already fits (:mod:`hdmap_ad.validation.score`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.validation.recipes import (
    RECIPES,
    Recipe,
    build_recipe_options,
    get_recipe,
    parse_range,
    recipe_options_schema,
)

#: Keys every validation set takes besides its recipe's options.
COMMON_KEYS = ("recipe", "strength", "per_reference", "seed")
DEFAULT_STRENGTH = (0.2, 1.0)
MAX_PER_REFERENCE = 50


@dataclass(frozen=True)
class ValidationConfig:
    """One named validation set (``validation.<key>`` in params).

    ``strength``: ``(low, high)`` contrast range, drawn uniformly per anomaly, in units of
    the map's mean level (what it means per recipe: :mod:`hdmap_ad.validation.recipes`).
    ``per_reference``: anomalies made from each held-out reference. ``seed``: with the
    fold, sub-model, reference and draw, seeds each anomaly (deterministic, and one anomaly
    does not change when another is added). ``options``: the recipe's options dataclass.
    """

    key: str
    recipe: str
    strength: tuple[float, float] = DEFAULT_STRENGTH
    per_reference: int = 2
    seed: int = 0
    options: Any = None

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> ValidationConfig:
        where = f"validation.{key}"
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a mapping {{recipe: <name>, ...}}")
        data = dict(data)
        if "recipe" not in data:
            raise InputError(f"{where}.recipe: missing; one of {sorted(RECIPES)}")
        recipe = get_recipe(data.pop("recipe"), f"{where}.recipe")
        strength_field = next(f for f in dataclasses.fields(cls) if f.name == "strength")
        strength = parse_range(data.pop("strength", list(DEFAULT_STRENGTH)), float,
                               strength_field, f"{where}.strength")
        if strength[0] < 0 or strength[1] > 100:
            raise InputError(f"{where}.strength: {list(strength)} must lie within [0, 100]")
        per_reference = data.pop("per_reference", 2)
        seed = data.pop("seed", 0)
        for name, value, low in (("per_reference", per_reference, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{where}.{name}: {value!r} is not an integer >= {low}")
        if per_reference > MAX_PER_REFERENCE:
            raise InputError(f"{where}.per_reference: {per_reference} is above "
                             f"{MAX_PER_REFERENCE}")
        options = build_recipe_options(recipe.Options, data, where)
        return cls(key, recipe.name, strength, per_reference, seed, options)

    @property
    def recipe_impl(self) -> Recipe:
        return RECIPES[self.recipe]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, ranges as lists: the set's spec (its options recorded in outputs)."""
        opts = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self.options).items()}
        return {"key": self.key, "recipe": self.recipe, "strength": list(self.strength),
                "per_reference": self.per_reference, "seed": self.seed, "options": opts}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ValidationConfig:
        """Back from :meth:`to_dict` (the step's ``--spec``)."""
        return cls.from_dict(spec["key"], {"recipe": spec["recipe"],
                                           "strength": spec["strength"],
                                           "per_reference": spec["per_reference"],
                                           "seed": spec["seed"], **spec["options"]})


def parse_validation(raw: dict[str, Any] | None) -> dict[str, ValidationConfig]:
    """params ``validation`` (absent or null: none)."""
    return {key: ValidationConfig.from_dict(key, data) for key, data in (raw or {}).items()}


def validation_entry_schema() -> dict[str, Any]:
    """JSON schema (draft 7) of one ``validation`` entry, derived from the registry."""
    strength = {"type": "number", "minimum": 0, "maximum": 100}
    common = {
        "strength": {"oneOf": [strength, {"type": "array", "minItems": 2, "maxItems": 2,
                                          "items": strength}],
                     "description": "contrast [low, high], in units of the map's mean level, "
                                    f"drawn per anomaly (default {list(DEFAULT_STRENGTH)})"},
        "per_reference": {"type": "integer", "minimum": 1, "maximum": MAX_PER_REFERENCE,
                          "description": "anomalies made from each held-out reference "
                                         "(default 2)"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                 "description": "seeds every anomaly with its fold, sub-model, reference and "
                                "draw (default 0)"},
    }
    branches = []
    for name, r in sorted(RECIPES.items()):
        props = {"recipe": {"const": name}, **common, **recipe_options_schema(r.Options)}
        branches.append({"if": {"properties": {"recipe": {"const": name}}},
                         "then": {"properties": props, "additionalProperties": False}})
    return {"type": "object", "required": ["recipe"],
            "properties": {"recipe": {"enum": sorted(RECIPES)}}, "allOf": branches}


def recipes_markdown() -> str:
    """The recipes and their options as a markdown table (docs)."""
    lines = ["| recipe | what it makes | option | default | meaning |", "|---|---|---|---|---|"]
    for name, r in RECIPES.items():
        for i, f in enumerate(dataclasses.fields(r.Options)):
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            lines.append(f"| {'`' + name + '`' if i == 0 else ''} | {r.summary if i == 0 else ''}"
                         f" | `{f.name}` | `{default}` | {f.metadata.get('doc', '')} |")
    return "\n".join(lines) + "\n"


__all__ = ["RECIPES", "ValidationConfig", "parse_validation", "validation_entry_schema",
           "recipes_markdown"]
