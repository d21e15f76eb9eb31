"""Greedy k-center coreset (PatchCore): exact, or on randomly projected features.

Each point is stored as ``[x, |x|^2, 1]`` and each centre as ``[-2c, 1, |c|^2]``, so one
matrix product gives exact squared distances ``|x - c|^2`` (no temporaries).

The textbook loop reads all N points once per selected centre (one matrix-vector product),
so it is memory-bandwidth bound. Here each pass over the data instead computes the distances
to a *block* of candidates at once, one matrix-matrix product: the current farthest point
and the next farthest ones by the current nearest-centre distance, which are where the
following centres almost always come from. The loop then keeps taking the exact argmax of the
nearest-centre distances; while that argmax is in the block its distances are already there,
and only when it is not is the next block computed. The picks are exactly the textbook
greedy's (up to float rounding at near-ties); on patch features a block of 128 candidates
serves about 100 picks, so the data is read about 100x less often.

The projection runs in row chunks, so a 1.5M x 1536 float32 input needs only its own memory
plus the ``N x (dim + 2)`` projected copy and one ``block x N`` distance block
(``BLOCK_BYTES``). With ``device="cuda"`` the textbook loop runs in torch on the GPU
(float32; near-ties may resolve differently from the CPU path).
"""

from __future__ import annotations

import math

import numpy as np

CHUNK_ROWS = 65536
BLOCK_BYTES = 256 * 2**20  # the candidate distance block: at most this many bytes
MAX_BLOCK = 128  # candidates per block (more costs flops for few extra picks)
# Wider descriptors are randomly projected to this many dims for the distances (anomalib
# projects to ~25 ln N, about 300 at 100k patches); narrower ones are selected exactly.
DEFAULT_PROJ_DIM = 256


def random_projection(features: np.ndarray, dim: int | None, seed: int) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, dim)`` with a seeded Gaussian map.

    Identity (a float32 copy only where needed) when ``dim`` is None or ``D <= dim``.

    The scale ``1/sqrt(dim)`` keeps distances comparable (Johnson-Lindenstrauss). Rows are
    projected in chunks of ``CHUNK_ROWS`` so no full-size temporary is made.
    """
    n_feat = features.shape[1]
    if dim is None or n_feat <= dim:
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


def block_size(n: int) -> int:
    """Candidates per distance block for ``n`` points: ``MAX_BLOCK`` within ``BLOCK_BYTES``."""
    return max(1, min(MAX_BLOCK, n, BLOCK_BYTES // (4 * n)))


def _select_numpy(aug: np.ndarray, k: int, start: int, block: int | None = None,
                  counts: dict | None = None, progress: bool = False) -> np.ndarray:
    """Greedy k-center over ``aug`` rows (see the module docstring), ``k`` picks from ``start``.

    ``block``: candidates per distance block (default ``block_size(n)``); ``counts`` (if
    given) receives ``passes``, the number of blocks computed. ``progress``: a bar on stderr
    (points selected, points/s, ETA, passes over the data so far), refreshed every 2 s.
    """
    from tqdm import tqdm

    bar = tqdm(total=k, unit="pt", desc="coreset", disable=not progress, mininterval=2.0,
               smoothing=0.1)
    n, d2 = aug.shape
    d = d2 - 2
    m = block_size(n) if block is None else max(1, min(int(block), n))
    selected = np.empty(k, dtype=np.int64)
    min_d = np.full(n, np.inf, dtype=np.float32)
    buf = np.empty((m, n), dtype=np.float32)
    rows_of: dict[int, int] = {}
    passes = 0
    cur = int(start)
    for i in range(k):
        selected[i] = cur
        if i == k - 1:
            break
        row = rows_of.get(cur)
        if row is None:
            # The block: the current pick first, then the next farthest points.
            if i == 0 or m == 1:
                cands = np.array([cur], dtype=np.int64)
            else:
                top = np.argpartition(min_d, n - m)[n - m:]
                cands = np.concatenate(([cur], top[top != cur][: m - 1]))
            centres = np.empty((len(cands), d2), dtype=np.float32)
            np.multiply(aug[cands, :d], -2.0, out=centres[:, :d])
            centres[:, d] = 1.0
            centres[:, d + 1] = aug[cands, d]
            np.matmul(centres, aug.T, out=buf[: len(cands)])
            rows_of = {int(c): j for j, c in enumerate(cands)}
            row = 0
            passes += 1
            bar.set_postfix(passes=passes, refresh=False)
        np.minimum(min_d, buf[row], out=min_d)
        cur = int(np.argmax(min_d))
        bar.update(1)
    bar.update(k - bar.n)
    bar.close()
    if counts is not None:
        counts["passes"] = passes
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
    proj_dim: int | None = DEFAULT_PROJ_DIM,
    device: str = "cpu",
    k: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Indices of a greedy k-center coreset.

    Starts at one seeded random point, then repeatedly adds the point farthest (squared L2,
    in the projected space) from everything selected so far.

    Args:
        features: ``(N, D)`` float32 patch features.
        ratio: fraction of points to keep, in (0, 1]; 1.0 keeps all (no selection run).
        seed: seeds the start point and the projection.
        proj_dim: features with more dimensions are randomly projected to this many for the
            distance computations (cheaper, approximate); ``None`` or ``D <= proj_dim``: exact
            distances in the feature space.
        device: ``cpu``, or ``cuda`` to run the selection loop on the GPU when one is present.
        k: select exactly this many points instead of ``coreset_size(N, ratio)``.
        progress: show the selection's progress on stderr (CPU loop).

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
    return _select_numpy(aug, k, start, progress=progress)


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
