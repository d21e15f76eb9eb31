"""The exported model folder: what it holds and how it is loaded.

Layout (written by :mod:`hdmap_ad.deploy.export`, atomically as a whole)::

    <folder>/model.json            everything but arrays (below)
    <folder>/sub_models/<sub>.npz  one file set per fitted sub-model (``mixed``, or
    <folder>/sub_models/<sub>.json ``cold``/``warm``), as the fit step wrote them
    <folder>/references.npz        the reference maps (``image_id``, ``maps`` (N, H, W)),
                                   for showing the nearest normal reference; optional

``model.json`` keys: ``format``, ``format_version``, ``name``, ``domain``, ``method``,
``experiment`` (the experiment's params: layers, descriptor, references, gate, method and its
options, seed), ``backbone`` (the backbone spec: timm model, weights source, input size, resize,
layers, patch pool, batch size), ``weights`` (file and state sha256 the features were made
with), ``preprocessing`` (map shape, input size, resize, mean, std, patch pool, precision;
``map_sizes``: the study's distinct ``[H, W]``, when exported with the manifest),
``grid`` and ``dim`` of the descriptors, ``gate`` (mode, fitted p90 threshold and how it was
fit, margin, seed), ``thresholds`` (``deployable``: the exact value the metrics report rounded,
with the rule ``anomalous when score >= deployable``), ``sub_models`` (sizes), ``references``
(image id, condition, sub-model, p90), ``batching`` (extraction and scoring batch sizes, which
the predictions reproduce), ``metrics`` (the study's figures) and
``provenance`` (data hash, feature provenance, ``exported_from``: sha256 of the pipeline files
it came from and of every sub-model file, ``fingerprint``: sha256 of the data, params and code
it was made from).

``references.npz`` holds the maps stacked as ``maps`` when they share one shape, else one
array per map (``map_00000`` ...: folders of mixed image sizes keep each map's own size).

It loads with the package installed and the backbone's weights available: no workspace,
``work/``, params.yaml or DVC.

Before a model folder is trusted, :func:`verify_bundle` checks it (predict and the app call it
through :func:`load_bundle`): ``model.json`` against :data:`RECORD_SCHEMA` (required fields and
types, finite numbers, positive batch sizes), every sub-model file against the sha256 recorded
at export (a changed, swapped or missing file is refused, named), and, where the run it came
from is reachable, whether it is *stale* (:func:`stale_reason`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdmap_ad.config import BackboneConfig, ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.gating import GateFit, get_gate
from hdmap_ad.io import read_json
from hdmap_ad.layout import RunLayout
from hdmap_ad.methods import FitContext, FittedModel, load_model
from hdmap_ad.methods.base import STATE_FORMATS, check_finite_state, state_file

log = logging.getLogger(__name__)

FORMAT = "hdmap-ad-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
SUB_MODELS = "sub_models"
REFERENCES = "references.npz"
#: The verdict rule of every threshold in the metrics (``hdmap_ad.metrics.image``).
VERDICT_RULE = "anomalous when score >= threshold"


class StaleModelError(InputError):
    """The model folder was exported from a run whose experiment has re-run since on other
    inputs: its sub-models, thresholds and figures are not the run's any more."""


_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_POSITIVE = {"type": "integer", "minimum": 1}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
#: JSON Schema (draft 7) of ``model.json``: the fields :func:`load_bundle`, predict and the
#: app read, with their types. Other fields are the study's record and are not checked.
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "format_version", "name", "domain", "method", "experiment",
                 "backbone", "weights", "preprocessing", "grid", "dim", "gate", "thresholds",
                 "sub_models", "references", "batching", "provenance"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "domain": {"type": ["string", "null"]},
        "method": {"type": "string"},
        "experiment": {"type": "object", "required": ["key", "method", "layers"],
                       "properties": {"key": {"type": "string"},
                                      "method": {"type": "object", "required": ["name"]},
                                      "layers": {"type": "array", "minItems": 1,
                                                 "items": {"type": "string"}}}},
        "backbone": {"type": "object", "required": ["key"],
                     "properties": {"key": {"type": "string"}}},
        "weights": {"type": "object",
                    "properties": {"state_sha256": {"type": ["string", "null"]}}},
        "preprocessing": {
            "type": "object", "required": ["map_shape", "input_size", "resize", "mean", "std"],
            "properties": {
                "map_shape": {"type": "array", "items": _POSITIVE, "minItems": 2,
                              "maxItems": 3},
                "input_size": {"type": ["integer", "null"], "minimum": 1},
                "resize": {"type": "string"},
                "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3,
                         "maxItems": 3},
                "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                        "minItems": 3, "maxItems": 3},
                "map_sizes": {"type": "array", "items": {
                    "type": "array", "items": _POSITIVE, "minItems": 2, "maxItems": 2}},
            }},
        "grid": {"type": "array", "items": _POSITIVE, "minItems": 2, "maxItems": 2},
        "dim": _POSITIVE,
        "gate": {"type": "object", "required": ["mode", "threshold", "fit"],
                 "properties": {"mode": {"type": "string"}, "threshold": _NUMBER_OR_NULL,
                                "fit": {"type": "string"}}},
        "thresholds": {"type": "object", "required": ["deployable"],
                       "properties": {"deployable": _NUMBER_OR_NULL}},
        # the names are file names in sub_models/: no path separators
        "sub_models": {"type": "object", "minProperties": 1,
                       "propertyNames": {"pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"}},
        "references": {"type": "array", "items": {
            "type": "object", "required": ["image_id", "sub_bank"],
            "properties": {"image_id": {"type": "string"}, "sub_bank": {"type": "string"}}}},
        "batching": {"type": "object", "required": ["extract_batch_size", "score_batch_maps"],
                     "properties": {"extract_batch_size": _POSITIVE,
                                    "score_batch_maps": _POSITIVE}},
        "provenance": {"type": "object", "required": ["exported_from"], "properties": {
            "data_sha256": {"type": ["string", "null"]},
            "exported_from": {
                "type": "object",
                "required": ["model_meta_sha256", "scores_sha256", "metrics_sha256",
                             "sub_models_sha256"],
                "properties": {"model_meta_sha256": _SHA256, "scores_sha256": _SHA256,
                               "metrics_sha256": _SHA256,
                               "sub_models_sha256": {"type": "object",
                                                     "additionalProperties": _SHA256}}},
            "fingerprint": {"type": "object", "additionalProperties": _SHA256},
        }},
    },
}


@dataclass
class ModelBundle:
    """A loaded model folder.

    Attributes:
        folder: where it was loaded from.
        meta: ``model.json`` as a dict.
        experiment: the experiment's config (descriptor, gate, method, seed).
        backbone: the backbone spec (weights, preprocessing, batch size).
        models: sub-model name -> fitted model (sorted names).
        gate: the fitted p90 gate threshold and how it was fit.
        deployable: the deployable threshold (None where the study had none).
        map_shape: ``(H, W)`` or ``(H, W, 3)`` of the maps the model was fit on.
        grid: ``(gh, gw)`` patch grid of the descriptors.
    """

    folder: Path
    meta: dict[str, Any]
    experiment: ExperimentConfig
    backbone: BackboneConfig
    models: dict[str, FittedModel]
    gate: GateFit
    deployable: float | None
    map_shape: tuple[int, ...]
    grid: tuple[int, int]

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    def references(self, sub_model: str | None = None) -> list[dict[str, Any]]:
        """Reference records (image id, condition, sub-model, p90), optionally of one
        sub-model, in the order its fit saw them (a PatchCore ``sources`` row's first column
        indexes this list)."""
        refs = self.meta["references"]
        return [r for r in refs if sub_model is None or r["sub_bank"] == sub_model]

    def reference_maps(self) -> dict[str, np.ndarray]:
        """image id -> reference map, from ``references.npz`` (empty when not exported)."""
        path = self.folder / REFERENCES
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as z:
            ids = [str(i) for i in z["image_id"]]
            if "maps" in z.files:
                return dict(zip(ids, z["maps"], strict=True))
            return {i: z[reference_key(k)] for k, i in enumerate(ids)}


def reference_key(position: int) -> str:
    """The array of one reference map in ``references.npz`` when the maps differ in shape."""
    return f"map_{position:05d}"


def _experiment(data: dict[str, Any]) -> ExperimentConfig:
    data = dict(data)
    return ExperimentConfig.from_dict(data.pop("key"), data)


def _backbone(data: dict[str, Any]) -> BackboneConfig:
    data = dict(data)
    return BackboneConfig.from_dict(data.pop("key"), data)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (here, not ``features.weights``': that module imports timm,
    seconds of start-up for a step that reads a few files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _non_finite(obj: Any, where: str = "") -> str | None:
    """Dotted path of the first NaN or inf in a parsed JSON value (Python's ``json`` reads
    ``NaN`` and ``Infinity``), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "<top level>"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def read_record(folder: str | Path) -> dict[str, Any]:
    """``model.json`` of a model folder, checked against :data:`RECORD_SCHEMA`.

    Raises:
        InputError: no or unreadable ``model.json``, another format or version, a missing
            field or one of the wrong type (named by its dotted path), a NaN or inf, or
            references of a sub-model that the record does not list.
    """
    import jsonschema

    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise InputError(f"{folder}: not a model folder (no {MODEL_JSON}); write one with "
                         "`python -m hdmap_ad export` or `snakemake results/models/<target>`")
    try:
        meta = read_json(path)
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r}; this package reads {FORMAT!r} "
                         f"version {FORMAT_VERSION}")
    errors = sorted(jsonschema.Draft7Validator(RECORD_SCHEMA).iter_errors(meta),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        message = " ".join(err.message.split())
        raise InputError(f"{path}: {where}: "
                         f"{message if len(message) <= 200 else message[:200] + ' ...'}")
    bad = _non_finite(meta)
    if bad:
        raise InputError(f"{path}: {bad}: not a finite number")
    for ref in meta["references"]:
        if ref["sub_bank"] not in meta["sub_models"]:
            raise InputError(f"{path}: references: {ref['image_id']!r} belongs to sub-model "
                             f"{ref['sub_bank']!r}, which sub_models does not list")
    return meta


def check_sub_model_files(folder: str | Path, meta: dict[str, Any]) -> None:
    """Every sub-model file (state and description) of ``meta`` against the sha256 that
    ``model.json`` recorded at export: a file changed, replaced or swapped with another
    sub-model's (cold and warm exchanged) is refused, named."""
    folder = Path(folder)
    recorded = meta["provenance"]["exported_from"]["sub_models_sha256"]
    for name in sorted(meta["sub_models"]):
        states = [f"{name}.{ext}" for ext in STATE_FORMATS if f"{name}.{ext}" in recorded]
        if f"{name}.json" not in recorded or len(states) != 1:
            raise InputError(f"{folder / MODEL_JSON}: provenance.exported_from."
                             f"sub_models_sha256: no sha256 of sub-model {name!r}'s files")
        for file_name in (f"{name}.json", *states):
            path = folder / SUB_MODELS / file_name
            if not path.is_file():
                raise InputError(f"{path}: sub-model file not found")
            got = file_sha256(path)
            if got != recorded[file_name]:
                raise InputError(
                    f"{path}: sha256 {got[:12]}... differs from {recorded[file_name][:12]}... "
                    f"that {MODEL_JSON} records (changed, replaced or swapped after export); "
                    "export the model again")


def default_work(folder: str | Path) -> Path | None:
    """The run's ``work/`` of a model folder at the pipeline's place,
    ``<project>/results/models/<name>`` -> ``<project>/work``; None elsewhere."""
    here = Path(folder).resolve()
    project = RunLayout(str(here.parent.parent.parent))
    if str(here.parent) == project.exported_models_dir():
        return Path(project.work_dir)
    return None


def run_files(meta: dict[str, Any], work: Path) -> dict[str, Path]:
    """The run's current outputs of the model's domain x experiment, keyed as
    ``provenance.exported_from`` records their sha256: the fit step's metadata, the scores,
    and the metrics JSON (``<work>/../results/<name>.json``, the pipeline's layout)."""
    d, e = meta["domain"], meta["experiment"]["key"]
    lay = RunLayout(str(work.parent), work=work.name)
    return {
        "model_meta_sha256": Path(lay.model_meta(d, e)),
        "scores_sha256": Path(lay.scores(d, e)),
        "metrics_sha256": Path(lay.result(meta["name"])),
    }


def _read_dict(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _short(digest: Any) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) else repr(digest)


def _what_changed(meta: dict[str, Any], files: dict[str, Path]) -> list[str]:
    """In words, which inputs of the run differ from those the model was exported from."""
    prov, reasons = meta["provenance"], []
    current = _read_dict(files["model_meta_sha256"])
    now = current.get("provenance") or {}
    if now.get("data_sha256") != prov.get("data_sha256"):
        reasons.append(f"other data (data sha256 {_short(now.get('data_sha256'))} now, "
                       f"{_short(prov.get('data_sha256'))} in the model)")
    if now.get("features") != prov.get("features"):
        reasons.append("other features (backbone, weights or preprocessing)")
    try:
        fitted = json.loads(json.dumps(_experiment(meta["experiment"]).fit_dict()))
    except (InputError, KeyError, TypeError, ValueError):
        fitted = None
    scored = None
    if files["scores_sha256"].is_file():
        import pyarrow.parquet as pq

        try:
            raw = (pq.read_schema(files["scores_sha256"]).metadata or {}).get(b"hdmap_ad")
            scored = json.loads(raw or b"{}").get("experiment")
        except Exception:  # an unreadable scores file: the sha256 already differs
            scored = None
    if current.get("experiment") != fitted or (scored is not None
                                               and scored != meta["experiment"]):
        reasons.append("other params")
    return reasons or ["the same data and params with other results (other code?)"]


def stale_reason(folder: str | Path, meta: dict[str, Any],
                 work: str | Path | None = None) -> str | None:
    """Why the model folder ``folder`` is stale, or None.

    Stale: the experiment it was exported from has re-run since, so that the run's current
    outputs of that domain x experiment (the fit step's model metadata, the scores and, where
    present, the metrics JSON) are no longer the files whose sha256 ``model.json`` recorded
    (``provenance.exported_from``). A re-run on the same data, params and code writes the
    same bytes and leaves the model fresh. The reason names what differs: the data (the
    manifest's content hash), the features, the params, else the results alone.

    *Reachable*: ``work`` (``--work``; default :func:`default_work`: the model folder sits at
    ``<project>/results/models/<name>`` and ``<project>/work`` is the run's work folder)
    holds the fit step's metadata of the model's domain x experiment,
    ``work/models/domain_<D>/<experiment>.json``. When it does not (the model was copied
    elsewhere, the work folder is gone or was cleaned, the experiment has not run there), the
    model cannot be judged stale: that is logged (warning) and None is returned.
    """
    folder = Path(folder)
    where = Path(work) if work is not None else default_work(folder)
    if where is None or meta.get("domain") is None:
        log.warning("%s: cannot judge whether the model is stale: it is not in a run's "
                    "results/models/ and no --work folder was given", folder)
        return None
    files = run_files(meta, where)
    if not files["model_meta_sha256"].is_file():
        log.warning("%s: cannot judge whether the model is stale: %s not found (the run's "
                    "work folder is gone, or never ran this experiment)", folder,
                    files["model_meta_sha256"])
        return None
    recorded = meta["provenance"]["exported_from"]
    if files["metrics_sha256"].is_file():
        metrics = _read_dict(files["metrics_sha256"])
        if metrics.get("experiment") != meta["experiment"]["key"]:  # another target's name
            files.pop("metrics_sha256")
    changed = [str(path) for key, path in files.items()
               if path.is_file() and file_sha256(path) != recorded[key]]
    if not changed:
        return None
    d, e = meta["domain"], meta["experiment"]["key"]
    return (f"{folder}: stale: experiment {e!r} of domain {d!r} has re-run on "
            f"{'; '.join(_what_changed(meta, files))} since this model was exported "
            f"({', '.join(changed)} changed); export it again (`python -m hdmap_ad export "
            f"--domain {d} --experiment {e}`) or pass --allow-stale to use it as it is")


def verify_bundle(folder: str | Path, work: str | Path | None = None,
                  allow_stale: bool = False, judge_staleness: bool = True) -> dict[str, Any]:
    """Check a model folder before it is trusted; returns its ``model.json``.

    The one check that predict and the app run (through :func:`load_bundle`):
    :func:`read_record` (schema, types, finite numbers), :func:`check_sub_model_files`
    (sha256 of every sub-model file) and, with ``judge_staleness``, :func:`stale_reason`
    against the run in ``work`` (see there for when that run is reachable).

    Raises:
        InputError: a bad record or sub-model file, named.
        StaleModelError: a stale model, unless ``allow_stale`` (then a logged warning).
    """
    folder = Path(folder)
    meta = read_record(folder)
    check_sub_model_files(folder, meta)
    if judge_staleness:
        reason = stale_reason(folder, meta, work)
        if reason is not None:
            if not allow_stale:
                raise StaleModelError(reason)
            log.warning("%s (used anyway: --allow-stale)", reason.replace(
                " or pass --allow-stale to use it as it is", ""))
    return meta


def load_bundle(folder: str | Path, device: str = "cpu", weights_path: str | None = None,
                work: str | Path | None = None, allow_stale: bool = False,
                judge_staleness: bool = False) -> ModelBundle:
    """Load a model folder written by :func:`hdmap_ad.deploy.export.export_model`, after
    :func:`verify_bundle`.

    Args:
        folder: the model folder.
        device: ``cpu`` or ``cuda`` for the sub-models' search (resolved).
        weights_path: a local checkpoint to use instead of the exported weights source (a
            ``file`` source recorded on another machine); its sha256 is checked at predict.
        work, allow_stale, judge_staleness: as :func:`verify_bundle` (predict and the app
            judge staleness; the export's own check of the folder it writes does not).

    Raises:
        InputError: a missing or unreadable folder or file, an unknown format version, a
            field missing or of the wrong type, a sub-model file that is not the exported
            one, sub-models that do not match the exported method and options, or a
            fitted state holding NaN or inf.
        StaleModelError: see :func:`verify_bundle`.
    """
    folder = Path(folder)
    meta = verify_bundle(folder, work, allow_stale, judge_staleness)
    return bundle_from_record(meta, folder / SUB_MODELS, folder, device, weights_path)


def bundle_from_record(meta: dict[str, Any], sub_models_dir: str | Path, folder: str | Path,
                       device: str = "cpu", weights_path: str | None = None) -> ModelBundle:
    """A :class:`ModelBundle` from a ``model.json`` record and a folder of sub-model files
    (an exported folder's ``sub_models/``, or the fit step's model folder of a run)."""
    where = Path(folder) / MODEL_JSON
    configs = []
    for block, build in (("experiment", _experiment), ("backbone", _backbone)):
        try:
            configs.append(build(meta[block]))
        except InputError as exc:
            raise InputError(f"{where}: {block}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: {block}: {type(exc).__name__}: {exc}") from None
    exp, backbone = configs
    gate = get_gate(exp.gate)
    expected = list(gate.sub_models)
    if sorted(meta["sub_models"]) != expected:
        raise InputError(f"{where}: sub_models: {sorted(meta['sub_models'])}; gate "
                         f"{exp.gate!r} needs {expected}")
    # a gate that routes maps of no known condition (as every new map is) by the threshold
    if gate.needs_threshold and meta["gate"]["threshold"] is None:
        raise InputError(f"{where}: gate.threshold: null; gate {exp.gate!r} routes by it")
    if weights_path is not None:
        from dataclasses import replace

        backbone = replace(backbone, weights=replace(backbone.weights, source="file",
                                                      path=str(weights_path)))
    ctx = FitContext(seed=exp.seed, device=device, where=f"{sub_models_dir}: method")
    models = {name: load_model(sub_models_dir, name, exp.method.method, exp.method.options, ctx)
              for name in sorted(meta["sub_models"])}
    for name, model in models.items():  # a NaN state would score NaN, reported as inf
        check_finite_state(model, f"{state_file(sub_models_dir, name)}: sub-model {name!r}")
    fit = meta["gate"]
    return ModelBundle(
        folder=Path(folder),
        meta=meta,
        experiment=exp,
        backbone=backbone,
        models=models,
        gate=GateFit(fit["threshold"], fit["fit"]),
        deployable=meta["thresholds"]["deployable"],
        map_shape=tuple(meta["preprocessing"]["map_shape"]),
        grid=(int(meta["grid"][0]), int(meta["grid"][1])),
    )
