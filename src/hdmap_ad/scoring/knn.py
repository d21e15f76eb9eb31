"""Nearest-neighbour search and PatchCore's image score.

Distances are Euclidean (faiss ``IndexFlatL2`` returns squared distances; we take the root,
as anomalib does).
"""

from __future__ import annotations

import faiss
import numpy as np


class BankIndex:
    """Exact L2 index over one (sub-)bank ``(M, D)`` float32."""

    def __init__(self, bank: np.ndarray) -> None:
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.bank.shape[1])
        self.index.add(self.bank)

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
