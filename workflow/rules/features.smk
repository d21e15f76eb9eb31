# One extraction job per domain x backbone: one forward pass per map writes every configured
# layer of that backbone to its own Parquet file. Rules are generated per backbone because
# the set of layer outputs differs between backbones.
for _key, _bb in PARAMS.backbones.items():

    rule:
        name:
            f"extract_{_key}"
        input:
            manifest=manifest_path,
            code=code(
                "features/extract.py", "features/preprocess.py", "features/weights.py",
                "features/cache.py", "data/maps.py",
            ),
        output:
            [f"{WORK}/features/domain_{{domain}}/{_key}/{layer}.parquet" for layer in _bb.layers],
        params:
            spec=spec_json(_bb),
            out_dir=f"{WORK}/features/domain_{{domain}}/{_key}",
            device=PARAMS.device,
        threads: workflow.cores
        resources:
            gpu=1 if PARAMS.device == "cuda" else 0,
        log:
            f"{WORK}/logs/extract/{_key}/{{domain}}.log",
        shell:
            "OMP_NUM_THREADS={threads} python -m hdmap_ad extract --manifest {input.manifest} "
            "--spec {params.spec:q} --out-dir {params.out_dir} --device {params.device} "
            "2> {log}"
