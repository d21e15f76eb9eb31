# Config validation, path helpers and target lists. Rules call these; no lambdas in rules.
import json
import re
from pathlib import Path

from hdmap_ad.config import SYNTHETIC_ROOT, parse_params, spec_json
from hdmap_ad.errors import InputError

try:
    PARAMS = parse_params(config)
except InputError as exc:
    raise WorkflowError(str(exc)) from None

SRC = Path(workflow.basedir) / "src" / "hdmap_ad"
WORK = config.get("work_dir", "work")
DATASET = PARAMS.dataset
ROOT = DATASET.root
RESULT_PREFIX = DATASET.result_prefix
# bank and score jobs: a GPU where the job lands on one (device cuda|auto), else the CPU
STEP_DEVICE = "cpu" if PARAMS.device == "cpu" else "auto"


def code(*parts):
    """Source files a step runs: listed as inputs so a code change re-runs the step."""
    files = []
    for part in parts:
        p = SRC / part
        files += sorted(str(f) for f in p.glob("*.py")) if p.is_dir() else [str(p)]
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


def manifest_path(wildcards):
    return f"{WORK}/manifests/domain_{wildcards.domain}.parquet"


def feature_paths(domain, experiment):
    exp = PARAMS.experiments[experiment]
    return [
        f"{WORK}/features/domain_{domain}/{exp.backbone}/{layer}.parquet"
        for layer in exp.layers
    ]


def experiment_features(wildcards):
    return feature_paths(wildcards.domain, wildcards.experiment)


def experiment_spec(wildcards):
    return spec_json(PARAMS.experiments[wildcards.experiment])


def synth_spec(wildcards):
    return spec_json(PARAMS.dataset.synthetic)


def result_path(domain, experiment):
    return f"results/{RESULT_PREFIX}{domain}_{experiment}.json"


def scores_path(domain, experiment):
    return f"{WORK}/scores/domain_{domain}/{experiment}.parquet"


def target_results():
    """Metrics JSON of every domain x target (a sweep's summary for a sweep)."""
    return [result_path(d, e) for d in PARAMS.domains for e in PARAMS.target_experiments]


def target_hypotheses():
    names = config.get("targets", {}).get("hypotheses", list(PARAMS.hypotheses))
    return [f"results/hypotheses/{h}.json" for h in names]


def target_entries():
    """Every concrete run behind the targets, for summary.csv."""
    return [
        {"target": f"{RESULT_PREFIX}{d}_{v.key}", "domain": d, "experiment": name,
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
    h = PARAMS.hypotheses[name]
    return [
        {"domain": d, "variant_a": va.key, "variant_b": vb.key, "budget": va.budget,
         "seed": va.seed, "scores_a": scores_path(d, va.key), "scores_b": scores_path(d, vb.key)}
        for d in h.domains
        for va, vb in zip(PARAMS.variants(h.a), PARAMS.variants(h.b))
    ]


def hypothesis_scores(wildcards):
    pairs = _hypothesis_pairs(wildcards.hypothesis)
    return sorted({p["scores_a"] for p in pairs} | {p["scores_b"] for p in pairs})


def hypothesis_spec(wildcards):
    h = PARAMS.hypotheses[wildcards.hypothesis]
    return json.dumps({"key": h.key, "a": h.a, "b": h.b, "n_boot": h.n_boot, "seed": h.seed,
                       "margin": h.margin, "description": h.description,
                       "pairs": _hypothesis_pairs(wildcards.hypothesis)}, sort_keys=True)


def report_entries():
    """Domain x target experiment (sweeps are reported by their tables)."""
    return [
        {"domain": d, "label": f"{RESULT_PREFIX}{d}", "experiment": e,
         "method": PARAMS.experiments[e].method.name, "gate": PARAMS.experiments[e].gate,
         "scores": scores_path(d, e), "metrics": result_path(d, e),
         "bank_meta": f"{WORK}/models/domain_{d}/{e}.json",
         "manifest": f"{WORK}/manifests/domain_{d}.parquet",
         "has_conditions": DATASET.has_conditions}
        for d in PARAMS.domains
        for e in PARAMS.target_experiments
        if e not in PARAMS.sweeps
    ]


def report_plots():
    """ROC points per domain x experiment (`dvc plots show`); plain files, no folder stamp."""
    return [f"results/plots/roc/{e['label']}_{e['experiment']}.csv" for e in report_entries()]


def report_inputs():
    files = set()
    for e in report_entries():
        files |= {e["scores"], e["metrics"], e["bank_meta"], e["manifest"]}
    return sorted(files)


def report_spec():
    return json.dumps({
        "entries": report_entries(), "hypotheses": target_hypotheses(),
        "summary_md": "results/summary.md", "summary_csv": "results/summary.csv",
        "figures": "results/figures", "plots": "results/plots/roc",
    }, sort_keys=True)
