"""SPADE (Cohen & Hoshen 2020, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences").

Fit: keep every reference patch descriptor ``(N, H, W, D)`` and each reference map's global
average-pooled vector ``(N, D)`` (no training, no randomness).

Score one query map (maps are scored one at a time, so a score never depends on the batch):

1. Image retrieval: its pooled vector's Euclidean distances to the reference vectors; the
   ``image_k`` nearest reference maps are kept (paper: K = 50; clamped to the number of
   references N, so with N <= K every reference is used, as at few-shot budgets; the metrics
   record the K used, ``counts.bank.<sub-model>.image_k_effective``; ties go to the earlier
   reference).
2. Pyramid correspondence: each query patch is compared with the patches at *every* position
   of those K maps only (the paper's gallery); its score is the mean Euclidean distance to
   its ``patch_k`` nearest gallery patches (paper: kappa = 1, the nearest patch; clamped to
   the gallery size K x H x W). Exact search, a faiss ``IndexFlatL2`` built per query over
   its gallery (on CPU; memory: one gallery, K x H x W x D float32, at a time).
3. Image score, ``image_score``: ``pooled`` (default, the paper's image-level score) = mean
   distance to the K nearest reference vectors of step 1; ``patch_max`` = the largest patch
   score.

Differences from the paper, by construction of this pipeline: one descriptor set serves both
levels (the paper pools the last ResNet block for retrieval and concatenates several blocks
for the correspondence), and the patch grid is returned as is (the paper upsamples it to the
image and smooths it with a Gaussian, sigma = 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors
from hdmap_ad.methods.image_baselines import (
    distances_to,
    pool_map,
    pool_maps,
    query_descriptors,
)

IMAGE_SCORES = ("pooled", "patch_max")


@dataclass(frozen=True)
class SpadeOptions:
    image_k: int = field(default=50, metadata={
        "stage": "score",
        "min": 1, "max": 10_000,
        "doc": "nearest reference maps (pooled features) retrieved per query; "
               "clamped to the number of references (the metrics record the K used per "
               "sub-model: counts.bank, image_k_effective; paper: K = 50)"})
    patch_k: int = field(default=1, metadata={
        "stage": "score",
        "min": 1, "max": 1000,
        "doc": "nearest gallery patches averaged per query patch (paper: kappa = 1)"})
    image_score: str = field(default="pooled", metadata={
        "stage": "score",
        "enum": IMAGE_SCORES,
        "doc": "pooled: mean distance to the image_k nearest maps (paper) | patch_max: "
               "largest patch score"})


def effective_image_k(options: SpadeOptions, references: int) -> int:
    """The K a sub-model of ``references`` maps retrieves: ``image_k``, at most ``references``."""
    return min(options.image_k, references)


class SpadeModel(FittedModel):
    """Reference descriptors ``(N, H, W, D)`` float32 and pooled vectors ``(N, D)`` float64."""

    def __init__(self, desc: np.ndarray, pooled: np.ndarray, options: SpadeOptions,
                 where: str) -> None:
        self.desc = np.ascontiguousarray(desc, dtype=np.float32)
        self.pooled = np.ascontiguousarray(pooled, dtype=np.float64)
        self.options = options
        self.where = where

    @property
    def image_k(self) -> int:
        return effective_image_k(self.options, len(self.desc))

    def _score_map(self, query: np.ndarray) -> tuple[float, np.ndarray]:
        """One map ``(H, W, D)``: ``(image score, patch scores (H * W,) float64)``."""
        import faiss

        d = self.desc.shape[-1]
        dist = distances_to(self.pooled, pool_map(query))
        nearest = np.argsort(dist, kind="stable")[: self.image_k]
        gallery = self.desc[np.sort(nearest)].reshape(-1, d)  # all positions of the K maps
        k = min(self.options.patch_k, len(gallery))
        index = faiss.IndexFlatL2(d)
        index.add(gallery)
        d2, _ = index.search(np.ascontiguousarray(query.reshape(-1, d)), k)
        patch = np.sqrt(np.maximum(d2, 0.0)).astype(np.float64).mean(axis=1)
        image = dist[nearest].mean() if self.options.image_score == "pooled" else patch.max()
        return float(image), patch

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc = query_descriptors(desc, self.desc.shape[-1], self.where)
        b, h, w, _ = desc.shape
        image = np.empty(b, dtype=np.float32)
        patch = np.empty((b, h, w), dtype=np.float32)
        for i in range(b):
            s, p = self._score_map(desc[i])
            image[i] = s
            patch[i] = p.reshape(h, w)
        return image, patch

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n, h, w, d = self.desc.shape
        # (no image_k here: the fit step never sees score-stage options; see score_counts)
        return ({"desc": self.desc, "pooled": self.pooled},
                {"references": int(n), "grid": [int(h), int(w)], "dim": int(d)})


class Spade(Method):
    name = "spade"
    Options = SpadeOptions
    per_position = False
    localizes = True
    summary = ("kNN image retrieval on pooled features, then patch distances to all patches "
               "of the retrieved maps (SPADE, Cohen & Hoshen 2020)")

    def fit(self, desc: np.ndarray, options: SpadeOptions, ctx: FitContext) -> SpadeModel:
        desc = check_descriptors(desc, ctx.where)
        return SpadeModel(desc, pool_maps(desc), options, ctx.where)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: SpadeOptions, ctx: FitContext) -> SpadeModel:
        return SpadeModel(arrays["desc"], arrays["pooled"], options, ctx.where)

    def score_counts(self, options: SpadeOptions, references: int) -> dict[str, int]:
        return {"image_k_effective": effective_image_k(options, references)}
