"""The contract every anomaly-detection method implements, and how its state is stored.

A *method* models normal data from reference descriptors and scores query descriptors. The
gate (``hdmap_ad.banks``) wraps any method: a ``mixed`` experiment fits one sub-model, a gated
one a sub-model per condition, each on its own references. Nothing outside ``methods/``
branches on a method's name.

Shapes: descriptors are ``(N, H, W, D)`` float32 (``N`` maps on an ``H x W`` patch grid, as
built by ``hdmap_ad.features.descriptors.DescriptorSource``).

Contract:
    ``Method.fit(desc, options, ctx) -> FittedModel``: fit on the references of one sub-model.
    ``FittedModel.score(desc) -> (image (B,), patch (B, H, W))``: float32, higher = more
    anomalous; depends only on the fitted state and the queried map (so batches can be
    scored apart and in any order).
    ``FittedModel.state() -> (arrays, description)``: everything needed to score again;
    ``Method.from_state(arrays, description, options, ctx)`` rebuilds the model.

Storage (:func:`save_model` / :func:`load_model`): one file set per sub-model in the model
folder: ``<sub>.npz`` (numpy arrays, no pickle) or, for trained methods whose state is a torch
state dict, ``<sub>.pt`` (``torch.save``, read back with ``weights_only=True``), and
``<sub>.json`` (method, fit-stage options, description), each written atomically.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.io import atomic_path, write_json
from hdmap_ad.options import fit_stage


@dataclass(frozen=True)
class FitContext:
    """What a fit may depend on besides the descriptors.

    ``seed``: the experiment seed (coreset start, channel subsets, initialisation).
    ``device``: ``cpu`` or ``cuda`` (already resolved). ``where``: params key for errors.
    ``ref_ids``: ``image_id`` of each reference map, aligned with the descriptors.
    ``progress``: show progress of a long fit on stderr (the fit step's own model; never the
    reference folds).
    ``layout``: what the descriptor channels are (``DescriptorSource.layout``: the teacher
    backbone, its layers and grid, the folded input map); fits only (a method that needs it
    at reload stores what it used in its state's description).
    """

    seed: int = 0
    device: str = "cpu"
    where: str = "method"
    ref_ids: tuple[str, ...] = ()
    progress: bool = False  # long fits show progress on stderr (the step's log)
    layout: dict[str, Any] | None = None


class FittedModel(ABC):
    """One fitted sub-model (a bank, a Gaussian, a PCA ...)."""

    @abstractmethod
    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score ``(B, H, W, D)`` query descriptors.

        Returns:
            ``(image_scores (B,), patch_scores (B, H, W))`` float32.
        """

    @abstractmethod
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, description)``: arrays to store and a JSON-ready description (sizes,
        fit details) from which, with the arrays, ``from_state`` rebuilds this model."""

    def counts(self) -> dict[str, int]:
        """Sizes worth reporting beside the references' patch count (metrics ``counts``)."""
        return {}


class Method(ABC):
    """A method: its name, options type, capabilities and how to fit / reload it.

    Class attributes:
        name: the registry name (``method.name`` in params).
        Options: frozen dataclass of its options (see :mod:`hdmap_ad.options`).
        per_position: statistics per patch position: every map must share one patch grid
            with the same content at each position (refused under mixed sizes with
            ``resize: aspect-pad``).
        localizes: patch scores locate anomalies (False: the image score is broadcast to
            every patch, and pixel metrics are not reported).
        summary: one line for the README's method table.
        reads_map: the method's network reads the map itself besides the cached features
            (STFPM's student): its experiments need ``input_map`` (a ``raw`` backbone whose
            cache is folded onto the descriptor grid), and fits get ``FitContext.layout``.
        smoke_options: options for a seconds-long fit in tests and smoke runs (a few epochs
            of a small network: the defaults train at the benchmark's full settings); never
            a default. Empty for a method whose defaults already fit in seconds; every
            trained method gives some (checked in ``tests/test_methods_contract.py``).
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    per_position: ClassVar[bool] = False
    localizes: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    reads_map: ClassVar[bool] = False
    smoke_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    @abstractmethod
    def fit(self, desc: np.ndarray, options: Any, ctx: FitContext) -> FittedModel:
        """Fit on ``(N, H, W, D)`` reference descriptors of one sub-model."""

    @abstractmethod
    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: Any, ctx: FitContext) -> FittedModel:
        """Rebuild a fitted model from what :meth:`FittedModel.state` returned."""

    def min_references(self, options: Any) -> int:
        """Fewest reference maps a sub-model can be fit on."""
        return 1

    def score_counts(self, options: Any, references: int) -> dict[str, int]:
        """What the score-stage ``options`` amount to for a sub-model fit on ``references``
        maps, reported beside its counts (metrics ``counts.bank``): e.g. a k clamped to the
        references. Built with the metrics, as the fit step never sees score-stage options."""
        return {}

    def needs_layer_channels(self, options: Any) -> str | None:
        """Why these options need each layer's own channels in the descriptors (no
        projection, context or input map; checked when params are read), or None."""
        return None


def check_descriptors(desc: np.ndarray, where: str) -> np.ndarray:
    """``desc`` as a C-contiguous float32 ``(N, H, W, D)`` array with N >= 1 and finite values."""
    desc = np.asarray(desc)
    if desc.ndim != 4 or desc.shape[0] < 1:
        raise InputError(f"{where}: expected (N, H, W, D) descriptors with N >= 1, "
                         f"got shape {desc.shape}")
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    # a few maps at a time: a whole-array check would allocate a bool copy of the input
    step = max(1, 2**24 // max(1, desc[0].size))
    for start in range(0, len(desc), step):
        if not np.isfinite(desc[start : start + step]).all():
            raise InputError(f"{where}: descriptors contain NaN or inf")
    return desc


def non_finite_arrays(arrays: dict[str, Any]) -> list[str]:
    """Names of the arrays (numpy) or tensors (torch) of a state holding NaN or inf."""
    bad = []
    for name, value in sorted(arrays.items()):
        if hasattr(value, "isfinite"):  # a torch tensor (integer tensors are always finite)
            ok = bool(value.isfinite().all())
        else:
            arr = np.asarray(value)
            ok = not np.issubdtype(arr.dtype, np.inexact) or bool(np.isfinite(arr).all())
        if not ok:
            bad.append(name)
    return bad


def check_finite_state(model: FittedModel, where: str) -> None:
    """Refuse a fitted model whose state holds NaN or inf (it would score NaN or inf, and a
    NaN score never wins a ``<`` comparison: it would surface as inf)."""
    bad = non_finite_arrays(model.state()[0])
    if bad:
        raise InputError(f"{where}: fitted state holds NaN or inf (arrays {bad[:3]})")


#: File extensions of a sub-model's state: numpy arrays or a torch checkpoint.
STATE_FORMATS = ("npz", "pt")


def _is_torch(arrays: dict[str, Any]) -> bool:
    return any(type(v).__module__.startswith("torch") for v in arrays.values())


def state_file(folder: str | Path, sub: str) -> Path:
    """The state file of sub-model ``sub`` in ``folder`` (``.npz`` or ``.pt``; ``.npz`` when
    neither exists)."""
    folder = Path(folder)
    for ext in STATE_FORMATS:
        if (folder / f"{sub}.{ext}").is_file():
            return folder / f"{sub}.{ext}"
    return folder / f"{sub}.npz"


def save_model(folder: str | Path, sub: str, method: Method, options: Any,
               model: FittedModel) -> None:
    """Write one sub-model as ``<folder>/<sub>.npz`` (or ``.pt`` for a torch state dict) +
    ``<sub>.json`` (each atomically)."""
    folder = Path(folder)
    arrays, description = model.state()
    fmt = "pt" if _is_torch(arrays) else "npz"
    with atomic_path(folder / f"{sub}.{fmt}") as tmp:
        with open(tmp, "wb") as fh:
            if fmt == "pt":
                import torch

                torch.save(dict(sorted(arrays.items())), fh)
            else:
                np.savez(fh, **arrays)
    write_json(folder / f"{sub}.json", {
        "method": method.name, "options": fit_stage(options), "arrays": sorted(arrays),
        "format": fmt, "description": description,
    })


def _read_state(path: Path, fmt: str) -> dict[str, Any]:
    """The arrays (``npz``) or tensors (``pt``, ``weights_only=True``) of a state file."""
    if fmt == "pt":
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise ValueError(f"holds a {type(obj).__name__}, not a state dict")
        return dict(obj)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_model(folder: str | Path, sub: str, method: Method, options: Any,
               ctx: FitContext) -> FittedModel:
    """Read a sub-model written by :func:`save_model`; a missing, corrupt or mismatched file
    is an ``InputError`` naming it."""
    folder = Path(folder)
    meta_path = folder / f"{sub}.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{meta_path}: sub-model description not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: cannot read sub-model description ({exc})") from None
    if meta.get("method") != method.name:
        raise InputError(f"{meta_path}: written by method {meta.get('method')!r}, "
                         f"not {method.name!r}")
    if meta.get("options") != fit_stage(options):
        raise InputError(f"{meta_path}: fitted with options {meta.get('options')}, "
                         f"not {fit_stage(options)}")
    fmt = meta.get("format", "npz")
    if fmt not in STATE_FORMATS:
        raise InputError(f"{meta_path}: unknown state format {fmt!r}")
    npz_path = folder / f"{sub}.{fmt}"
    try:
        arrays = _read_state(npz_path, fmt)
    except FileNotFoundError:
        raise InputError(f"{npz_path}: sub-model state not found") from None
    except Exception as exc:  # zipfile / numpy / torch unpickling errors
        raise InputError(f"{npz_path}: cannot read sub-model state "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                         ) from None
    if sorted(arrays) != meta.get("arrays"):
        raise InputError(f"{npz_path}: holds arrays {sorted(arrays)}, "
                         f"expected {meta.get('arrays')}")
    try:
        return method.from_state(arrays, meta["description"], options, ctx)
    except InputError as exc:  # e.g. a checkpoint of another architecture: name the file
        raise InputError(f"{npz_path}: {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{npz_path}: state does not fit {method.name} "
                         f"({type(exc).__name__}: {exc})") from None
