# One extraction job per domain x backbone: one forward pass per map writes every configured
# layer of that backbone to its own Parquet file. Rules are generated per backbone because
# the set of layer outputs differs between backbones.
for _key, _bb in PARAMS.backbones.items():

    rule:
        name:
            f"extract_{_key}"
        input:
            manifest=manifest_path,
            code=code("hdmap_ad.features.extract", "hdmap_ad.provenance"),
            # a checkpoint file is an input: overwriting it re-extracts (content-checked)
            weights=weights_inputs(_bb),
        output:
            [LAYOUT.features("{domain}", _key, layer) for layer in _bb.layers],
        params:
            spec=spec_json(_bb),
            out_dir=LAYOUT.features_dir("{domain}", _key),
            device=PARAMS.device,
            weights_package=weights_package_version(_bb),  # a new release re-extracts
            outdates=domain_outdates,  # renamed *.outdated before a re-run
        threads: STEP_THREADS
        resources:
            gpu=1 if PARAMS.device == "cuda" else 0,
        log:
            LAYOUT.log("extract", f"{_key}/{{domain}}"),
        shell:
            "OMP_NUM_THREADS={threads} python -m hdmap_ad extract --manifest {input.manifest:q} "
            "--spec {params.spec:q} --out-dir {params.out_dir:q} --device {params.device:q} "
            "--outdates {params.outdates:q} 2> {log:q}"
