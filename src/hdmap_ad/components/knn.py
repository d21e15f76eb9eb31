"""Nearest-neighbour search and PatchCore's image score.

Distances are Euclidean (faiss returns squared distances; we take the root, as anomalib
does). The index is exact ``IndexFlatL2`` by default; ``SearchConfig`` selects an approximate
IVF or HNSW index for very large banks (``benchmarks/search_recall.py`` measures their
recall@1 against exact search). Approximate indexes are built single-threaded so the same
bank gives the same index, and the same scores, on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hdmap_ad.options import build_options

if TYPE_CHECKING:  # faiss is imported where an index is built: parsing params needs no faiss
    import faiss

INDEXES = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class SearchConfig:
    """Which faiss index a bank is searched with (an experiment's ``search`` entry).

    ``flat``: exact. ``ivf``: ``IndexIVFFlat`` with ``nlist`` k-means cells (capped at
    bank size / 39, faiss's minimum training ratio), searching ``nprobe`` of them. ``hnsw``:
    ``IndexHNSWFlat`` with ``hnsw_m`` links per node and ``ef_search`` candidates per query.
    """

    index: str = field(default="flat", metadata={
        "enum": INDEXES, "doc": "faiss index: flat (exact) | ivf | hnsw (approximate)"})
    nlist: int = field(default=1024, metadata={
        "min": 1, "max": 1 << 20, "doc": "ivf: k-means cells"})
    nprobe: int = field(default=16, metadata={
        "min": 1, "max": 1 << 20, "doc": "ivf: cells searched"})
    hnsw_m: int = field(default=32, metadata={"min": 1, "max": 256, "doc": "hnsw: links per node"})
    ef_search: int = field(default=128, metadata={
        "min": 1, "max": 1 << 16, "doc": "hnsw: candidates per query"})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "search") -> SearchConfig:
        return build_options(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(bank: np.ndarray, search: SearchConfig, device: str = "cpu") -> faiss.Index:
    """A faiss index over ``bank`` ``(M, D)`` float32 (contiguous), items added in order.

    ``device`` ``cuda``/``auto`` puts an exact index on the GPU when faiss was built with GPU
    support and sees one (faiss-cpu never does; then the CPU index is used).
    """
    import faiss

    d = bank.shape[1]
    if search.index == "flat":
        index = faiss.IndexFlatL2(d)
        index.add(bank)
        if device in ("cuda", "auto") and _gpu_available():
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        return index
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # deterministic training and graph construction
    try:
        if search.index == "ivf":
            nlist = max(1, min(search.nlist, len(bank) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            index.cp.seed = 1234
            index.train(bank)
            index.add(bank)
            index.nprobe = min(search.nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, search.hnsw_m)
            index.add(bank)
            index.hnsw.efSearch = search.ef_search
    finally:
        faiss.omp_set_num_threads(threads)
    return index


class BankIndex:
    """L2 index over one (sub-)bank ``(M, D)`` float32; exact unless ``search`` says otherwise."""

    def __init__(self, bank: np.ndarray, search: SearchConfig | None = None,
                 device: str = "cpu") -> None:
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.index = build_index(self.bank, search or SearchConfig(), device)

    def __len__(self) -> int:
        return self.bank.shape[0]

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances ``(Q, k)`` and bank ids ``(Q, k)`` of the k nearest items."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        d2, ids = self.index.search(q, k)
        return np.sqrt(np.maximum(d2, 0.0)), ids


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def image_scores(
    queries: np.ndarray, index: BankIndex, num_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """PatchCore scores for a batch of maps.

    Patch score = distance to the nearest bank item. Image score = the worst patch's score
    s*, reweighted as anomalib does when ``num_neighbors > 1``: with m* the bank item nearest
    to the worst patch q*, and S the ``num_neighbors`` bank items nearest to m* (m* first),
    score = s* x (1 - softmax(||q* - S||))[0].

    Args:
        queries: ``(B, P, D)`` patch descriptors of B maps with P patches each.
        index: the bank to search.
        num_neighbors: 1 disables the reweighting.

    Returns:
        ``(image_scores (B,), patch_scores (B, P))`` float32.
    """
    b, p, d = queries.shape
    dist, nn = index.search(queries.reshape(-1, d), 1)
    patch = dist[:, 0].reshape(b, p)
    nn = nn[:, 0].reshape(b, p)
    worst = patch.argmax(axis=1)
    s_star = patch[np.arange(b), worst]
    if num_neighbors == 1:
        return s_star.astype(np.float32), patch.astype(np.float32)
    k = min(num_neighbors, len(index))
    m_star = nn[np.arange(b), worst]
    _, support = index.search(index.bank[m_star], k)  # (B, k); m* itself comes first
    q_star = queries[np.arange(b), worst]  # (B, D)
    sup_d = np.linalg.norm(index.bank[support] - q_star[:, None, :], axis=-1)  # (B, k)
    weight = 1.0 - softmax(sup_d.astype(np.float64), axis=1)[:, 0]
    return (weight * s_star).astype(np.float32), patch.astype(np.float32)
