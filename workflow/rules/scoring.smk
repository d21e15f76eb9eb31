# Test-set scores (and held-out reference scores) per domain x experiment.
rule score:
    input:
        manifest=manifest_path,
        features=experiment_features,
        model=f"{WORK}/models/domain_{{domain}}/{{experiment}}",
        meta=f"{WORK}/models/domain_{{domain}}/{{experiment}}.json",
        code=method_code("hdmap_ad.scoring.score"),
    output:
        f"{WORK}/scores/domain_{{domain}}/{{experiment}}.parquet",
    params:
        spec=experiment_spec,
        outdates=experiment_outdates,  # renamed *.outdated before a re-run
        device=STEP_DEVICE,  # exact search, with a faiss GPU build
    threads: STEP_THREADS
    log:
        f"{WORK}/logs/score/{{domain}}_{{experiment}}.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad score --manifest {input.manifest:q} "
        "--domain {wildcards.domain} --features {input.features:q} --model {input.model:q} "
        "--meta {input.meta:q} --device {params.device:q} "
        "--outdates {params.outdates:q} --spec {params.spec:q} --out {output:q} 2> {log:q}"
