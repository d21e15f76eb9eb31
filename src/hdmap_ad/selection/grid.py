"""``select:`` grids: an experiment's lists of option values -> concrete experiments.

::

    experiments:
      gated_select:
        backbone: effnet_lite2
        layers: [blocks.2, blocks.4]
        references: {protocol: test_good_holdout, n_cold: 16, n_warm: 16}
        gate: p90
        method: {name: patchcore, coreset_ratio: 0.1}
        select:
          validation: band              # a params `validation:` entry (default: the only one)
          coreset_ratio: [0.01, 0.1]    # a method option ...
          layers: [[blocks.2], [blocks.2, blocks.4]]   # ... an experiment key ...
          # method: [{name: patchcore}, {name: dfm}]   # ... or the method itself

Every combination of the lists (in the order written; ``method`` applied first, then its
options) is a **grid point**, a concrete experiment named after its values
(``gated_select_coreset_ratio-0p01``), fit and scored once like a sweep's variant. A point
identical to an experiment params already defines (apart from its name) *is* that
experiment: no second fit. The experiment's own values (written beside ``select``) are its
**default point** when the grid holds them.

All points share the references, the reference folds and hence one validation set: the grid
may not vary ``references``, ``deploy_folds``, ``budgets`` or ``seeds``, and its gates are
all one-model (``mixed``) or all per-condition (folds are dealt per sub-model). Selection needs a
held-out fold within every condition: at least 2 references per condition and
``deploy_folds`` >= 2 (a params error otherwise).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.validation import ValidationConfig

#: Experiment keys a grid may not vary: they change the references or their folds, so the
#: points would be validated on different anomalies.
FIXED_KEYS = ("references", "deploy_folds", "budgets", "seeds", "key")
#: Largest grid (points) and longest list (values) of one selection: each point is a fit.
MAX_POINTS = 64
MAX_VALUES = 32
#: Longest generated point name before it falls back to ``<key>_p<i>``.
MAX_NAME = 120


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: the experiment that runs it and its values per axis."""

    key: str
    values: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.key, "point": dict(self.values)}


@dataclass(frozen=True)
class SelectionPlan:
    """A ``select:`` grid resolved against params (see the module docstring).

    ``default``: position of the point equal to the experiment's own values (None when the
    grid leaves them out). ``set_spec``: what the validation set depends on (the
    validation entry, references, gate and reference folds); ``set_id`` names it by
    content (``<validation>-<sha256 prefix>``), so a recipe change builds a new set and
    nothing upstream.
    """

    key: str
    validation: str
    axes: tuple[str, ...]
    points: tuple[GridPoint, ...]
    default: int | None
    set_spec: dict[str, Any]
    set_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "validation": self.validation, "axes": list(self.axes),
                "points": [p.to_dict() for p in self.points], "default": self.default,
                "set_id": self.set_id, "set_spec": self.set_spec}


def _token(value: Any) -> str:
    """A value as a name part: ``0.01`` -> ``0p01``, ``[blocks.2, blocks.4]`` ->
    ``blocks2-blocks4``, ``{name: dfm}`` -> ``dfm``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value).replace(".", "p").replace("-", "m").replace("+", "")
    if isinstance(value, (list, tuple)):
        return "-".join(_token(v) for v in value)
    if isinstance(value, dict):
        rest = [f"{k}{_token(v)}" for k, v in sorted(value.items()) if k != "name"]
        return "-".join([str(value.get("name", "")), *rest]).strip("-")
    return re.sub(r"[^A-Za-z0-9]", "", str(value)) if value is not None else "null"


def point_names(key: str, combos: list[tuple[tuple[str, Any], ...]]) -> list[str]:
    """Experiment names of the grid points: ``<key>_<axis>-<value>...``, or ``<key>_p<i>``
    for all of them when one would be too long or two would collide."""
    names = [key + "".join(f"_{axis}-{_token(v)}" for axis, v in combo) for combo in combos]
    if len(set(names)) < len(names) or max(map(len, names)) > MAX_NAME:
        names = [f"{key}_p{i}" for i in range(len(combos))]
    return names


def _point_data(base: dict[str, Any], combo: tuple[tuple[str, Any], ...],
                exp_keys: set[str]) -> dict[str, Any]:
    """The experiment entry of one point: ``base`` with the point's values set."""
    data = json.loads(json.dumps(base))
    values = dict(combo)
    if "method" in values:
        data["method"] = json.loads(json.dumps(values["method"]))
    for axis, v in combo:
        if axis == "method":
            continue
        if axis in exp_keys:
            data[axis] = json.loads(json.dumps(v))
        else:  # a method option
            data.setdefault("method", {})[axis] = json.loads(json.dumps(v))
    return data


def _check_references(cfg: Any, per_condition: bool, where: str) -> None:
    """At least 2 references per condition and >= 2 reference folds (see module docs)."""
    refs = cfg.references
    need = "a held-out fold within every condition: at least 2 references per condition"
    if refs.protocol in ("test_good_holdout", "user_leaky"):
        if min(refs.n_cold, refs.n_warm) < 2:
            raise InputError(f"{where}: selection makes its anomalies from held-out "
                             f"references, which needs {need}; references have n_cold "
                             f"{refs.n_cold}, n_warm {refs.n_warm}")
    elif refs.protocol == "train":
        low = 4 if per_condition else 2
        if refs.k < low:
            raise InputError(f"{where}: selection makes its anomalies from held-out "
                             f"references, which needs {need} (k >= {low} here); references "
                             f"have k {refs.k}")
    if cfg.deploy_folds < 2:
        raise InputError(f"{where}: selection scores its anomalies with the reference-fold "
                         f"models; deploy_folds is {cfg.deploy_folds}, needs >= 2")


def validation_set_id(name: str, spec: dict[str, Any]) -> str:
    """``<validation name>-<10 hex digits of the spec's sha256>``."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def expand_selection(key: str, data: dict[str, Any], experiments: dict[str, Any],
                     validation: dict[str, ValidationConfig]) -> SelectionPlan:
    """The plan of one ``select:`` entry; its new grid points are added to ``experiments``
    (an existing identical experiment is reused under its own name)."""
    from hdmap_ad.config import ExperimentConfig, spec_json
    from hdmap_ad.gating import is_per_condition

    where = f"experiments.{key}.select"
    select = data.get("select")
    if not isinstance(select, dict):
        raise InputError(f"{where}: expected a mapping of option -> list of values")
    base = {k: v for k, v in data.items() if k != "select"}
    select = dict(select)
    vname = select.pop("validation", None)
    if vname is None:
        if len(validation) != 1:
            raise InputError(f"{where}.validation: name one of params validation "
                             f"{sorted(validation) or '(none defined: add a validation: block)'}")
        vname = next(iter(validation))
    if vname not in validation:
        raise InputError(f"{where}.validation: {vname!r} is not defined under validation "
                         f"(defined: {sorted(validation)})")
    swept = [k for k in ("budgets", "seeds") if k in base]
    if swept:
        raise InputError(f"experiments.{key}.{swept[0]}: a selection grid runs one reference "
                         "draw; give budgets / seeds to a separate experiment")
    if not select:
        raise InputError(f"{where}: no grid; give lists of values, e.g. coreset_ratio: "
                         "[0.01, 0.1]")
    exp_keys = {f.name for f in fields(ExperimentConfig)}
    n_points = 1
    for axis, values in select.items():
        if axis in FIXED_KEYS:
            raise InputError(f"{where}.{axis}: a grid may not vary {axis} (the points would "
                             "be validated on other references or folds)")
        if not isinstance(values, list) or not values:
            raise InputError(f"{where}.{axis}: expected a non-empty list of values, got "
                             f"{values!r:.60}")
        if len(values) > MAX_VALUES:
            raise InputError(f"{where}.{axis}: {len(values)} values, at most {MAX_VALUES}")
        if axis == "method" and not all(isinstance(v, dict) for v in values):
            raise InputError(f"{where}.method: expected a list of method blocks "
                             "{name: <method>, ...}")
        n_points *= len(values)
    if n_points > MAX_POINTS:
        raise InputError(f"{where}: {n_points} grid points, at most {MAX_POINTS} (each is a fit)")
    try:
        base_cfg = ExperimentConfig.from_dict(key, base)
    except InputError as exc:
        raise InputError(f"experiments.{key}: {exc}") from None
    axes = tuple(select)
    combos = [tuple(zip(axes, vals, strict=True))
              for vals in itertools.product(*(select[a] for a in axes))]
    names = point_names(key, combos)
    known = {spec_json(replace(cfg, key="")): name for name, cfg in experiments.items()}
    points, default = [], None
    grouping = set()
    for i, (name, combo) in enumerate(zip(names, combos, strict=True)):
        try:
            cfg = ExperimentConfig.from_dict(name, _point_data(base, combo, exp_keys))
        except InputError as exc:
            raise InputError(f"{where}: point {dict(combo)}: {exc}") from None
        _check_references(cfg, is_per_condition(cfg.gate), where)
        grouping.add(is_per_condition(cfg.gate))
        fingerprint = spec_json(replace(cfg, key=""))
        if fingerprint == spec_json(replace(base_cfg, key="")):
            default = i
        if fingerprint in known:
            name = known[fingerprint]
        elif name in experiments:
            raise InputError(f"{where}: grid point name {name!r} clashes with another "
                             "experiment; rename one")
        else:
            experiments[name] = cfg
            known[fingerprint] = name
        points.append(GridPoint(name, combo))
    if len(grouping) > 1:
        raise InputError(f"{where}.gate: mixes one-model gates (mixed) with per-condition "
                         "gates, whose reference folds differ; select gates within one kind")
    first = experiments[points[0].key]
    # the folds are dealt per sub-model as the first point's gate assigns the references
    # (every point's validation-score step checks that its own fit dealt them alike)
    set_spec = {"validation": validation[vname].to_dict(),
                "references": asdict(first.references), "gate": first.gate,
                "deploy_folds": first.deploy_folds}
    return SelectionPlan(key=key, validation=vname, axes=axes, points=tuple(points),
                         default=default, set_spec=set_spec,
                         set_id=validation_set_id(vname, set_spec))


def is_selection(entry: Any) -> bool:
    """Whether a params ``experiments`` entry is a selection grid."""
    return isinstance(entry, dict) and "select" in entry


def parse_selections(raw: dict[str, Any], experiments: dict[str, Any],
                     validation: dict[str, ValidationConfig]
                     ) -> tuple[dict[str, SelectionPlan], tuple[str, ...]]:
    """Every ``select:`` entry of params (grid points added to ``experiments``) and the
    selections ``snakemake all`` builds (``targets.selections``; default: all)."""
    plans = {k: expand_selection(k, v, experiments, validation)
             for k, v in raw["experiments"].items() if is_selection(v)}
    targets = raw.get("targets") or {}
    listed = [e for e in targets.get("experiments", []) if e in plans]
    if listed:
        raise InputError(f"targets.experiments: {listed[0]!r} is a selection grid; list it "
                         "under targets.selections")
    chosen = tuple(targets.get("selections", list(plans)))
    unknown = [s for s in chosen if s not in plans]
    if unknown:
        raise InputError(f"targets.selections: {unknown} are not selection grids (experiments "
                         f"with select:); params has {sorted(plans)}")
    return plans, chosen
