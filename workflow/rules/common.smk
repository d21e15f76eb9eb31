# Config validation, path helpers and target lists. Rules call these; no lambdas in rules.
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


def code(*parts):
    """Source files a step runs: listed as inputs so a code change re-runs the step."""
    files = []
    for part in parts:
        p = SRC / part
        files += sorted(str(f) for f in p.glob("*.py")) if p.is_dir() else [str(p)]
    return files


wildcard_constraints:
    domain="|".join(re.escape(d) for d in PARAMS.domains),
    experiment="|".join(re.escape(e) for e in PARAMS.experiments),
    backbone="|".join(re.escape(b) for b in PARAMS.backbones),


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


def target_results():
    return [result_path(d, e) for d in PARAMS.domains for e in PARAMS.target_experiments]
