# The embedded synthetic HDMAP and per-domain manifests.
# The synthetic domains A-D are always available under data/synthetic (the DVC `synthesize`
# stage keeps them versioned); dataset.kind decides whether the pipeline reads them.
SYNTH_DOMAINS = ("A", "B", "C", "D")


rule synthesize:
    input:
        code("hdmap_ad.data.synth"),
    output:
        directory(f"{SYNTHETIC_ROOT}/domain_{{synth_domain}}"),
    params:
        spec=synth_spec,
    wildcard_constraints:
        synth_domain="|".join(SYNTH_DOMAINS),
    log:
        LAYOUT.log("synthesize", "{synth_domain}"),
    shell:
        "python -m hdmap_ad synth --domain {wildcards.synth_domain} --spec {params.spec:q} "
        "--out {output:q} 2> {log:q}"


rule synthetic_data:
    """The whole synthetic HDMAP (the DVC `synthesize` stage's target)."""
    input:
        [f"{SYNTHETIC_ROOT}/domain_{d}" for d in SYNTH_DOMAINS],


rule manifest:
    input:
        root=domain_root,
        code=code("hdmap_ad.data.manifest"),
    output:
        LAYOUT.manifest("{domain}"),
    params:
        kind=DATASET.kind,
        spec=manifest_spec(),  # the kind's options (folder: its index file)
        data=data_param,  # content fingerprint: a data change re-runs the manifest
        outdates=domain_outdates,  # renamed *.outdated before a re-run
    log:
        LAYOUT.log("manifest", "{domain}"),
    shell:
        "python -m hdmap_ad manifest --domain-root {input.root:q} --kind {params.kind:q} "
        "--spec {params.spec:q} --out {output:q} --outdates {params.outdates:q} 2> {log:q}"
