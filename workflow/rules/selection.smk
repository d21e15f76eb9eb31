# Selection without test labels (params: validation, experiments.<name>.select): a validation
# set of synthetic anomalies per domain x set (made from the references of the grid's
# experiments, content-keyed: a recipe change builds a new set and re-runs nothing upstream),
# its features through the same extraction as real maps, each grid point's validation AUROC
# from its reference-fold models, and the choice: results/<domain>_<selection>_selected.json.
VALIDATION_SETS = {p.set_id: p.set_spec for p in PARAMS.selections.values()}


def validation_set_spec(wildcards):
    return spec_json(VALIDATION_SETS[wildcards.vset])


def validation_set_features(wildcards):
    """The set's feature caches an experiment reads (its layers, then its input_map's)."""
    return [LAYOUT.validation_features(wildcards.domain, wildcards.vset, backbone, layer)
            for backbone, layer in PARAMS.feature_sources(wildcards.experiment)]


def _selection_files(wildcards):
    plan = PARAMS.selections[wildcards.selection]
    return ([LAYOUT.validation_scores(wildcards.domain, plan.set_id, p.key)
             for p in plan.points],
            [result_path(wildcards.domain, p.key) for p in plan.points])


def selection_inputs(wildcards):
    validations, metrics = _selection_files(wildcards)
    return validations + metrics


def selection_spec(wildcards):
    validations, metrics = _selection_files(wildcards)
    return json.dumps({"plan": PARAMS.selections[wildcards.selection].to_dict(),
                       "domain": wildcards.domain, "validations": validations,
                       "metrics": metrics}, sort_keys=True)


rule validation_set:
    input:
        manifest=manifest_path,
        code=code("hdmap_ad.validation.build"),
    output:
        directory(LAYOUT.validation_set("{domain}", "{vset}")),
    params:
        spec=validation_set_spec,
    wildcard_constraints:
        vset=_alternation(VALIDATION_SETS),
    log:
        LAYOUT.log("validation_set", "{domain}_{vset}"),
    shell:
        "python -m hdmap_ad validation-set --manifest {input.manifest:q} "
        "--spec {params.spec:q} --out {output:q} 2> {log:q}"


# the set's maps through each backbone, exactly as the domain's maps (features.smk)
for _key, _bb in PARAMS.backbones.items():

    rule:
        name:
            f"validation_extract_{_key}"
        input:
            set=LAYOUT.validation_set("{domain}", "{vset}"),
            code=code("hdmap_ad.features.extract", "hdmap_ad.provenance"),
            weights=weights_inputs(_bb),
        output:
            [LAYOUT.validation_features("{domain}", "{vset}", _key, layer)
             for layer in _bb.layers],
        params:
            spec=spec_json(_bb),
            out_dir=LAYOUT.validation_features_dir("{domain}", "{vset}", _key),
            device=PARAMS.device,
            weights_package=weights_package_version(_bb),
        wildcard_constraints:
            vset=_alternation(VALIDATION_SETS),
        threads: STEP_THREADS
        resources:
            gpu=1 if PARAMS.device == "cuda" else 0,
        log:
            LAYOUT.log("validation_extract", f"{_key}/{{domain}}_{{vset}}"),
        shell:
            "OMP_NUM_THREADS={threads} python -m hdmap_ad extract "
            "--manifest {input.set:q}/manifest.parquet --spec {params.spec:q} "
            "--out-dir {params.out_dir:q} --device {params.device:q} 2> {log:q}"


rule validation_score:
    """Validation AUROC of one grid point: its fold models score the set's anomalies and
    the held-out references."""
    input:
        set=LAYOUT.validation_set("{domain}", "{vset}"),
        set_features=validation_set_features,
        manifest=manifest_path,
        features=experiment_features,
        model=LAYOUT.model_dir("{domain}", "{experiment}"),
        meta=LAYOUT.model_meta("{domain}", "{experiment}"),
        code=method_code("hdmap_ad.validation.score"),
    output:
        LAYOUT.validation_scores("{domain}", "{vset}", "{experiment}"),
    params:
        spec=experiment_spec,
        device=STEP_DEVICE,
    wildcard_constraints:
        vset=_alternation(VALIDATION_SETS),
    threads: STEP_THREADS
    log:
        LAYOUT.log("validation_score", "{domain}_{vset}_{experiment}"),
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad validation-score --spec {params.spec:q} "
        "--set {input.set:q} --set-features {input.set_features:q} "
        "--manifest {input.manifest:q} --features {input.features:q} "
        "--model {input.model:q} --meta {input.meta:q} --device {params.device:q} "
        "--out {output:q} 2> {log:q}"


rule select:
    """The grid point with the best validation AUROC, its test metrics as the headline."""
    input:
        selection_inputs,
        code=code("hdmap_ad.selection.choose"),
    output:
        LAYOUT.selected("{domain}", "{selection}"),
    params:
        spec=selection_spec,
    wildcard_constraints:
        selection=_alternation(PARAMS.selections),
    log:
        LAYOUT.log("select", "{domain}_{selection}"),
    shell:
        "python -m hdmap_ad select --spec {params.spec:q} --out {output:q} 2> {log:q}"
