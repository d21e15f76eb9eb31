"""The ``export`` step: a fitted experiment's pipeline outputs -> a self-contained model folder.

Reads what the fit, score and metrics steps wrote for one domain x experiment (the model
folder and its metadata JSON, the scores Parquet, the metrics JSON, optionally the manifest for
the reference maps) and writes the folder described in :mod:`hdmap_ad.deploy.bundle`, as a
whole and atomically. The deployable threshold is taken exactly from the scores (the largest
held-out reference score; the metrics JSON reports it rounded to 6 digits) and checked against
the metrics.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hdmap_ad.config import BackboneConfig, ExperimentConfig
from hdmap_ad.deploy.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MODEL_JSON,
    REFERENCES,
    SUB_MODELS,
    VERDICT_RULE,
    file_sha256,
    load_bundle,
    reference_key,
)
from hdmap_ad.errors import InputError
from hdmap_ad.io import read_json, write_json
from hdmap_ad.layout import RunLayout
from hdmap_ad.methods.base import state_file
from hdmap_ad.outputs import FOLDER, check_output, replacing_folder

#: Backbone fields whose value in the feature caches must equal the spec's.
_CHECKED = ("model", "input_size", "resize", "patch_pool")


def _read_json(path: str | Path, what: str) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except ValueError as exc:
        raise InputError(f"{path}: {what} is not valid JSON ({exc})") from None


def deployable_threshold(scores_path: str | Path) -> tuple[float | None, dict[str, Any]]:
    """The exact deployable threshold of a scores table, and the table's metadata.

    Same definition as the metrics step: the largest ``reference_cv`` score (None when no
    reference was scored).
    """
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(scores_path, columns=["role", "score"])
    except FileNotFoundError:
        raise InputError(f"{scores_path}: scores not found") from None
    except Exception as exc:
        raise InputError(f"{scores_path}: not a readable scores table ({exc})") from None
    cv = table.filter(pc.equal(table.column("role"), "reference_cv")).column("score")
    meta = json.loads((table.schema.metadata or {}).get(b"hdmap_ad", b"{}"))
    return (float(pc.max(cv).as_py()) if len(cv) else None), meta


def _preprocessing(backbone: BackboneConfig, exp: ExperimentConfig,
                   features: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Preprocessing and weights records from the feature caches' provenance, checked
    against the backbone spec."""
    if backbone.key != exp.backbone:
        raise InputError(f"{where}: backbone spec {backbone.key!r} is not the experiment's "
                         f"backbone {exp.backbone!r}")
    missing = [la for la in exp.layers if la not in features]
    if missing:
        raise InputError(f"{where}: model metadata has no feature provenance for {missing}")
    first = features[exp.layers[0]]
    for layer in exp.layers:
        cache = features[layer]
        for key in _CHECKED:
            if cache.get(key) != getattr(backbone, key):
                raise InputError(f"{where}: features of {layer} were made with {key} "
                                 f"{cache.get(key)!r}, the backbone spec says "
                                 f"{getattr(backbone, key)!r}")
        if cache["weights"].get("state_sha256") != first["weights"].get("state_sha256"):
            raise InputError(f"{where}: layers were extracted with different weights")
    pre = {
        "map_shape": first["map_shape"],
        "input_size": backbone.input_size,
        "resize": backbone.resize,
        "mean": first["mean"],
        "std": first["std"],
        "patch_pool": backbone.patch_pool,
        "layers": list(exp.layers),
        "precision": first.get("precision"),
        "extract_batch_size": first.get("batch_size"),
        "channels": {layer: features[layer]["channels"] for layer in exp.layers},
    }
    weights = dict(first["weights"])
    return pre, weights


def _reference_maps(manifest_path: str, ref_ids: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``references.npz``: ``image_id`` and the maps, stacked as ``maps`` when
    they share one shape, else one array each (``reference_key``: a folder of mixed image
    sizes keeps each map as the study read it)."""
    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.data.maps import read_map

    manifest = read_manifest(manifest_path).set_index("image_id")
    missing = [i for i in ref_ids if i not in manifest.index]
    if missing:
        raise InputError(f"{manifest_path}: reference(s) {missing[:5]} not in the manifest")
    maps = [read_map(manifest.loc[i, "path"]) for i in ref_ids]
    ids = np.asarray(ref_ids, dtype=str)
    if len({m.shape for m in maps}) <= 1:
        return {"image_id": ids, "maps": np.stack(maps)}
    return {"image_id": ids, **{reference_key(k): m for k, m in enumerate(maps)}}


def _map_sizes(manifest_path: str) -> list[list[int]]:
    """The distinct ``[height, width]`` of the study's maps (the manifest's), sorted."""
    from hdmap_ad.data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    if "height" not in manifest:
        return []
    return [list(hw) for hw in sorted({(int(h), int(w)) for h, w in
                                        zip(manifest.height, manifest.width, strict=True)})]


#: The pipeline steps whose code an exported model was made with (its ``code_sha256``).
PIPELINE_MODULES = ("hdmap_ad.features.extract", "hdmap_ad.banks.bank",
                    "hdmap_ad.scoring.score", "hdmap_ad.metrics.experiment",
                    "hdmap_ad.deploy.export")


def fingerprint(provenance: dict[str, Any], experiment: dict[str, Any],
                backbone: BackboneConfig) -> dict[str, str]:
    """sha256 of what a model was made from: the data (the manifest's content hash), the
    features' provenance, the params (experiment and backbone spec) and the pipeline's code
    (:data:`PIPELINE_MODULES`). Staleness is judged on the run's outputs
    (``hdmap_ad.deploy.bundle.stale_reason``); these say what changed."""
    from hdmap_ad.provenance import code_sha256, json_sha256

    out = {
        "data_sha256": provenance.get("data_sha256"),
        "features_sha256": json_sha256(provenance.get("features") or {}),
        "params_sha256": json_sha256({"experiment": experiment,
                                      "backbone": backbone.to_dict()}),
        "code_sha256": code_sha256(*PIPELINE_MODULES),
    }
    return {k: v for k, v in out.items() if v is not None}


def _map_folders(manifest_path: str) -> list[str]:
    """The folders holding a manifest's maps (an unreadable manifest: none here; the export
    names it when it reads the reference maps)."""
    from hdmap_ad.data.manifest import read_manifest

    try:
        paths = read_manifest(manifest_path)["path"]
    except (InputError, KeyError):
        return []
    return sorted({str(Path(p).parent) for p in paths})


def model_record(
    backbone: BackboneConfig,
    meta_path: str,
    model_dir: str,
    scores_path: str,
    metrics_path: str,
    name: str | None = None,
) -> dict[str, Any]:
    """``model.json`` of one fitted domain x experiment (see :mod:`hdmap_ad.deploy.bundle`);
    the arguments as in :func:`export_model`.

    Raises:
        InputError: a missing input, or inputs that do not belong together (another
            experiment, other features, a threshold that differs from the metrics').
    """
    from hdmap_ad.deploy.bundle import _experiment
    from hdmap_ad.metrics.image import round_floats
    from hdmap_ad.scoring.score import BATCH_MAPS

    meta = _read_json(meta_path, "model metadata")
    metrics = _read_json(metrics_path, "metrics")
    deploy, scores_meta = deployable_threshold(scores_path)
    if deploy is not None and not math.isfinite(deploy):
        raise InputError(f"{scores_path}: export: the deployable threshold is {deploy} (a "
                         "held-out reference scored NaN or inf); re-run the score step")
    if not isinstance(scores_meta.get("experiment"), dict):
        raise InputError(f"{scores_path}: no experiment in the scores' metadata")
    # the model metadata holds the fit step's view (no score-stage options); the scores the
    # whole experiment, score-stage options included
    exp = _experiment(scores_meta["experiment"])
    if json.loads(json.dumps(exp.fit_dict())) != meta["experiment"]:
        raise InputError(f"{scores_path}: scored with another experiment than {meta_path}")
    if metrics.get("params") != round_floats(scores_meta["experiment"]):
        raise InputError(f"{metrics_path}: metrics of another experiment than {meta_path}")
    reported = metrics["thresholds"]["deployable"]
    if (reported is None) != (deploy is None) or (
            deploy is not None and abs(round(deploy, 6) - reported) > 1e-6):
        raise InputError(f"{metrics_path}: deployable threshold {reported} differs from the "
                         f"scores' {deploy}; re-run the metrics step")
    provenance = meta.get("provenance") or {}
    pre, weights = _preprocessing(backbone, exp, provenance.get("features") or {},
                                  str(meta_path))
    subs = sorted(meta["sub_banks"])
    for sub in subs:
        for path in (Path(model_dir) / f"{sub}.json", state_file(model_dir, sub)):
            if not path.is_file():
                raise InputError(f"{path}: sub-model file not found")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or Path(metrics_path).stem,
        "domain": provenance.get("domain"),
        "method": exp.method.name,
        "experiment": scores_meta["experiment"],
        "backbone": backbone.to_dict(),
        "weights": weights,
        "preprocessing": pre,
        "grid": meta["grid"],
        "dim": meta["dim"],
        "gate": {**meta["gate"], "margin": exp.gate_margin, "seed": exp.seed},
        "thresholds": {
            "deployable": deploy,
            "deployable_note": metrics["thresholds"].get("deployable_note"),
            "rule": VERDICT_RULE,
            "best_on_test": metrics["thresholds"].get("best"),
        },
        "sub_models": {s: meta["sub_banks"][s] for s in subs},
        "references": meta["references"],
        "batching": {
            "extract_batch_size": backbone.batch_size,
            "score_batch_maps": BATCH_MAPS,
            "note": "predictions reproduce the pipeline's scores bit for bit when maps are "
                    "extracted and scored in the same batches with as many threads as the "
                    "run's jobs had (CPU convolution, BLAS and faiss kernels pick their "
                    "blocking by batch size and threads)",
        },
        "metrics": {k: metrics.get(k) for k in ("metrics", "per_condition", "gate", "counts")},
        "provenance": {
            **provenance,
            "fingerprint": fingerprint(provenance, scores_meta["experiment"], backbone),
            "exported_from": {
                "model_meta_sha256": file_sha256(Path(meta_path)),
                "scores_sha256": file_sha256(Path(scores_path)),
                "metrics_sha256": file_sha256(Path(metrics_path)),
                "sub_models_sha256": {p.name: file_sha256(p) for s in subs
                                      for p in (state_file(model_dir, s),
                                                Path(model_dir) / f"{s}.json")},
            },
        },
    }


def export_model(
    backbone: BackboneConfig,
    meta_path: str,
    model_dir: str,
    scores_path: str,
    metrics_path: str,
    out: str,
    manifest_path: str | None = None,
    name: str | None = None,
    force: bool = False,
    inputs: tuple[str, ...] = (),
) -> None:
    """Write the model folder ``out`` for one fitted domain x experiment.

    Args:
        backbone: the experiment's backbone spec (params ``backbones.<key>``).
        meta_path: the fit step's metadata JSON (``work/models/domain_X/<exp>.json``).
        model_dir: the fit step's model folder (one file set per sub-model).
        scores_path: the score step's Parquet (deployable threshold, checks).
        metrics_path: the metrics JSON (the study's figures, threshold check).
        out: the model folder to write (replaced as a whole, atomically).
        manifest_path: the domain manifest; with it the reference maps are exported too.
        name: the model's name (default: the metrics file's stem, ``domainC_gated``).
        force: replace a non-empty ``out`` that hdmap-ad did not make
            (:func:`hdmap_ad.outputs.check_output`).
        inputs: further files read (params.yaml), protected as the pipeline files are.

    Raises:
        InputError: as :func:`model_record`, a sub-model file missing, or ``out`` no place
            to write (an input, holding one, a foreign non-empty folder without ``force``).
    """
    read = [*inputs, meta_path, model_dir, scores_path, metrics_path]
    if manifest_path:
        read += [manifest_path, *_map_folders(manifest_path)]
    check_output(out, "--out", kind=FOLDER, inputs=read, force=force)
    for p in (meta_path, scores_path, metrics_path):
        if not Path(p).is_file():
            raise InputError(f"{p}: not found; run the pipeline for this target first")
    fitted = json.loads(Path(meta_path).read_text()).get("experiment", {})
    if fitted.get("input_map"):
        raise InputError(
            f"{meta_path}: experiment {fitted.get('key')!r} reads the map itself (input_map: "
            f"{fitted['input_map']!r}); predict extracts one backbone, so such models cannot "
            "be exported yet")
    model = model_record(backbone, meta_path, model_dir, scores_path, metrics_path, name)
    if manifest_path:  # predict takes other sizes where the study did (several sizes)
        model["preprocessing"]["map_sizes"] = _map_sizes(manifest_path)
    with replacing_folder(out) as tmp:
        (tmp / SUB_MODELS).mkdir()
        for s in model["sub_models"]:  # the fold sub-models (cv/) stay behind
            for path in (Path(model_dir) / f"{s}.json", state_file(model_dir, s)):
                shutil.copyfile(path, tmp / SUB_MODELS / path.name)
        if manifest_path:
            arrays = _reference_maps(manifest_path,
                                     [r["image_id"] for r in model["references"]])
            with open(tmp / REFERENCES, "wb") as fh:
                np.savez(fh, **arrays)
        write_json(tmp / MODEL_JSON, model)
        load_bundle(tmp)  # the folder must load before it replaces anything


def export_step(backbone_spec: dict[str, Any], meta_path: str, model_dir: str, scores_path: str,
                metrics_path: str, out: str, manifest_path: str | None = None,
                force: bool = False) -> None:
    """The CLI/rule entry: the backbone spec as JSON (with its ``key``)."""
    spec = dict(backbone_spec)
    export_model(BackboneConfig.from_dict(spec.pop("key"), spec), meta_path, model_dir,
                 scores_path, metrics_path, out, manifest_path, force=force)


def export_cli(args: Any, backbone_spec: dict[str, Any] | None = None) -> None:
    """``python -m hdmap_ad export``: from params (``--domain --experiment``, paths as the
    pipeline lays them out) or from explicit files (``--backbone-spec --meta --model --scores
    --metrics --out``, as the Snakemake rule calls it; ``backbone_spec`` parsed by the CLI)."""
    if args.experiment or args.domain:
        from hdmap_ad.config import load_params

        if not (args.experiment and args.domain):
            raise InputError("export: --domain and --experiment go together")
        params = load_params(args.params)
        if args.experiment not in params.experiments:
            raise InputError(f"--experiment: {args.experiment!r} is not an experiment of "
                             f"{args.params} ({sorted(params.experiments)})")
        exp = params.experiments[args.experiment]
        d, e = args.domain, args.experiment
        lay = RunLayout(work=args.work, result_prefix=params.dataset.result_prefix)
        export_model(params.backbones[exp.backbone], lay.model_meta(d, e), lay.model_dir(d, e),
                     lay.scores(d, e), lay.metrics(d, e), args.out or lay.exported_model(d, e),
                     args.manifest or lay.manifest(d),
                     force=getattr(args, "force", False), inputs=(args.params,))
        return
    missing = [f"--{k.replace('_', '-')}" for k in
               ("backbone_spec", "meta", "model", "scores", "metrics", "out")
               if not getattr(args, k)]
    if missing or backbone_spec is None:
        raise InputError(f"export: give --domain and --experiment, or {' '.join(missing)}")
    export_step(backbone_spec, args.meta, args.model, args.scores, args.metrics, args.out,
                args.manifest, force=getattr(args, "force", False))
