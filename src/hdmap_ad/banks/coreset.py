"""Greedy k-center coreset (PatchCore) on randomly projected features.

The selection loop is memory-bound: every step reads all N projected points once. Each point
is stored as ``[x, |x|^2, 1]`` and each new centre as ``[-2c, 1, |c|^2]``, so one
matrix-vector product gives the exact squared distances ``|x - c|^2`` of all points to the
centre (no temporaries), followed by an in-place minimum and an argmax: three passes over
the data per selected point. The projection runs in row chunks, so a 1.5M x 1536 float32
input needs only its own memory plus the ``N x (dim + 2)`` projected copy. With
``device="cuda"`` the same loop runs in torch on the GPU (float32; near-ties may resolve
differently from the CPU path).
"""

from __future__ import annotations

import math

import numpy as np

CHUNK_ROWS = 65536


def random_projection(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, dim)`` with a seeded Gaussian map (identity if D<=dim).

    The scale ``1/sqrt(dim)`` keeps distances comparable (Johnson-Lindenstrauss). Rows are
    projected in chunks of ``CHUNK_ROWS`` so no full-size temporary is made.
    """
    n_feat = features.shape[1]
    if n_feat <= dim:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((n_feat, dim)).astype(np.float32) / np.float32(math.sqrt(dim))
    out = np.empty((features.shape[0], dim), dtype=np.float32)
    for start in range(0, features.shape[0], CHUNK_ROWS):
        chunk = features[start : start + CHUNK_ROWS].astype(np.float32, copy=False)
        np.matmul(chunk, proj, out=out[start : start + CHUNK_ROWS])
    return out


def _augmented(x: np.ndarray) -> np.ndarray:
    """``(N, d)`` -> ``(N, d + 2)`` rows ``[x, |x|^2, 1]`` (see the module docstring)."""
    n, d = x.shape
    aug = np.empty((n, d + 2), dtype=np.float32)
    aug[:, :d] = x
    aug[:, d] = np.einsum("nd,nd->n", x, x)
    aug[:, d + 1] = 1.0
    return aug


def _select_numpy(aug: np.ndarray, k: int, start: int) -> np.ndarray:
    n, d2 = aug.shape
    d = d2 - 2
    selected = np.empty(k, dtype=np.int64)
    selected[0] = start
    min_d = np.full(n, np.inf, dtype=np.float32)
    dist = np.empty(n, dtype=np.float32)
    centre = np.empty(d2, dtype=np.float32)
    for i in range(1, k + 1):
        row = aug[selected[i - 1]]
        np.multiply(row[:d], -2.0, out=centre[:d])
        centre[d] = 1.0
        centre[d + 1] = row[d]
        np.dot(aug, centre, out=dist)
        np.minimum(min_d, dist, out=min_d)
        if i == k:
            break
        selected[i] = int(np.argmax(min_d))
    return selected


def _select_torch(aug: np.ndarray, k: int, start: int, device: str) -> np.ndarray:
    import torch

    x = torch.from_numpy(aug).to(device)
    n, d2 = x.shape
    d = d2 - 2
    selected = torch.empty(k, dtype=torch.int64, device=device)
    selected[0] = start
    min_d = torch.full((n,), float("inf"), device=device)
    centre = torch.empty(d2, device=device)
    for i in range(1, k + 1):
        row = x[selected[i - 1]]
        torch.mul(row[:d], -2.0, out=centre[:d])
        centre[d] = 1.0
        centre[d + 1] = row[d]
        torch.minimum(min_d, x @ centre, out=min_d)
        if i == k:
            break
        selected[i] = torch.argmax(min_d)
    return selected.cpu().numpy()


def coreset_size(n: int, ratio: float) -> int:
    """Points kept from ``n`` at ``ratio``: ``max(1, ceil(ratio * n))`` (all when ratio >= 1)."""
    return n if ratio >= 1.0 else max(1, math.ceil(ratio * n))


def greedy_coreset(
    features: np.ndarray,
    ratio: float,
    seed: int = 0,
    proj_dim: int = 128,
    device: str = "cpu",
    k: int | None = None,
) -> np.ndarray:
    """Indices of a greedy k-center coreset.

    Starts at one seeded random point, then repeatedly adds the point farthest (squared L2,
    in the projected space) from everything selected so far.

    Args:
        features: ``(N, D)`` float32 patch features.
        ratio: fraction of points to keep, in (0, 1]; 1.0 keeps all (no selection run).
        seed: seeds the start point and the projection.
        proj_dim: dimension of the random projection used for the distance computations.
        device: ``cpu``, or ``cuda`` to run the selection loop on the GPU when one is present.
        k: select exactly this many points instead of ``coreset_size(N, ratio)``.

    Returns:
        ``(k,)`` int64 indices in selection order.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("greedy_coreset: no features")
    if k is None:
        if ratio >= 1.0:
            return np.arange(n, dtype=np.int64)
        k = coreset_size(n, ratio)
    k = min(int(k), n)
    aug = _augmented(random_projection(features, proj_dim, seed))
    start = int(np.random.default_rng(seed).integers(n))
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return _select_torch(aug, k, start, device)
    return _select_numpy(aug, k, start)


def coverage_radius(features: np.ndarray, selected: np.ndarray) -> float:
    """Largest distance from any point to its nearest selected point (original space).

    The quantity greedy k-center minimises (within a factor 2); exact faiss search, so it
    costs ``N x k x D`` flops.
    """
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x[np.asarray(selected)]))
    worst = 0.0
    for start in range(0, len(x), CHUNK_ROWS):
        d2, _ = index.search(x[start : start + CHUNK_ROWS], 1)
        worst = max(worst, float(d2.max()))
    return math.sqrt(max(worst, 0.0))
