# Fit the experiment's method per domain x experiment: one sub-model per condition behind the
# gate (gated experiments) or one mixed sub-model. Any registered method (params `method`).
rule fit:
    input:
        manifest=manifest_path,
        features=experiment_features,
        code=method_code("hdmap_ad.banks.bank"),
    output:
        model=directory(LAYOUT.model_dir("{domain}", "{experiment}")),
        meta=LAYOUT.model_meta("{domain}", "{experiment}"),
    params:
        spec=experiment_fit_spec,
        outdates=experiment_outdates,  # renamed *.outdated before a re-run
        device=STEP_DEVICE,  # e.g. PatchCore's coreset selection
    threads: STEP_THREADS
    log:
        LAYOUT.log("fit", "{domain}_{experiment}"),
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad fit --manifest {input.manifest:q} "
        "--domain {wildcards.domain} --features {input.features:q} "
        "--outdates {params.outdates:q} --spec {params.spec:q} "
        "--device {params.device:q} --out {output.model:q} "
        "--meta {output.meta:q} 2> {log:q}"
