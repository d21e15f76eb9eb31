# Gated or ungated coreset bank per domain x experiment.
rule bank:
    input:
        manifest=manifest_path,
        features=experiment_features,
        code=code(
            "banks", "features/descriptors.py", "features/context.py", "features/cache.py",
            "cli.py",
        ),
    output:
        bank=f"{WORK}/banks/domain_{{domain}}/{{experiment}}.parquet",
        meta=f"{WORK}/banks/domain_{{domain}}/{{experiment}}.json",
    params:
        spec=experiment_spec,
        device=STEP_DEVICE,  # coreset selection
    threads: 1
    log:
        f"{WORK}/logs/bank/{{domain}}_{{experiment}}.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m hdmap_ad bank --manifest {input.manifest} "
        "--domain {wildcards.domain} --features {input.features} --spec {params.spec:q} "
        "--device {params.device} --out {output.bank} "
        "--meta {output.meta} 2> {log}"
