"""Two image-level baselines on globally average-pooled patch descriptors.

Each map is reduced to one vector, the mean of its ``H x W`` patch descriptors (computed in
float64, map by map, so a map's vector never depends on the batch it came in).

``knn_image``: image score = mean Euclidean distance to the ``k`` nearest reference vectors
(``k`` clamped to the number of references). Default ``k = 1``: with the few references of a
few-shot sub-model (often a handful of maps, sometimes one or two), the nearest reference is
the sharpest evidence of normality, and larger ``k`` averages in dissimilar references.
(SPADE's image-level step, ``hdmap_ad.methods.spade``, is the same score with K = 50.)

``mahalanobis_image`` (Rippel et al. 2020, "Modeling the Distribution of Normal Data in
Pre-Trained Deep Features for Anomaly Detection"): a Gaussian on the reference vectors;
image score = Mahalanobis distance ``sqrt((x - mu)^T S^-1 (x - mu))``. Covariance ``S``:

- ``shrinkage: ledoit_wolf`` (default, as in the paper): Ledoit-Wolf shrinkage
  (``sklearn.covariance.ledoit_wolf``). With one reference the covariance is zero, and with
  two Ledoit-Wolf's shrinkage is 0 (the empirical covariance is rank one); whenever the
  estimate is singular (smallest eigenvalue <= 1e-9 x largest, or all zero) ``eps * I`` is
  added, so one reference gives ``S = eps * I`` (score = distance to that reference /
  sqrt(eps)).
- ``shrinkage: eps``: the empirical (1/N) covariance plus ``eps * I``.

Neither localises: the patch grid returned is the image score broadcast to every patch, so
``localizes = False`` and pixel metrics are not reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors

SINGULAR_RTOL = 1e-9  # eigenvalue ratio below which a covariance counts as singular


def pool_map(desc: np.ndarray) -> np.ndarray:
    """Mean of one map's ``(H, W, D)`` patch descriptors: ``(D,)`` float64."""
    return desc.reshape(-1, desc.shape[-1]).mean(axis=0, dtype=np.float64)


def pool_maps(desc: np.ndarray) -> np.ndarray:
    """``(N, H, W, D)`` -> ``(N, D)`` float64, each map pooled on its own (batch-independent)."""
    n, d = desc.shape[0], desc.shape[-1]
    out = np.empty((n, d), dtype=np.float64)
    for i in range(n):
        out[i] = pool_map(desc[i])
    return out


def distances_to(refs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(N,)`` float64 from one vector ``(D,)`` to ``refs`` ``(N, D)``."""
    diff = refs - query[None, :]
    return np.sqrt((diff * diff).sum(axis=1))


def query_descriptors(desc: np.ndarray, dim: int, where: str) -> np.ndarray:
    """Query descriptors as C-contiguous float32 ``(B, H, W, D)`` with the fitted width."""
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    if desc.ndim != 4 or desc.shape[-1] != dim:
        raise InputError(f"{where}: expected (B, H, W, {dim}) query descriptors, "
                         f"got shape {desc.shape}")
    return desc


def broadcast(image: np.ndarray, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image (B,), patch (B, H, W))`` float32 with the image score on every patch."""
    b, h, w, _ = desc.shape
    image = image.astype(np.float32)
    return image, np.ascontiguousarray(np.broadcast_to(image[:, None, None], (b, h, w)))


# --------------------------------------------------------------------------- knn_image


@dataclass(frozen=True)
class KnnImageOptions:
    k: int = field(default=1, metadata={
        "stage": "score",
        "min": 1, "max": 10_000,
        "doc": "nearest reference maps (pooled features) averaged; clamped to the "
               "number of references"})


class KnnImageModel(FittedModel):
    """Pooled reference vectors ``(N, D)`` float64."""

    def __init__(self, pooled: np.ndarray, options: KnnImageOptions, where: str) -> None:
        self.pooled = np.ascontiguousarray(pooled, dtype=np.float64)
        self.options = options
        self.where = where

    @property
    def k(self) -> int:
        return min(self.options.k, len(self.pooled))

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc = query_descriptors(desc, self.pooled.shape[1], self.where)
        image = np.empty(desc.shape[0], dtype=np.float64)
        for i in range(desc.shape[0]):
            dist = np.sort(distances_to(self.pooled, pool_map(desc[i])))
            image[i] = dist[: self.k].mean()
        return broadcast(image, desc)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"pooled": self.pooled},
                {"references": int(len(self.pooled)), "dim": int(self.pooled.shape[1]),
                 "k_used": self.k})


class KnnImage(Method):
    name = "knn_image"
    Options = KnnImageOptions
    per_position = False
    localizes = False
    summary = ("image-level baseline: mean distance of the pooled map descriptor to its k "
               "nearest reference maps (no localisation)")

    def fit(self, desc: np.ndarray, options: KnnImageOptions, ctx: FitContext) -> KnnImageModel:
        desc = check_descriptors(desc, ctx.where)
        return KnnImageModel(pool_maps(desc), options, ctx.where)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: KnnImageOptions, ctx: FitContext) -> KnnImageModel:
        return KnnImageModel(arrays["pooled"], options, ctx.where)


# ------------------------------------------------------------------- mahalanobis_image


@dataclass(frozen=True)
class MahalanobisImageOptions:
    shrinkage: str = field(default="ledoit_wolf", metadata={
        "enum": ("ledoit_wolf", "eps"),
        "doc": "covariance: ledoit_wolf (Ledoit-Wolf shrinkage) | eps (empirical + eps*I)"})
    eps: float = field(default=0.01, metadata={
        "gt": 0.0, "doc": "added to the covariance diagonal (eps mode, or a singular "
                          "Ledoit-Wolf estimate, e.g. 1-2 references)"})


def fit_gaussian(pooled: np.ndarray, options: MahalanobisImageOptions
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(mean (D,), precision (D, D), details)`` float64 of the reference vectors."""
    n, d = pooled.shape
    mean = pooled.mean(axis=0)
    details: dict[str, Any] = {"references": int(n), "dim": int(d)}
    if options.shrinkage == "ledoit_wolf" and n >= 2:
        from sklearn.covariance import ledoit_wolf

        cov, shrink = ledoit_wolf(pooled)
        details["ledoit_wolf_shrinkage"] = float(shrink)
    else:  # eps mode, or a single reference (sklearn would warn; its covariance is zero)
        centered = pooled - mean
        cov = centered.T @ centered / n
    cov = np.asarray(cov, dtype=np.float64)
    w, v = np.linalg.eigh(cov)
    added = options.shrinkage == "eps" or w[0] <= SINGULAR_RTOL * max(w[-1], 0.0)
    if added:
        w = w + options.eps
    details["eps_added"] = bool(added)
    precision = (v / w) @ v.T
    return mean, (precision + precision.T) / 2, details


class MahalanobisImageModel(FittedModel):
    """Mean ``(D,)`` and precision ``(D, D)`` float64 of the pooled reference vectors."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, where: str,
                 details: dict[str, Any] | None = None) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float64)
        self.precision = np.ascontiguousarray(precision, dtype=np.float64)
        self.where = where
        self.details = dict(details or {})

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc = query_descriptors(desc, self.mean.shape[0], self.where)
        image = np.empty(desc.shape[0], dtype=np.float64)
        for i in range(desc.shape[0]):  # one map at a time: batch-independent
            diff = pool_map(desc[i]) - self.mean
            image[i] = np.sqrt(max(float(diff @ (self.precision @ diff)), 0.0))
        return broadcast(image, desc)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean": self.mean, "precision": self.precision}, self.details


class MahalanobisImage(Method):
    name = "mahalanobis_image"
    Options = MahalanobisImageOptions
    per_position = False
    localizes = False
    summary = ("image-level Gaussian on pooled map descriptors, Ledoit-Wolf covariance, "
               "Mahalanobis distance (Rippel et al. 2020; no localisation)")

    def fit(self, desc: np.ndarray, options: MahalanobisImageOptions,
            ctx: FitContext) -> MahalanobisImageModel:
        desc = check_descriptors(desc, ctx.where)
        mean, precision, details = fit_gaussian(pool_maps(desc), options)
        return MahalanobisImageModel(mean, precision, ctx.where, details)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: MahalanobisImageOptions, ctx: FitContext) -> MahalanobisImageModel:
        return MahalanobisImageModel(arrays["mean"], arrays["precision"], ctx.where,
                                     description)
