# Test-set scores (and held-out reference scores) per domain x experiment.
rule score:
    input:
        manifest=manifest_path,
        features=experiment_features,
        model=f"{WORK}/models/domain_{{domain}}/{{experiment}}",
        meta=f"{WORK}/models/domain_{{domain}}/{{experiment}}.json",
        code=code(
            "scoring", "banks", "methods", "options.py", "features/descriptors.py",
            "features/context.py", "features/cache.py", "config.py", "io.py", "cli.py",
        ),
    output:
        f"{WORK}/scores/domain_{{domain}}/{{experiment}}.parquet",
    params:
        spec=experiment_spec,
        device=STEP_DEVICE,  # exact search, with a faiss GPU build
    threads: 1
    log:
        f"{WORK}/logs/score/{{domain}}_{{experiment}}.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad score --manifest {input.manifest:q} "
        "--domain {wildcards.domain} --features {input.features:q} --model {input.model:q} "
        "--meta {input.meta:q} --device {params.device} "
        "--spec {params.spec:q} --out {output:q} 2> {log:q}"
