"""Greedy k-center coreset (PatchCore) on randomly projected features."""

from __future__ import annotations

import math

import numpy as np


def random_projection(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, dim)`` with a seeded Gaussian map (identity if D<=dim).

    The scale ``1/sqrt(dim)`` keeps distances comparable (Johnson-Lindenstrauss).
    """
    n_feat = features.shape[1]
    if n_feat <= dim:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((n_feat, dim)).astype(np.float32) / np.float32(math.sqrt(dim))
    return features.astype(np.float32, copy=False) @ proj


def greedy_coreset(
    features: np.ndarray, ratio: float, seed: int = 0, proj_dim: int = 128
) -> np.ndarray:
    """Indices of a greedy k-center coreset.

    Starts at one seeded random point, then repeatedly adds the point farthest (squared L2,
    in the projected space) from everything selected so far.

    Args:
        features: ``(N, D)`` float32 patch features.
        ratio: fraction of points to keep, in (0, 1]; 1.0 keeps all (no selection run).
        seed: seeds the start point and the projection.
        proj_dim: dimension of the random projection used for the distance computations.

    Returns:
        ``(k,)`` int64 indices in selection order, ``k = max(1, ceil(ratio * N))``.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("greedy_coreset: no features")
    if ratio >= 1.0:
        return np.arange(n, dtype=np.int64)
    k = max(1, math.ceil(ratio * n))
    x = random_projection(features, proj_dim, seed)
    sq = np.einsum("nd,nd->n", x, x)
    rng = np.random.default_rng(seed)
    selected = np.empty(k, dtype=np.int64)
    selected[0] = int(rng.integers(n))
    min_d = np.full(n, np.inf, dtype=np.float32)
    for i in range(1, k + 1):
        c = x[selected[i - 1]]
        d = sq - 2.0 * (x @ c) + sq[selected[i - 1]]
        np.minimum(min_d, d, out=min_d)
        if i == k:
            break
        selected[i] = int(np.argmax(min_d))
    return selected
