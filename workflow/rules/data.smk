# The embedded synthetic HDMAP (only when dataset.kind is synthetic) and per-domain manifests.
if PARAMS.dataset.kind == "synthetic":

    rule synthesize:
        input:
            code("data/synth.py"),
        output:
            directory(f"{ROOT}/domain_{{domain}}"),
        params:
            spec=synth_spec,
        log:
            f"{WORK}/logs/synthesize/{{domain}}.log",
        shell:
            "python -m hdmap_ad synth --domain {wildcards.domain} --spec {params.spec:q} --out {output} "
            "2> {log}"


rule manifest:
    input:
        root=domain_root,
        code=code("data/manifest.py", "data/maps.py"),
    output:
        f"{WORK}/manifests/domain_{{domain}}.parquet",
    log:
        f"{WORK}/logs/manifest/{{domain}}.log",
    shell:
        "python -m hdmap_ad manifest --domain-root {input.root} --out {output} 2> {log}"


rule synthetic_data:
    """Every configured domain of the synthetic HDMAP (the DVC `synthesize` stage's target)."""
    input:
        [f"{ROOT}/{domain_dir(d)}" for d in PARAMS.domains],
