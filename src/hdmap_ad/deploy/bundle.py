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
with), ``preprocessing`` (map shape, input size, resize, mean, std, patch pool, precision),
``grid`` and ``dim`` of the descriptors, ``gate`` (mode, fitted p90 threshold and how it was
fit, margin, seed), ``thresholds`` (``deployable``: the exact value the metrics report rounded,
with the rule ``anomalous when score >= deployable``), ``sub_models`` (sizes), ``references``
(image id, condition, sub-model, p90), ``batching`` (extraction and scoring batch sizes, which
the predictions reproduce), ``metrics`` (the study's figures) and
``provenance`` (data hash, feature provenance, sha256 of the pipeline files it came from).

It loads with the package installed and the backbone's weights available: no workspace,
``work/``, params.yaml or DVC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdmap_ad.banks.bank import GateFit
from hdmap_ad.config import BackboneConfig, ExperimentConfig
from hdmap_ad.errors import InputError
from hdmap_ad.io import read_json
from hdmap_ad.methods import FitContext, FittedModel, load_model

FORMAT = "hdmap-ad-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
SUB_MODELS = "sub_models"
REFERENCES = "references.npz"
#: The verdict rule of every threshold in the metrics (``hdmap_ad.metrics.image``).
VERDICT_RULE = "anomalous when score >= threshold"


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
            return {str(i): m for i, m in zip(z["image_id"], z["maps"], strict=True)}


def _experiment(data: dict[str, Any]) -> ExperimentConfig:
    data = dict(data)
    return ExperimentConfig.from_dict(data.pop("key"), data)


def _backbone(data: dict[str, Any]) -> BackboneConfig:
    data = dict(data)
    return BackboneConfig.from_dict(data.pop("key"), data)


def load_bundle(folder: str | Path, device: str = "cpu",
                weights_path: str | None = None) -> ModelBundle:
    """Load a model folder written by :func:`hdmap_ad.deploy.export.export_model`.

    Args:
        folder: the model folder.
        device: ``cpu`` or ``cuda`` for the sub-models' search (resolved).
        weights_path: a local checkpoint to use instead of the exported weights source (a
            ``file`` source recorded on another machine); its sha256 is checked at predict.

    Raises:
        InputError: a missing or unreadable folder or file, an unknown format version, or
            sub-models that do not match the exported method and options.
    """
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise InputError(f"{folder}: not a model folder (no {MODEL_JSON}); write one with "
                         "`python -m hdmap_ad export` or `snakemake results/models/<target>`")
    try:
        meta = read_json(path)
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r}; this package reads {FORMAT!r} "
                         f"version {FORMAT_VERSION}")
    return bundle_from_record(meta, folder / SUB_MODELS, folder, device, weights_path)


def bundle_from_record(meta: dict[str, Any], sub_models_dir: str | Path, folder: str | Path,
                       device: str = "cpu", weights_path: str | None = None) -> ModelBundle:
    """A :class:`ModelBundle` from a ``model.json`` record and a folder of sub-model files
    (an exported folder's ``sub_models/``, or the fit step's model folder of a run)."""
    exp = _experiment(meta["experiment"])
    backbone = _backbone(meta["backbone"])
    if weights_path is not None:
        from dataclasses import replace

        backbone = replace(backbone, weights=replace(backbone.weights, source="file",
                                                      path=str(weights_path)))
    ctx = FitContext(seed=exp.seed, device=device, where=f"{sub_models_dir}: method")
    models = {name: load_model(sub_models_dir, name, exp.method.method, exp.method.options, ctx)
              for name in sorted(meta["sub_models"])}
    gate = meta["gate"]
    return ModelBundle(
        folder=Path(folder),
        meta=meta,
        experiment=exp,
        backbone=backbone,
        models=models,
        gate=GateFit(gate["threshold"], gate["fit"]),
        deployable=meta["thresholds"]["deployable"],
        map_shape=tuple(meta["preprocessing"]["map_shape"]),
        grid=(int(meta["grid"][0]), int(meta["grid"][1])),
    )
