# Deployment: one domain x experiment as a self-contained model folder
# (`snakemake results/models/domainC_gated`), loadable without work/ or DVC. Not part of `all`.
# Its inputs are every output of the experiment (model, metadata, scores, metrics) and the
# manifest, so any re-run of the experiment rebuilds it; a folder left behind is refused as
# stale by predict and the app (hdmap_ad.deploy.bundle.stale_reason).


def export_backbone_spec(wildcards):
    """JSON of the experiment's backbone entry (its key included), as the extraction got it."""
    exp = PARAMS.experiments[wildcards.experiment]
    return spec_json(PARAMS.backbones[exp.backbone])


rule export:
    input:
        model=LAYOUT.model_dir("{domain}", "{experiment}"),
        meta=LAYOUT.model_meta("{domain}", "{experiment}"),
        scores=LAYOUT.scores("{domain}", "{experiment}"),
        metrics=LAYOUT.metrics("{domain}", "{experiment}"),
        manifest=manifest_path,
        code=method_code("hdmap_ad.deploy.export"),
    output:
        directory(LAYOUT.exported_model("{domain}", "{experiment}")),
    params:
        backbone=export_backbone_spec,
    log:
        LAYOUT.log("export", "{domain}_{experiment}"),
    shell:
        "python -m hdmap_ad export --backbone-spec {params.backbone:q} --meta {input.meta:q} "
        "--model {input.model:q} --scores {input.scores:q} --metrics {input.metrics:q} "
        "--manifest {input.manifest:q} --out {output:q} 2> {log:q}"


localrules:
    export,
