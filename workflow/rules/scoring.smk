# Test-set scores (and held-out reference scores) per domain x experiment.
rule score:
    input:
        manifest=manifest_path,
        features=experiment_features,
        model=LAYOUT.model_dir("{domain}", "{experiment}"),
        meta=LAYOUT.model_meta("{domain}", "{experiment}"),
        code=method_code("hdmap_ad.scoring.score"),
    output:
        LAYOUT.scores("{domain}", "{experiment}"),
    params:
        spec=experiment_spec,
        outdates=experiment_outdates,  # renamed *.outdated before a re-run
        device=STEP_DEVICE,  # exact search, with a faiss GPU build
    threads: STEP_THREADS
    log:
        LAYOUT.log("score", "{domain}_{experiment}"),
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad score --manifest {input.manifest:q} "
        "--domain {wildcards.domain} --features {input.features:q} --model {input.model:q} "
        "--meta {input.meta:q} --device {params.device:q} "
        "--outdates {params.outdates:q} --spec {params.spec:q} --out {output:q} 2> {log:q}"
