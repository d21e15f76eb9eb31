# Test-set scores (and held-out reference scores) per domain x experiment.
rule score:
    input:
        manifest=manifest_path,
        features=experiment_features,
        bank=f"{WORK}/banks/domain_{{domain}}/{{experiment}}.parquet",
        meta=f"{WORK}/banks/domain_{{domain}}/{{experiment}}.json",
        code=code(
            "scoring", "banks", "features/descriptors.py", "features/context.py", "cli.py"
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
        "OMP_NUM_THREADS={threads} python -m hdmap_ad score --manifest {input.manifest} "
        "--domain {wildcards.domain} --features {input.features} --bank {input.bank} "
        "--meta {input.meta} --device {params.device} "
        "--spec {params.spec:q} --out {output} 2> {log}"
