# Metrics JSON per target and the aggregate DVC reads as its metrics file.
rule metrics:
    input:
        scores=f"{WORK}/scores/domain_{{domain}}/{{experiment}}.parquet",
        meta=f"{WORK}/models/domain_{{domain}}/{{experiment}}.json",
        manifest=manifest_path,
        features=experiment_features,
        code=code("metrics", "methods/__init__.py", "provenance.py", "cli.py"),
    output:
        f"results/{RESULT_PREFIX}{{domain}}_{{experiment}}.json",
    log:
        f"{WORK}/logs/metrics/{{domain}}_{{experiment}}.log",
    shell:
        "python -m hdmap_ad metrics --scores {input.scores} --meta {input.meta} "
        "--manifest {input.manifest} --features {input.features} "
        "--domain {wildcards.domain} --out {output} 2> {log}"


rule sweep:
    """Mean and spread over seeds, per budget, of a sweep's variants."""
    input:
        variants=sweep_results,
        code=code("metrics", "cli.py"),
    output:
        f"results/{RESULT_PREFIX}{{domain}}_{{sweep}}.json",
    params:
        spec=sweep_spec,
    log:
        f"{WORK}/logs/sweep/{{domain}}_{{sweep}}.log",
    shell:
        "python -m hdmap_ad sweep {input.variants} --spec {params.spec:q} --out {output} 2> {log}"


rule hypothesis:
    """Paired bootstrap verdict of one hypothesis (params: hypotheses.<name>)."""
    input:
        scores=hypothesis_scores,
        code=code("report/hypothesis.py", "cli.py"),
    output:
        "results/hypotheses/{hypothesis}.json",
    params:
        spec=hypothesis_spec,
    log:
        f"{WORK}/logs/hypothesis/{{hypothesis}}.log",
    shell:
        "python -m hdmap_ad hypothesis --spec {params.spec:q} --out {output} 2> {log}"


rule aggregate:
    input:
        target_results(),
        variants=target_variant_results(),
        code=code("metrics", "cli.py"),
    output:
        json="results/metrics.json",
        md="results/summary.md",
        csv="results/summary.csv",
    params:
        entries=entries_spec(),
    log:
        f"{WORK}/logs/aggregate.log",
    shell:
        "python -m hdmap_ad aggregate {input.variants} --out {output.json} "
        "--markdown {output.md} --csv {output.csv} --entries {params.entries:q} 2> {log}"


rule report:
    """results/report.md: summary tables, hypothesis verdicts, figures, ROC data for DVC."""
    input:
        report_inputs(),
        target_hypotheses(),
        "results/summary.md",
        "results/summary.csv",
        code=code("report", "cli.py"),
    output:
        md="results/report.md",
        figures=directory("results/figures"),
        plots=report_plots(),
    params:
        spec=report_spec(),
    log:
        f"{WORK}/logs/report.log",
    shell:
        "python -m hdmap_ad report --spec {params.spec:q} --out {output.md} 2> {log}"
