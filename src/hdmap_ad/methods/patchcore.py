"""PatchCore (Roth et al. 2022): a greedy-coreset memory bank of reference patches.

Fit: every reference patch descriptor, greedy k-center coreset (``coreset_ratio``; seeded by
the experiment seed; descriptors wider than ``coreset_proj_dim`` are randomly projected for
the selection only). Score: distance of each query patch to its nearest bank patch; image
score = the worst patch's distance, reweighted as anomalib does (``num_neighbors``; see
``hdmap_ad.components.knn.image_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.components.coreset import DEFAULT_PROJ_DIM
from hdmap_ad.components.knn import SearchConfig
from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors


@dataclass(frozen=True)
class PatchCoreOptions:
    coreset_ratio: float = field(default=0.1, metadata={
        "gt": 0.0, "max": 1.0, "doc": "fraction of reference patches kept in the bank"})
    coreset_proj_dim: int | None = field(default=DEFAULT_PROJ_DIM, metadata={
        "min": 1, "max": 8192, "doc": "random projection width for the coreset selection when the "
                         "descriptors are wider (null: exact distances)"})
    num_neighbors: int = field(default=9, metadata={
        "stage": "score",
        "min": 1, "max": 1000, "doc": "anomalib's image-score reweighting neighbours (1: none)"})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"stage": "score"})


class PatchCoreModel(FittedModel):
    """A (sub-)bank ``(M, D)`` float32 with its faiss index.

    ``sources`` ``(M, 2)`` int64: (reference position, patch index) of every kept patch.
    """

    def __init__(self, bank: np.ndarray, sources: np.ndarray, options: PatchCoreOptions,
                 device: str = "cpu", patches_seen: int | None = None) -> None:
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.sources = np.asarray(sources, dtype=np.int64)
        self.options = options
        self.device = device
        self.patches_seen = patches_seen
        self._index = None

    @property
    def index(self):
        from hdmap_ad.components.knn import BankIndex

        if self._index is None:
            self._index = BankIndex(self.bank, self.options.search, self.device)
        return self._index

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from hdmap_ad.components.knn import image_scores

        b, h, w, d = desc.shape
        s, ps = image_scores(desc.reshape(b, h * w, d), self.index, self.options.num_neighbors)
        return s, ps.reshape(b, h, w)

    def nearest(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query patch: distance and bank row of the nearest bank patch ``(B, H, W)``."""
        b, h, w, d = desc.shape
        dist, ids = self.index.search(desc.reshape(-1, d), 1)
        return dist[:, 0].reshape(b, h, w), ids[:, 0].reshape(b, h, w)

    def counts(self) -> dict[str, int]:
        return {"kept": int(len(self.bank))}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"bank": self.bank, "sources": self.sources},
                {"kept": int(len(self.bank)), "patches": self.patches_seen,
                 "dim": int(self.bank.shape[1])})


class PatchCore(Method):
    name = "patchcore"
    Options = PatchCoreOptions
    summary = "greedy-coreset memory bank, nearest-neighbour patch distance (Roth et al. 2022)"

    def fit(self, desc: np.ndarray, options: PatchCoreOptions, ctx: FitContext) -> PatchCoreModel:
        from hdmap_ad.components.coreset import greedy_coreset

        desc = check_descriptors(desc, ctx.where)
        n, h, w, d = desc.shape
        patches = desc.reshape(-1, d)
        keep = np.sort(greedy_coreset(patches, options.coreset_ratio, ctx.seed,
                                      proj_dim=options.coreset_proj_dim, device=ctx.device,
                                      progress=ctx.progress))
        sources = np.stack([keep // (h * w), keep % (h * w)], axis=1).astype(np.int64)
        return PatchCoreModel(patches[keep], sources, options, ctx.device, len(patches))

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: PatchCoreOptions, ctx: FitContext) -> PatchCoreModel:
        return PatchCoreModel(arrays["bank"], arrays["sources"], options, ctx.device,
                              description.get("patches"))
