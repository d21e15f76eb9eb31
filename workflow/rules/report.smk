# Metrics JSON per target and the aggregate DVC reads as its metrics file.
rule metrics:
    input:
        scores=LAYOUT.scores("{domain}", "{experiment}"),
        meta=LAYOUT.model_meta("{domain}", "{experiment}"),
        manifest=manifest_path,
        features=experiment_features,
        # + the experiment's method module: its score_counts go into the metrics
        code=method_code("hdmap_ad.metrics.experiment"),
    output:
        LAYOUT.metrics("{domain}", "{experiment}"),
    log:
        LAYOUT.log("metrics", "{domain}_{experiment}"),
    shell:
        "python -m hdmap_ad metrics --scores {input.scores:q} --meta {input.meta:q} "
        "--manifest {input.manifest:q} --features {input.features:q} "
        "--domain {wildcards.domain} --out {output:q} 2> {log:q}"


rule sweep:
    """Mean and spread over seeds, per budget, of a sweep's variants."""
    input:
        variants=sweep_results,
        code=code("hdmap_ad.metrics.sweep"),
    output:
        LAYOUT.metrics("{domain}", "{sweep}"),
    params:
        spec=sweep_spec,
    log:
        LAYOUT.log("sweep", "{domain}_{sweep}"),
    shell:
        "python -m hdmap_ad sweep {input.variants:q} --spec {params.spec:q} --out {output:q} 2> {log:q}"


rule hypothesis:
    """Verdicts of one hypothesis (params: hypotheses.<name>): both arms over its reference
    seeds, two-level bootstrap per domain x budget x claim, macro over domains."""
    input:
        scores=hypothesis_scores,
        code=code("hdmap_ad.report.hypothesis"),
    output:
        LAYOUT.hypothesis("{hypothesis}"),
    params:
        spec=hypothesis_spec,
    log:
        LAYOUT.log("hypothesis", "{hypothesis}"),
    shell:
        "python -m hdmap_ad hypothesis --spec {params.spec:q} --out {output:q} 2> {log:q}"


rule aggregate:
    input:
        target_results(),
        variants=target_variant_results(),
        code=code("hdmap_ad.metrics.summary"),
    output:
        json=LAYOUT.aggregate(),
        md=LAYOUT.summary_md(),
        csv=LAYOUT.summary_csv(),
    params:
        entries=entries_spec(),
    log:
        LAYOUT.log("aggregate"),
    shell:
        "python -m hdmap_ad aggregate {input.variants:q} --out {output.json:q} "
        "--markdown {output.md:q} --csv {output.csv:q} --entries {params.entries:q} 2> {log:q}"


rule report:
    """results/report.md: summary tables, hypothesis verdicts, figures, ROC data for DVC."""
    input:
        report_inputs(),
        target_hypotheses(),
        LAYOUT.summary_md(),
        LAYOUT.summary_csv(),
        code=code("hdmap_ad.report.build"),
    output:
        md=LAYOUT.report(),
        figures=directory(LAYOUT.figures()),
        plots=report_plots(),
    params:
        spec=report_spec(),
    log:
        LAYOUT.log("report"),
    shell:
        "python -m hdmap_ad report --spec {params.spec:q} --out {output.md:q} 2> {log:q}"
