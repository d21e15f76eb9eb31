# Metrics JSON per target and the aggregate DVC reads as its metrics file.
rule metrics:
    input:
        scores=f"{WORK}/scores/domain_{{domain}}/{{experiment}}.parquet",
        meta=f"{WORK}/banks/domain_{{domain}}/{{experiment}}.json",
        manifest=manifest_path,
        features=experiment_features,
        code=code("metrics"),
    output:
        f"results/{RESULT_PREFIX}{{domain}}_{{experiment}}.json",
    log:
        f"{WORK}/logs/metrics/{{domain}}_{{experiment}}.log",
    shell:
        "python -m hdmap_ad metrics --scores {input.scores} --meta {input.meta} "
        "--manifest {input.manifest} --features {input.features} "
        "--domain {wildcards.domain} --out {output} 2> {log}"


rule aggregate:
    input:
        target_results(),
    output:
        json="results/metrics.json",
        md="results/summary.md",
    log:
        f"{WORK}/logs/aggregate.log",
    shell:
        "python -m hdmap_ad aggregate {input} --out {output.json} --markdown {output.md} 2> {log}"
