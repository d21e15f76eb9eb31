# Config validation, path helpers and target lists. Rules call these; no lambdas in rules.
import functools
import json
import os
import re
from pathlib import Path

from hdmap_ad.config import SYNTHETIC_ROOT, parse_params, read_params_yaml, spec_json
from hdmap_ad.data.fingerprint import dataset_param
from hdmap_ad.data.kinds import get_kind
from hdmap_ad.depgraph import closure, module_imports
from hdmap_ad.errors import InputError
from hdmap_ad.layout import RunLayout
from hdmap_ad.methods import METHODS

_METHOD_MODULES = frozenset(type(m).__module__ for m in METHODS.values())

#: What `--config` may set: the params file (a preset: `--config params=presets/x.yaml`) and
#: the work folder. The experiment itself lives in the params file, read as data by
#: `read_params_yaml` (never by Snakemake's `configfile:`/`--configfile`, which evaluate
#: YTE templates: a `__use_yte__` file could run code on a mere `snakemake -n`).
CONFIG_KEYS = ("params", "work_dir")


def _load_params():
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if workflow.configfiles:
        raise InputError(f"--configfile {workflow.configfiles[0]}: not read; give a params "
                         "file with --config params=<file> (read as data, never a template)")
    if unknown:
        raise InputError(f"--config {unknown[0]}: unknown key; --config takes only "
                         f"{', '.join(CONFIG_KEYS)}: put experiment settings in the params "
                         "file (--config params=<file>)")
    path = str(config.get("params", "params.yaml"))
    raw = read_params_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return path, raw, parse_params(raw)


try:
    PARAMS_FILE, PARAMS_RAW, PARAMS = _load_params()
except InputError as exc:
    raise WorkflowError(str(exc)) from None

WORK = str(config.get("work_dir", "work"))
DATASET = PARAMS.dataset
ROOT = DATASET.root
RESULT_PREFIX = DATASET.result_prefix
#: Every path under work/ and results/ (hdmap_ad.layout): the rules and helpers ask it.
LAYOUT = RunLayout(work=WORK, result_prefix=RESULT_PREFIX)
# bank and score jobs: a GPU where the job lands on one (device cuda|auto), else the CPU
STEP_DEVICE = "cpu" if PARAMS.device == "cpu" else "auto"
#: Threads of the heavy steps (extract, fit, score): every core Snakemake is given, up to a
#: cap past which BLAS/faiss gain little on these sizes; Snakemake scales them down to the
#: cores left, and a profile can set them per rule (`set-threads`).
THREAD_CAP = 16
STEP_THREADS = max(1, min(workflow.cores or 1, THREAD_CAP))


@functools.lru_cache(maxsize=None)
def _code(entries, own_method=None):
    """Sorted code inputs of ``entries`` (+ one method module), computed once per distinct
    pair: input functions call this for every job of a rule."""
    files = closure(*entries, skip=_METHOD_MODULES)
    if own_method is not None:
        # the registry (methods/__init__) imports every method module: follow only the
        # experiment's own module and the method modules it imports itself
        uses = {own_method, *module_imports(own_method)}
        files += closure(own_method, skip=_METHOD_MODULES - uses)
    return tuple(sorted({os.path.relpath(f) for f in files}))


def code(*entries):
    """Source files a step runs (the import closure of its entry modules, without any method
    module; ``hdmap_ad.depgraph``), relative to the working directory so that moving the
    checkout re-runs nothing. Listed as inputs: an edit re-runs the steps that import it."""
    return list(_code(entries))


def method_code(*entries):
    """``code(*entries)`` plus the experiment's own method module and what it imports (an
    input function: a PaDiM edit re-runs PaDiM experiments only)."""
    def files(wildcards):
        own = type(PARAMS.experiments[wildcards.experiment].method.method).__module__
        return list(_code(entries, own))

    return files


def _alternation(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    domain=_alternation(PARAMS.domains),
    experiment=_alternation(PARAMS.experiments),
    sweep=_alternation(PARAMS.sweeps),
    hypothesis=_alternation(PARAMS.hypotheses),
    backbone=_alternation(PARAMS.backbones),


def domain_root(wildcards):
    return f"{ROOT}/{DATASET.domain_dir(wildcards.domain)}"


def data_param(wildcards):
    """Content fingerprint of the domain folder (``hdmap_ad.data.fingerprint``): any file
    added, removed, renamed or edited re-runs the manifest and what depends on it."""
    return dataset_param(domain_root(wildcards),
                         generated=get_kind(DATASET.kind).generated_root is not None,
                         cache=LAYOUT.fingerprint_cache(wildcards.domain))


def manifest_spec():
    """The dataset kind's options as the manifest step's ``--spec`` (``{}`` for most kinds)."""
    return spec_json(DATASET.kind_options())


def weights_inputs(backbone):
    """A ``source: file`` checkpoint is an input of its extraction rule."""
    return [backbone.weights.path] if backbone.weights.source == "file" else []


def weights_package_version(backbone):
    """Installed version of a ``source: package`` weights package ('' otherwise)."""
    if backbone.weights.source != "package":
        return ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(backbone.weights.package)
    except PackageNotFoundError:
        return "not installed"


#: Aggregates that every re-run makes outdated until they are rebuilt.
REPORT = LAYOUT.report()
AGGREGATES = [LAYOUT.aggregate(), LAYOUT.summary_md(), LAYOUT.summary_csv(), REPORT]


def domain_outdates(wildcards):
    """What a re-run of a domain's manifest or extraction replaces (``hdmap_ad.outdated``):
    every result of the domain (a glob, expanded by the step; a stable param, so adding an
    experiment re-runs nothing) and the aggregates."""
    return [LAYOUT.domain_results(wildcards.domain), *AGGREGATES]


def experiment_outdates(wildcards):
    """What a re-run of an experiment's fit or score replaces: its result, the summaries of
    sweeps over it, the report, and the metrics/summary aggregates when they read it. A run
    that only a hypothesis reads (a reference-seed variant) leaves those aggregates alone:
    the DAG may have rebuilt them already, and nothing would rebuild them again."""
    d, e = wildcards.domain, wildcards.experiment
    sweeps = [s for s, vs in sorted(PARAMS.sweeps.items()) if e in {v.key for v in vs}]
    aggregated = any(t["domain"] == d and t["variant"] == e for t in target_entries())
    return [result_path(d, e), *(result_path(d, s) for s in sweeps),
            *(AGGREGATES if aggregated else [REPORT])]


def manifest_path(wildcards):
    return LAYOUT.manifest(wildcards.domain)


def feature_paths(domain, experiment):
    """The feature caches an experiment's fit and score read (``Params.feature_sources``)."""
    return [
        LAYOUT.features(domain, backbone, layer)
        for backbone, layer in PARAMS.feature_sources(experiment)
    ]


def experiment_features(wildcards):
    return feature_paths(wildcards.domain, wildcards.experiment)


def experiment_spec(wildcards):
    return spec_json(PARAMS.experiments[wildcards.experiment])


def experiment_fit_spec(wildcards):
    """The fit step's view of an experiment: without score-stage options (a change to one
    re-runs scoring, never the fit or training)."""
    return spec_json(PARAMS.experiments[wildcards.experiment].fit_dict())


def synth_spec(wildcards):
    return spec_json(PARAMS.dataset.synthetic)


def result_path(domain, experiment):
    return LAYOUT.metrics(domain, experiment)


def scores_path(domain, experiment):
    return LAYOUT.scores(domain, experiment)


def target_results():
    """Metrics JSON of every domain x target (a sweep's summary for a sweep)."""
    return [result_path(d, e) for d in PARAMS.domains for e in PARAMS.target_experiments]


def target_hypotheses():
    names = PARAMS_RAW.get("targets", {}).get("hypotheses", list(PARAMS.hypotheses))
    return [LAYOUT.hypothesis(h) for h in names]


def target_entries():
    """Every concrete run behind the targets, for summary.csv."""
    return [
        {"target": LAYOUT.target(d, v.key), "domain": d, "experiment": name,
         "method": PARAMS.experiments[v.key].method.name, "gate": PARAMS.experiments[v.key].gate,
         "variant": v.key, "budget": v.budget, "seed": v.seed}
        for name in PARAMS.target_experiments
        for d in PARAMS.domains
        for v in PARAMS.variants(name)
    ]


def target_variant_results():
    return [result_path(e["domain"], e["variant"]) for e in target_entries()]


def entries_spec():
    return json.dumps({"entries": target_entries()}, sort_keys=True)


def sweep_results(wildcards):
    return [result_path(wildcards.domain, v.key) for v in PARAMS.sweeps[wildcards.sweep]]


def sweep_spec(wildcards):
    variants = [dict(key=v.key, budget=v.budget, seed=v.seed)
                for v in PARAMS.sweeps[wildcards.sweep]]
    return json.dumps({"sweep": wildcards.sweep, "variants": variants}, sort_keys=True)


def _hypothesis_pairs(name):
    """One pair of runs per domain x budget x reference seed (plus the oracle arm's run)."""
    h, plan = PARAMS.hypotheses[name], PARAMS.hypothesis_plans[name]
    oracle = plan.oracle or [None] * len(plan.a)
    return [
        {"domain": d, "variant_a": va.key, "variant_b": vb.key, "budget": va.budget,
         "seed": va.seed, "scores_a": scores_path(d, va.key), "scores_b": scores_path(d, vb.key),
         **({"variant_oracle": vo.key, "scores_oracle": scores_path(d, vo.key)} if vo else {})}
        for d in h.domains
        for va, vb, vo in zip(plan.a, plan.b, oracle)
    ]


def hypothesis_scores(wildcards):
    pairs = _hypothesis_pairs(wildcards.hypothesis)
    return sorted({p[k] for p in pairs for k in ("scores_a", "scores_b", "scores_oracle")
                   if k in p})


def hypothesis_spec(wildcards):
    h, plan = PARAMS.hypotheses[wildcards.hypothesis], PARAMS.hypothesis_plans[wildcards.hypothesis]
    return json.dumps({"key": h.key, "a": h.a, "b": h.b, "oracle": h.oracle,
                       "n_boot": h.n_boot, "seed": h.seed, "margin": h.margin,
                       "correction": h.correction,
                       "description": h.description, "claim": plan.claim,
                       "claim_default": plan.claim_default,
                       "protocol": PARAMS.hypothesis_protocol(wildcards.hypothesis),
                       "pairs": _hypothesis_pairs(wildcards.hypothesis)}, sort_keys=True)


def report_entries():
    """Domain x target experiment (sweeps are reported by their tables)."""
    return [
        {"domain": d, "label": LAYOUT.label(d), "experiment": e,
         "method": PARAMS.experiments[e].method.name, "gate": PARAMS.experiments[e].gate,
         "scores": scores_path(d, e), "metrics": result_path(d, e),
         "bank_meta": LAYOUT.model_meta(d, e),
         "manifest": LAYOUT.manifest(d),
         "has_conditions": PARAMS.provides.conditions}
        for d in PARAMS.domains
        for e in PARAMS.target_experiments
        if e not in PARAMS.sweeps
    ]


def leaderboard_paths(name):
    """The JSON, markdown table and CD diagram of leaderboard ``name``."""
    return LAYOUT.leaderboard(name)


def target_leaderboards():
    """Every leaderboard of params (none when params has no ``leaderboards``)."""
    return [leaderboard_paths(name)["json"] for name in PARAMS.leaderboards]


def leaderboard_results(wildcards):
    """The metrics JSON of each domain x experiment a leaderboard ranks (existing targets)."""
    lb = PARAMS.leaderboards[wildcards.leaderboard]
    return [result_path(d, e) for d in lb.domains for e in lb.experiments]


def leaderboard_spec(wildcards):
    lb = PARAMS.leaderboards[wildcards.leaderboard]
    results = {d: {e: result_path(d, e) for e in lb.experiments} for d in lb.domains}
    return json.dumps({**lb.to_dict(), "results": results}, sort_keys=True)


def selected_path(domain, selection):
    return LAYOUT.selected(domain, selection)


def validation_dir(domain, set_id):
    """A validation set's folder, named by its content (``SelectionPlan.set_id``): the set
    under ``set/``, its feature caches under ``features/``, each point's score under
    ``scores/``."""
    return LAYOUT.validation_dir(domain, set_id)


def target_selections():
    """The selected JSON of every domain x selection target (none without ``select:``)."""
    return [selected_path(d, s) for s in PARAMS.target_selections for d in PARAMS.domains]


def report_selections():
    """Domain x selection target, for the report: its selected JSON and validation set."""
    return [{"domain": d, "label": LAYOUT.label(d), "selection": s,
             "selected": selected_path(d, s),
             "set": LAYOUT.validation_set(d, PARAMS.selections[s].set_id),
             "manifest": LAYOUT.manifest(d)}
            for s in PARAMS.target_selections for d in PARAMS.domains]


def report_plots():
    """ROC points per domain x experiment (`dvc plots show`); plain files, no folder stamp."""
    return [LAYOUT.roc_plot(e["domain"], e["experiment"]) for e in report_entries()]


def report_inputs():
    files = set()
    for e in report_entries():
        files |= {e["scores"], e["metrics"], e["bank_meta"], e["manifest"]}
    for name in PARAMS.leaderboards:
        files |= set(leaderboard_paths(name).values())
    for s in report_selections():
        files |= {s["selected"], s["set"], s["manifest"]}
    return sorted(files)


def report_spec():
    return json.dumps({
        "entries": report_entries(), "hypotheses": target_hypotheses(),
        "summary_md": LAYOUT.summary_md(), "summary_csv": LAYOUT.summary_csv(),
        "figures": LAYOUT.figures(), "plots": LAYOUT.plots(),
        "leaderboards": [leaderboard_paths(name) for name in PARAMS.leaderboards],
        "selections": report_selections(),
    }, sort_keys=True)
