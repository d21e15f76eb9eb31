"""Typed, frozen configs built from params.yaml in one place.

``load_params`` validates the YAML against ``hdmap_ad/schemas/params.schema.yaml`` (errors name
the bad key), then builds the dataclasses below. Every CLI step receives the JSON of just the
block it uses (``--spec``), so Snakemake's params trigger re-runs exactly the jobs whose
inputs changed; ``*.from_dict`` turns that JSON back into a config.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hdmap_ad.data.kinds import SYNTHETIC_ROOT, Provides, get_kind, kind_names
from hdmap_ad.errors import InputError
from hdmap_ad.features.context import ContextConfig
from hdmap_ad.gating import GateConfig, gate_names, get_gate
from hdmap_ad.methods import MethodConfig, method_schema
from hdmap_ad.registry import Registry
from hdmap_ad.selection.grid import SelectionPlan, is_selection, parse_selections
from hdmap_ad.specs import (  # noqa: F401  (re-exported: one place to import configs from)
    PROTOCOLS,
    RAW_MODEL,
    RESIZE_MODES,
    WEIGHT_SOURCES,
    BackboneConfig,
    ReferenceConfig,
    SynthConfig,
    WeightsConfig,
    _build,
    check_int,
)
from hdmap_ad.validation import ValidationConfig, parse_validation, validation_entry_schema

if TYPE_CHECKING:
    from hdmap_ad.features.descriptors import DescriptorConfig

#: The params schema, package data (found in an installed package as in a checkout).
SCHEMA_PATH = Path(str(resources.files("hdmap_ad").joinpath("schemas", "params.schema.yaml")))

#: Experiment keys that moved into the ``method`` block (PatchCore's options).
MOVED_TO_METHOD = ("coreset_ratio", "coreset_proj_dim", "num_neighbors", "search")
#: Reference protocols that pick references per condition (``n_cold``, ``n_warm``).
CONDITION_PROTOCOLS = ("test_good_holdout", "user_leaky")


@dataclass(frozen=True)
class DatasetConfig:
    """Where the maps live: ``kind`` is a registered dataset kind (``hdmap_ad.data.kinds``:
    ``synthetic``, ``hdmap``, ``mvtec``, ``folder``), which lays out the domains under
    ``root`` and says what they provide (conditions, masks). ``index``: the ``folder`` kind's
    index file in each domain folder (``samples.csv``); the kinds that read no such option
    refuse it.
    """

    kind: str = "synthetic"
    root: str = SYNTHETIC_ROOT
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    index: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetConfig:
        data = dict(data)
        data["synthetic"] = SynthConfig.from_dict(data.get("synthetic", {}))
        cfg = _build(cls, data, "dataset")
        kind = get_kind(cfg.kind)
        if kind.generated_root is not None and cfg.root != kind.generated_root:
            raise InputError(f"dataset.root: the {cfg.kind} data lives in "
                             f"{kind.generated_root}")
        if cfg.index is not None and "index" not in kind.options:
            raise InputError(f"dataset.index: dataset.kind {cfg.kind!r} reads no index (the "
                             "folder kind does)")
        return cfg

    def kind_options(self) -> dict[str, Any]:
        """The kind's options with the params' values filled in (``{}`` for most kinds):
        the ``manifest`` step's ``--spec``."""
        options = dict(get_kind(self.kind).options)
        if "index" in options and self.index is not None:
            options["index"] = self.index
        return options

    def domain_dir(self, domain: str) -> str:
        """Folder of a domain under ``root``: ``C`` -> ``domain_C`` (HDMAP), else the name."""
        return get_kind(self.kind).domain_dir(domain)

    @property
    def result_prefix(self) -> str:
        """Results are ``results/{prefix}{domain}_{experiment}.json`` (``domainC_gated``)."""
        return get_kind(self.kind).result_prefix

    def provides(self, domains: tuple[str, ...]) -> Provides:
        """What the dataset's domains provide (conditions, masks): the kind's declaration,
        or what it reads (the ``folder`` kind: its index files' columns)."""
        return get_kind(self.kind).provides(
            [Path(self.root) / self.domain_dir(d) for d in domains], self.kind_options())


#: Experiment keys only the score step reads (see ``ExperimentConfig.fit_dict``).
SCORE_STAGE_KEYS = ("gate_margin",)


@dataclass(frozen=True)
class ExperimentConfig:
    """One run: backbone layers, descriptors, references, gate and method (with its options).

    ``method`` is any registered method (``hdmap_ad.methods``); the gate wraps it: ``mixed``
    fits one sub-model, every other gate one per condition.
    """

    key: str
    backbone: str
    layers: tuple[str, ...]
    references: ReferenceConfig
    gate: str = "mixed"
    gate_margin: float = 0.02
    method: MethodConfig = field(default_factory=MethodConfig)
    seed: int = 0
    deploy_folds: int = 4
    project_dim: int | None = None
    context: ContextConfig = field(default_factory=ContextConfig)
    input_map: str | None = None

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> ExperimentConfig:
        where = f"experiments.{key}"
        data = dict(data)
        data["key"] = key
        data["layers"] = tuple(data.get("layers", ()))
        data["references"] = ReferenceConfig.from_dict(
            data.get("references", {}), f"{where}.references"
        )
        data["context"] = ContextConfig.from_dict(data.get("context") or {}, f"{where}.context")
        moved = [k for k in MOVED_TO_METHOD if k in data]
        if moved:
            raise InputError(f"{where}.{moved[0]}: PatchCore's options moved into the method "
                             f"block: write `method: {{name: patchcore, {moved[0]}: ...}}`")
        method = data.get("method")
        if isinstance(method, dict):
            data["method"] = MethodConfig.from_dict(method, f"{where}.method")
        elif method is None:
            data["method"] = MethodConfig()
        else:
            raise InputError(f"{where}.method: expected a mapping {{name: <method>, ...}}")
        cfg = _build(cls, data, where)
        get_gate(cfg.gate, f"{where}.gate")  # InputError: '<name>' is not one of (...)
        check_int(cfg.seed, f"{where}.seed", minimum=0)
        check_int(cfg.deploy_folds, f"{where}.deploy_folds", minimum=0)
        if cfg.deploy_folds == 1:
            raise InputError(f"{where}.deploy_folds: 1 fold holds nothing out; use 0 or >= 2")
        if cfg.project_dim is not None:
            check_int(cfg.project_dim, f"{where}.project_dim", minimum=1)
        if isinstance(cfg.gate_margin, bool) or not isinstance(cfg.gate_margin, (int, float)) \
                or cfg.gate_margin < 0:
            raise InputError(f"{where}.gate_margin: {cfg.gate_margin!r} is not a number >= 0")
        if cfg.method.method.reads_map and cfg.input_map is None:
            raise InputError(f"{where}.input_map: method {cfg.method.name} reads the map itself; "
                             "name a raw backbone here (model: raw, layers: [map] or [rgb])")
        why = cfg.method.method.needs_layer_channels(cfg.method.options)
        changed = [k for k, on in (("project_dim", cfg.project_dim is not None),
                                   ("context", cfg.context.enabled),
                                   ("input_map", cfg.input_map is not None)) if on]
        if why and changed:
            raise InputError(f"{where}.{changed[0]}: method {cfg.method.name} ({why}) needs "
                             f"each layer's own channels, which {changed[0]} changes")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["method"] = self.method.to_dict()
        return out

    def split_features(self, paths: list[str]) -> tuple[list[str], str | None]:
        """The step's ``--features`` list as ``(layer caches, input_map cache or None)``: the
        layers in order, then the ``input_map`` backbone's cache when there is one."""
        want = len(self.layers) + (self.input_map is not None)
        if len(paths) != want:
            raise InputError(f"experiments.{self.key}: {len(paths)} feature caches given, "
                             f"expected {want} (layers {list(self.layers)}"
                             + (f" + input_map {self.input_map!r})" if self.input_map else ")"))
        if self.input_map is None:
            return list(paths), None
        return list(paths[:-1]), paths[-1]

    def fit_dict(self) -> dict[str, Any]:
        """What the fit step reads (its Snakemake param and the model metadata): ``to_dict``
        without the score-stage options (the method's, and ``gate_margin``), so changing one
        of those re-runs scoring but no fit or training."""
        out = self.to_dict()
        out["method"] = self.method.fit_dict()
        for key in SCORE_STAGE_KEYS:
            out.pop(key)
        return out

    @property
    def gate_config(self) -> GateConfig:
        """The gate (``hdmap_ad.gating``) with its options, read from the ``gate_*`` keys
        (``gate_margin``), and the seed its coin draws from."""
        return GateConfig.build(self.gate, {"gate_margin": self.gate_margin}, self.seed,
                                f"experiments.{self.key}")

    @property
    def descriptor(self) -> DescriptorConfig:
        """How bank and query descriptors are built from the cached layers."""
        from hdmap_ad.features.descriptors import DescriptorConfig

        return DescriptorConfig(project_dim=self.project_dim, context=self.context)


@dataclass(frozen=True)
class Variant:
    """One concrete run of a sweep: its experiment key, reference budget and seed."""

    key: str
    budget: int | None
    seed: int | None


#: What a hypothesis may be about: the AUROC over all test maps (``pooled``), the mean of the
#: cold and warm AUROC (``condition_macro``: detection within a condition, blind to how one
#: threshold serves both), or one condition alone.
CLAIMS = ("pooled", "condition_macro", "cold", "warm")
#: Reference seeds of a hypothesis whose arms are not sweeps over ``seeds``.
DEFAULT_HYPOTHESIS_SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class HypothesisConfig:
    """A comparison: experiment (or sweep) ``b`` claimed better than ``a`` on ``domains``.

    Both arms run over several reference draws (``seeds``; default
    :data:`DEFAULT_HYPOTHESIS_SEEDS`, or the arms' own ``seeds`` when they are sweeps over
    seeds): seed ``s`` re-draws the references (``references.seed``) and the method's seed, as
    a sweep's ``seeds`` do. Crossed bootstrap (seeds x test maps; ``n_boot`` resamples,
    ``seed``); the verdict on ``claim`` (one of :data:`CLAIMS`; default ``condition_macro``
    when the arms differ in gate, else ``pooled``) is one of supported / refuted / equivalent /
    inconclusive, by one-sided tests of delta AUROC (b - a) against ``margin`` (default 0.005
    AUROC: smaller differences are no practical difference) with p-values adjusted over the
    hypothesis's verdicts by ``correction`` (``holm`` or ``none``;
    ``hdmap_ad.report.verdicts``). ``oracle`` names an oracle-gated experiment (or sweep)
    shown beside the gated arm.
    """

    key: str
    a: str
    b: str
    domains: tuple[str, ...]
    n_boot: int = 2000
    seed: int = 0
    margin: float = 0.005
    correction: str = "holm"
    description: str = ""
    seeds: tuple[int, ...] | None = None
    claim: str | None = None
    oracle: str | None = None


@dataclass(frozen=True)
class HypothesisPlan:
    """A hypothesis resolved against the experiments: its claim, seeds and concrete runs.

    ``a``, ``b`` (and ``oracle``) are aligned tuples of variants, one per budget x seed;
    ``claim_default`` says whether the claim came from the default rule.
    """

    claim: str
    claim_default: bool
    seeds: tuple[int, ...]
    a: tuple[Variant, ...]
    b: tuple[Variant, ...]
    oracle: tuple[Variant, ...] | None = None


#: What a leaderboard ranks by unless it says otherwise: the pooled image AUROC of the
#: per-domain metrics JSON (``results/{prefix}{domain}_{experiment}.json``).
DEFAULT_LEADERBOARD_METRIC = "metrics.auroc"


@dataclass(frozen=True)
class LeaderboardConfig:
    """Experiments ranked over domains by one metric (``hdmap_ad.report.leaderboard``).

    ``metric`` is a dotted path into the per-domain metrics JSON (``metrics.auroc``,
    ``per_condition.cold.auroc``, ``pixel.auroc``, ...), ranked highest first unless
    ``higher_is_better`` is false; ``alpha`` is the level of the Friedman / Iman-Davenport
    tests, Nemenyi's critical difference and the Holm-corrected pairwise Wilcoxon tests.
    :func:`parse_params` replaces a sweep named in ``experiments`` by its variants (each
    ranked on its own) and fills in empty ``domains`` with every domain of params.
    """

    key: str
    experiments: tuple[str, ...]
    domains: tuple[str, ...] = ()
    metric: str = DEFAULT_LEADERBOARD_METRIC
    higher_is_better: bool = True
    alpha: float = 0.05

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> LeaderboardConfig:
        """Build and check one ``leaderboards`` entry (names checked against params by
        :func:`parse_params`)."""
        where = f"leaderboards.{key}"
        data = dict(data)
        for name in ("experiments", "domains"):
            value = data.get(name, ())
            if not isinstance(value, (list, tuple)):
                raise InputError(f"{where}.{name}: expected a list, got {value!r}")
            data[name] = tuple(str(v) for v in value)
        cfg = _build(cls, {**data, "key": key}, where)
        for name, items in (("experiments", cfg.experiments), ("domains", cfg.domains)):
            twice = sorted({x for x in items if items.count(x) > 1})
            if twice:
                raise InputError(f"{where}.{name}: {twice} listed more than once")
        if len(cfg.experiments) < 2:
            raise InputError(f"{where}.experiments: a leaderboard ranks at least 2 "
                             f"experiments, got {list(cfg.experiments)}")
        if cfg.domains and len(cfg.domains) < 2:
            raise InputError(f"{where}.domains: a leaderboard ranks over at least 2 domains "
                             f"(the rank tests need them), got {list(cfg.domains)}")
        alpha = cfg.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not 0 < alpha < 1:
            raise InputError(f"{where}.alpha: {alpha!r} is not a number in (0, 1)")
        if not isinstance(cfg.metric, str) or not all(
                p.replace("_", "").isalnum() for p in cfg.metric.split(".")):
            raise InputError(f"{where}.metric: {cfg.metric!r} is not a dotted key path into "
                             "the metrics JSON (e.g. metrics.auroc)")
        if not isinstance(cfg.higher_is_better, bool):
            raise InputError(f"{where}.higher_is_better: {cfg.higher_is_better!r} is not "
                             "true or false")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_leaderboard(
    lb: LeaderboardConfig, domains: tuple[str, ...], experiments: dict[str, ExperimentConfig],
    sweeps: dict[str, tuple[Variant, ...]],
) -> LeaderboardConfig:
    """``lb`` with its names checked against params, a sweep replaced by its variants (each
    ranked as an experiment) and its default domains (all of params) filled in."""
    where = f"leaderboards.{lb.key}"
    unknown = [e for e in lb.experiments if e not in experiments and e not in sweeps]
    if unknown:
        raise InputError(f"{where}.experiments: unknown experiment(s) {unknown}; params "
                         f"defines {sorted(set(experiments) | set(sweeps))}")
    runs = [v.key for e in lb.experiments for v in sweeps.get(e, (Variant(e, None, None),))]
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise InputError(f"{where}.experiments: {twice} listed more than once (directly and "
                         "as a sweep's variant)")
    bad = [d for d in lb.domains if d not in domains]
    if bad:
        raise InputError(f"{where}.domains: {bad} not in domains {list(domains)}")
    if not lb.domains and len(domains) < 2:
        raise InputError(f"{where}.domains: a leaderboard ranks over at least 2 domains (the "
                         f"rank tests need them); params has {list(domains)}: list more "
                         f"domains or remove leaderboards.{lb.key}")
    return replace(lb, experiments=tuple(runs), domains=lb.domains or domains)


@dataclass(frozen=True)
class Params:
    """Everything params.yaml describes.

    ``experiments`` holds concrete runs only: an entry with ``budgets`` and/or ``seeds``
    becomes a sweep, listed in ``sweeps`` (key -> its variants), whose variants are
    experiments named ``<key>_b<budget>_s<seed>``.
    """

    dataset: DatasetConfig
    domains: tuple[str, ...]
    backbones: dict[str, BackboneConfig]
    experiments: dict[str, ExperimentConfig]
    device: str = "cpu"
    target_experiments: tuple[str, ...] = ()
    sweeps: dict[str, tuple[Variant, ...]] = field(default_factory=dict)
    hypotheses: dict[str, HypothesisConfig] = field(default_factory=dict)
    hypothesis_plans: dict[str, HypothesisPlan] = field(default_factory=dict)
    leaderboards: dict[str, LeaderboardConfig] = field(default_factory=dict)
    #: validation sets and ``select:`` grids (``hdmap_ad.validation``, ``hdmap_ad.selection``)
    validation: dict[str, ValidationConfig] = field(default_factory=dict)
    selections: dict[str, SelectionPlan] = field(default_factory=dict)
    target_selections: tuple[str, ...] = ()
    #: what the dataset provides (``DatasetConfig.provides``): conditions, masks
    provides: Provides = field(default_factory=lambda: Provides(conditions=True, masks=False))

    def feature_sources(self, experiment: str) -> list[tuple[str, str]]:
        """``(backbone key, layer)`` of every feature cache an experiment reads, in the order
        its steps take them (:meth:`ExperimentConfig.split_features`): its layers, then its
        ``input_map``'s layer. The one source of the fit and score rules' feature inputs."""
        exp = self.experiments[experiment]
        out = [(exp.backbone, layer) for layer in exp.layers]
        if exp.input_map is not None:
            out.append((exp.input_map, self.backbones[exp.input_map].layers[0]))
        return out

    def variants(self, name: str) -> tuple[Variant, ...]:
        """The concrete runs of an experiment or sweep name."""
        if name in self.sweeps:
            return self.sweeps[name]
        return (Variant(name, None, None),)

    def hypothesis_protocol(self, name: str) -> dict[str, Any]:
        """What a hypothesis compares, as data for its verdict file and the report: the arms
        (experiment, gate, method), budgets, seeds, domains and the reference protocol."""
        h, plan = self.hypotheses[name], self.hypothesis_plans[name]
        first = self.experiments[plan.b[0].key]
        refs = first.references
        budgets = list(dict.fromkeys(v.budget for v in plan.b))
        per_budget = []
        for budget in budgets:
            r = self.experiments[next(v.key for v in plan.b if v.budget == budget)].references
            per_budget.append({"budget": budget, **(
                {"k": r.k} if r.protocol == "train" else
                {} if r.protocol == "full" else {"n_cold": r.n_cold, "n_warm": r.n_warm})})
        arms = {}
        for arm, variants in (("a", plan.a), ("b", plan.b), ("oracle", plan.oracle)):
            if variants:
                exp = self.experiments[variants[0].key]
                arms[arm] = {"experiment": getattr(h, arm), "gate": exp.gate,
                             "method": exp.method.name}
        return {
            "domains": list(h.domains),
            "budgets": budgets,
            "seeds": list(plan.seeds),
            "references": {"protocol": refs.protocol, "pick": refs.pick,
                           "per_budget": per_budget},
            "arms": arms,
        }


def params_schema(schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The params JSON schema as validated: the YAML file with the blocks the code defines
    (the gate enum, the method options) filled in from it, so each is stated once. The
    generated docs reference reads it too."""
    schema = yaml.safe_load(schema_path.read_text())
    exp_props = schema["definitions"]["experiment"]["properties"]
    exp_props["gate"] = {"enum": list(gate_names())}
    schema["properties"]["hypotheses"]["additionalProperties"]["properties"]["claim"] = {
        "enum": list(CLAIMS)}
    exp_props["method"] = method_schema()
    schema["properties"]["dataset"]["properties"]["kind"] = {
        "enum": list(kind_names()),
        "description": "how the domains lie under root and what they provide (the "
                       "registry hdmap_ad.data.kinds)"}
    schema["properties"]["validation"]["additionalProperties"] = validation_entry_schema()
    return schema


@functools.lru_cache(maxsize=4)
def _validator(schema_path: Path, mtime_ns: int, registry_changes: int = 0) -> Any:
    """The schema's validator, built once per schema file version (parsing the schema YAML
    took 30 ms of every params parse: the DAG, each step, and the params fuzz tests) and
    per state of the method, gate and dataset-kind registries (``Registry.changes``: a
    method, gate or kind registered at run time joins the schema)."""
    import jsonschema

    return jsonschema.Draft7Validator(params_schema(schema_path))


def validate_params(raw: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Validate raw params against the JSON schema; the error names the offending key path."""
    validator = _validator(schema_path, schema_path.stat().st_mtime_ns, Registry.changes)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        message, value = err.message, repr(err.instance)
        if len(value) > 80:  # a 1000-item list or a 1 MB string: the line names, not echoes
            message = message.replace(value, value[:60] + "...")
        raise InputError(f"params: {where}: {message}")


def _variant_key(key: str, budget: int | None, seed: int | None) -> str:
    parts = [key] + ([f"b{budget}"] if budget is not None else [])
    return "_".join(parts + ([f"s{seed}"] if seed is not None else []))


def expand_sweep(
    key: str, data: dict[str, Any]
) -> tuple[dict[str, ExperimentConfig], tuple[Variant, ...] | None]:
    """Concrete experiments of one params entry, and its variants when it is a sweep.

    ``budgets`` sets the references per condition (``n_cold = n_warm = b``; ``k = 2b`` for
    the train protocol); ``seeds`` sets the reference pick seed and the experiment seed.
    """
    data = dict(data)
    budgets, seeds = data.pop("budgets", None), data.pop("seeds", None)
    if budgets is None and seeds is None:
        return {key: ExperimentConfig.from_dict(key, data)}, None
    out, variants = {}, []
    for b in budgets if budgets is not None else [None]:
        for s in seeds if seeds is not None else [None]:
            vdata = json.loads(json.dumps(data))
            refs = vdata.setdefault("references", {})
            if b is not None:
                if refs.get("protocol") == "train":
                    refs["k"] = 2 * b
                else:
                    refs["n_cold"], refs["n_warm"] = b, b
            if s is not None:
                refs["seed"], vdata["seed"] = s, s
            vkey = _variant_key(key, b, s)
            out[vkey] = ExperimentConfig.from_dict(vkey, vdata)
            variants.append(Variant(vkey, b, s))
    return out, tuple(variants)


def _seed_variants(
    name: str, seeds: tuple[int, ...], experiments: dict[str, ExperimentConfig],
    sweeps: dict[str, tuple[Variant, ...]], where: str,
) -> tuple[Variant, ...]:
    """The runs of arm ``name`` over reference ``seeds`` (new experiments go into
    ``experiments``).

    A sweep over ``seeds`` is its own answer. Otherwise every run (each budget of a sweep over
    budgets) is repeated per seed as a sweep's ``seeds`` would: ``references.seed`` and
    ``seed`` set to ``s``, named ``<name>[_b<budget>]_s<seed>``; a run whose two seeds are
    already ``s`` is reused as it is (no duplicate fit).
    """
    base = sweeps.get(name, (Variant(name, None, None),))
    if any(v.seed is not None for v in base):
        return base
    out = []
    for v in base:
        exp = experiments[v.key]
        for s in seeds:
            if exp.seed == s and exp.references.seed == s:
                out.append(Variant(v.key, v.budget, s))
                continue
            key = _variant_key(name, v.budget, s)
            cfg = replace(exp, key=key, seed=s, references=replace(exp.references, seed=s))
            if key in experiments and experiments[key] != cfg:
                raise InputError(f"{where}: the run {key!r} for seed {s} of {name!r} clashes "
                                 "with an experiment of that name; rename it")
            experiments[key] = cfg
            out.append(Variant(key, v.budget, s))
    return tuple(out)


def _hypothesis_plan(
    h: HypothesisConfig, experiments: dict[str, ExperimentConfig],
    sweeps: dict[str, tuple[Variant, ...]], has_conditions: bool,
) -> HypothesisPlan:
    """Resolve seeds, claim and concrete runs of one hypothesis (see HypothesisConfig)."""
    where = f"hypotheses.{h.key}"
    arms = [h.a, h.b] + ([h.oracle] if h.oracle else [])
    swept = {x: sorted({v.seed for v in sweeps.get(x, ()) if v.seed is not None})
             for x in arms}
    own = {tuple(v) for v in swept.values() if v}
    if own:
        seeds = own.pop()
        if own or any(not v for v in swept.values()):
            raise InputError(f"{where}: the arms must sweep the same seeds")
        if h.seeds is not None and sorted(h.seeds) != list(seeds):
            raise InputError(f"{where}.seeds: {list(h.seeds)} differ from the seeds the arms "
                             f"sweep ({list(seeds)}); give them in one place")
        seeds = tuple(seeds)
    else:
        seeds = tuple(h.seeds) if h.seeds is not None else DEFAULT_HYPOTHESIS_SEEDS
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{where}.seeds: {list(seeds)} repeats a seed")
    runs = {x: _seed_variants(x, seeds, experiments, sweeps, where) for x in arms}
    shapes = {x: [(v.budget, v.seed) for v in vs] for x, vs in runs.items()}
    if shapes[h.b] != shapes[h.a] or (h.oracle and shapes[h.oracle] != shapes[h.a]):
        raise InputError(f"{where}: {h.a!r} and {h.b!r}"
                         + (f" and oracle {h.oracle!r}" if h.oracle else "")
                         + " must have the same budgets and seeds to be compared pairwise")
    if h.oracle:
        gates = {experiments[v.key].gate for v in runs[h.oracle]}
        if gates != {"oracle"}:
            raise InputError(f"{where}.oracle: {h.oracle!r} is not oracle-gated "
                             f"(gate {sorted(gates)})")
    gated_differ = any(experiments[va.key].gate != experiments[vb.key].gate
                       for va, vb in zip(runs[h.a], runs[h.b], strict=True))
    if h.claim is None:
        claim = "condition_macro" if has_conditions and gated_differ else "pooled"
    else:
        claim = h.claim
        if claim not in CLAIMS:
            raise InputError(f"{where}.claim: {claim!r} is not one of {CLAIMS}")
        if claim != "pooled" and not has_conditions:
            raise InputError(f"{where}.claim: {claim!r} needs cold/warm conditions, which "
                             "this dataset does not have; use pooled")
    return HypothesisPlan(claim=claim, claim_default=h.claim is None, seeds=seeds,
                          a=runs[h.a], b=runs[h.b],
                          oracle=runs[h.oracle] if h.oracle else None)


def _check_moved_keys(raw: dict[str, Any]) -> None:
    """Name keys of an older params layout before the schema reports them as unexpected."""
    experiments = raw.get("experiments")
    for key, exp in (experiments if isinstance(experiments, dict) else {}).items():
        moved = [k for k in MOVED_TO_METHOD if isinstance(exp, dict) and k in exp]
        if moved:
            raise InputError(
                f"params: experiments.{key}.{moved[0]}: PatchCore's options moved into the "
                f"method block: write `method: {{name: patchcore, {moved[0]}: ...}}`")


def _key_path(parts: tuple[Any, ...]) -> str:
    """``experiments.gated.seed`` for messages: an odd key quoted, a deep path cut short."""
    shown = [str(p) if isinstance(p, int) or str(p).replace("_", "").replace("-", "").isalnum()
             else repr(p) for p in parts]
    if len(shown) > 6:
        shown = shown[:5] + ["..."]
    return ".".join(shown) or "<top level>"


def _check_plain_data(raw: Any) -> None:
    """Params are JSON-like data: string keys, finite numbers, bounded depth and size (as a
    params file is, :func:`read_params_yaml`); a dict built in code is held to the same, so
    the schema and the configs never meet a NaN, a tuple key or a self-containing list."""
    if not isinstance(raw, dict):
        raise InputError(f"params: expected a mapping at the top level, got "
                         f"{type(raw).__name__}")
    count = 0
    stack: list[tuple[Any, tuple[Any, ...]]] = [(raw, ())]
    while stack:
        value, parts = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise InputError(f"params: {_key_path(parts)}: more than {MAX_YAML_NODES} values "
                             "in all")
        if len(parts) > MAX_YAML_DEPTH:
            raise InputError(f"params: {_key_path(parts)}: nested deeper than "
                             f"{MAX_YAML_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InputError(f"params: {_key_path(parts)}: key {k!r:.40} is not a "
                                     "string (quote it in YAML)")
                if not k.isprintable():  # a newline in a key would split its message
                    raise InputError(f"params: {_key_path(parts)}: key {k!r:.40} holds a "
                                     "control character")
                stack.append((v, (*parts, k)))
        elif isinstance(value, list):
            stack.extend((v, (*parts, i)) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InputError(f"params: {_key_path(parts)}: {value!r} is not a finite "
                                 "number")
        elif value is not None and not isinstance(value, (str, int)):  # bool is an int
            raise InputError(f"params: {_key_path(parts)}: {type(value).__name__} "
                             f"{value!r:.40} is not plain data (a string, number, boolean, "
                             "null, list or mapping)")


def parse_params(raw: dict[str, Any]) -> Params:
    """Build and cross-check :class:`Params` from a validated params dict."""
    _check_plain_data(raw)
    _check_moved_keys(raw)
    validate_params(raw)
    backbones = {k: BackboneConfig.from_dict(k, v) for k, v in raw["backbones"].items()}
    experiments: dict[str, ExperimentConfig] = {}
    sweeps: dict[str, tuple[Variant, ...]] = {}
    for k, v in raw["experiments"].items():
        if is_selection(v):  # a select: grid; its points are added below
            continue
        concrete, variants = expand_sweep(k, v)
        clash = sorted(set(concrete) & (set(experiments) | set(raw["experiments"]) - {k}))
        if clash:
            raise InputError(f"experiments.{k}: variant name(s) {clash} clash with other entries")
        experiments.update(concrete)
        if variants is not None:
            sweeps[k] = variants
    validation = parse_validation(raw.get("validation"))
    selections, target_selections = parse_selections(raw, experiments, validation)
    for key, exp in experiments.items():
        if exp.backbone not in backbones:
            raise InputError(
                f"experiments.{key}.backbone: unknown backbone {exp.backbone!r}; "
                f"params defines {sorted(backbones)}"
            )
        missing = [la for la in exp.layers if la not in backbones[exp.backbone].layers]
        if missing:
            raise InputError(
                f"experiments.{key}.layers: {missing} not cached by backbone "
                f"{exp.backbone!r} (its layers: {list(backbones[exp.backbone].layers)})"
            )
        if not exp.layers:
            raise InputError(f"experiments.{key}.layers: at least one layer is required")
        if exp.input_map is not None:
            raw_keys = sorted(k for k, b in backbones.items() if b.model == RAW_MODEL)
            bad = exp.input_map not in backbones or backbones[exp.input_map].model != RAW_MODEL
            if bad or len(backbones[exp.input_map].layers) != 1:
                raise InputError(
                    f"experiments.{key}.input_map: {exp.input_map!r} must name a backbone with "
                    f"model {RAW_MODEL!r} and one layer (map or rgb); params defines raw "
                    f"backbone(s) {raw_keys}")
    names = set(experiments) | set(sweeps)
    targets = tuple(raw.get("targets", {}).get(
        "experiments", [k for k in raw["experiments"] if k not in selections]))
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise InputError(f"targets.experiments: {unknown} are not defined under experiments")
    domains = tuple(str(d) for d in raw["domains"])
    dataset = DatasetConfig.from_dict(raw["dataset"])
    provides = dataset.provides(domains)  # the folder kind reads its index files' headers
    hypotheses, plans = {}, {}
    for hkey, h in (raw.get("hypotheses") or {}).items():
        hdomains = tuple(str(d) for d in h.get("domains", domains))
        hseeds = None if h.get("seeds") is None else tuple(h["seeds"])
        hyp = _build(HypothesisConfig, {**h, "key": hkey, "domains": hdomains, "seeds": hseeds},
                     f"hypotheses.{hkey}")
        for arm in ("a", "b", "oracle"):
            if arm == "oracle" and hyp.oracle is None:
                continue
            if getattr(hyp, arm) not in names:
                raise InputError(f"hypotheses.{hkey}.{arm}: unknown experiment "
                                 f"{getattr(hyp, arm)!r}")
        va, vb = (sweeps.get(x) for x in (hyp.a, hyp.b))
        shape = [(v.budget, v.seed) for v in va or ()], [(v.budget, v.seed) for v in vb or ()]
        if shape[0] != shape[1]:
            raise InputError(f"hypotheses.{hkey}: {hyp.a!r} and {hyp.b!r} must have the same "
                             "budgets and seeds to be compared pairwise")
        bad = [d for d in hyp.domains if d not in domains]
        if bad:
            raise InputError(f"hypotheses.{hkey}.domains: {bad} not in domains")
        hypotheses[hkey] = hyp
        plans[hkey] = _hypothesis_plan(hyp, experiments, sweeps, provides.conditions)
    unknown = [h for h in raw.get("targets", {}).get("hypotheses", []) if h not in hypotheses]
    if unknown:
        raise InputError(f"targets.hypotheses: {unknown} are not defined under hypotheses")
    for name in targets:
        for v in sweeps.get(name, (Variant(name, None, None),)):
            exp = experiments[v.key]
            if get_gate(exp.gate).per_condition:
                provides.require("conditions", f"experiments.{name}.gate: {exp.gate!r}",
                                 dataset.kind, "use gate: mixed")
            if exp.references.protocol in CONDITION_PROTOCOLS:
                provides.require(
                    "conditions", f"experiments.{name}.references.protocol: "
                    f"{exp.references.protocol!r}", dataset.kind,
                    "use protocol: train or full (references from train/good)")
    leaderboards = {
        key: _check_leaderboard(LeaderboardConfig.from_dict(key, lb), domains, experiments,
                                sweeps)
        for key, lb in (raw.get("leaderboards") or {}).items()
    }
    for key, lb in leaderboards.items():
        for prefix, what in (("pixel.", "masks"), ("per_condition.", "conditions")):
            if lb.metric.startswith(prefix):
                provides.require(what, f"leaderboards.{key}.metric: {lb.metric!r}",
                                 dataset.kind, "rank by an image metric (metrics.auroc)")
    return Params(
        leaderboards=leaderboards,
        validation=validation,
        selections=selections,
        target_selections=target_selections,
        sweeps=sweeps,
        hypotheses=hypotheses,
        hypothesis_plans=plans,
        target_experiments=targets,
        dataset=dataset,
        provides=provides,
        domains=domains,
        backbones=backbones,
        experiments=experiments,
        device=raw.get("device", "cpu"),
    )


class _StrictLoader(yaml.SafeLoader):
    """safe_load for params, which are data: a key given twice in one mapping is an error (YAML
    keeps the last one silently, so an experiment defined twice would run only its second
    definition); only JSON's types and ``<<`` merges are built (a date or ``=`` stays a
    string; ``!!python/...``, ``!!binary``, ``!!set`` or a custom ``!tag`` is refused); and
    anchors are bounded (:func:`_check_graph`), so an alias bomb fails before it expands."""

    def compose_node(self, parent, index):  # noqa: D102 (PyYAML's hook)
        # depth and alias bounds while composing: PyYAML recurses per nesting level
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _ParamsYamlError(f"nested deeper than {MAX_YAML_DEPTH} levels",
                                       self.peek_event().start_mark)
            if self.check_event(yaml.AliasEvent):
                self._aliases = getattr(self, "_aliases", 0) + 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise _ParamsYamlError(f"more than {MAX_YAML_ALIASES} aliases (*name)",
                                           self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):  # noqa: D102 (PyYAML's hook)
        node = super().compose_document()
        _check_graph(node)
        return node


#: Bounds of a params file's YAML graph: nesting depth, ``*alias`` uses, and nodes once every
#: alias is expanded (presets/methods.yaml: 38 aliases, about 1,900 nodes).
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 1000
MAX_YAML_NODES = 200_000
#: Digits of an integer scalar (seeds are < 2**63: 19 digits).
MAX_YAML_INT_DIGITS = 40
_YAML = "tag:yaml.org,2002:"
#: The tags a params file may carry: JSON's types, and the merge key ``<<``.
_PARAMS_TAGS = frozenset(_YAML + t for t in ("null", "bool", "int", "float", "str", "seq",
                                             "map", "merge"))
# a date-like or ``=`` scalar is a string (PyYAML makes a date, or fails on ``=``)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in (_YAML + "timestamp", _YAML + "value")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _ParamsYamlError(Exception):
    """A params file that is valid YAML but not plain data; ``mark`` is where."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        where = f"line {mark.line + 1}: " if mark is not None else ""
        super().__init__(f"{where}{problem}")


def _check_graph(root: yaml.Node | None) -> None:
    """Refuse tags outside :data:`_PARAMS_TAGS`, recursive anchors, over-long integers and a
    graph that expands past :data:`MAX_YAML_NODES` nodes. Linear in the composed graph: each
    anchored node's expanded size is counted once (a billion-laughs file is a small graph
    that would expand to 10**9 nodes)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise _ParamsYamlError("an anchor refers to itself (recursive alias)",
                                   node.start_mark)
        if node.tag not in _PARAMS_TAGS:
            tag = node.tag.replace(_YAML, "!!")
            raise _ParamsYamlError(f"tag {tag} is not allowed (params are plain data: "
                                   "mappings, lists, strings, numbers, booleans, null)",
                                   node.start_mark)
        open_.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            total = 1
            if node.tag == _YAML + "int" and len(node.value) > MAX_YAML_INT_DIGITS:
                raise _ParamsYamlError(f"integer {node.value[:20]}... has more than "
                                       f"{MAX_YAML_INT_DIGITS} digits", node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        else:
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        open_.discard(id(node))
        if total > MAX_YAML_NODES:
            raise _ParamsYamlError(f"expands to more than {MAX_YAML_NODES} values once its "
                                   "aliases are expanded (an alias bomb?)", node.start_mark)
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain name, not a list or mapping",
                key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_params_yaml(path: str | Path) -> Any:
    """Parse a params file as data (:class:`_StrictLoader`: duplicate keys, non-data tags and
    alias bombs refused; nothing in it is evaluated, so ``__use_yte__``, Snakemake's switch
    for YTE templates, is refused too); errors name the file."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (safe subclass)
    except FileNotFoundError:
        raise InputError(f"{path}: params file not found") from None
    except _ParamsYamlError as exc:
        raise InputError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (ValueError, RecursionError) as exc:  # undecodable bytes, an int past 4300 digits
        raise InputError(f"{path}: not a params file: {' '.join(str(exc).split())}") from None
    if isinstance(raw, dict) and "__use_yte__" in raw:
        raise InputError(f"{path}: __use_yte__: params are data, never a template; "
                         "write the values themselves")
    return raw


def load_params(path: str | Path) -> Params:
    path = Path(path)
    raw = read_params_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return parse_params(raw)


def spec_json(obj: Any) -> str:
    """Canonical JSON of a config (sorted keys): the string Snakemake tracks as a param."""
    if isinstance(obj, dict):
        pass
    elif hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    elif hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
