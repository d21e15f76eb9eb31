"""DFM, deep feature modelling (Ahuja et al. 2019; anomalib's ``Dfm``): PCA of pooled features.

Features: each map's ``(H, W, D)`` descriptors are average-pooled in ``k x k`` cells (stride
``k``, ``k = pooling_kernel_size``; rows / columns past the last full cell are dropped, as
``torch.nn.functional.avg_pool2d`` does) and the ``(H // k, W // k, D)`` cells flattened into
one vector per map: anomalib's ``DFMModel.get_features`` exactly (default ``k = 4``, anomalib's
too; the flattening order differs, which no PCA quantity depends on). ``pooling_kernel_size:
null`` instead averages the whole grid into one ``D``-vector per map (global average pooling).

Fit: PCA of the reference vectors (float64, from the eigendecomposition of the ``N x N`` Gram
matrix of the centred references when ``N`` is the smaller side) keeping the fewest components
whose cumulative explained variance reaches ``pca_level`` (anomalib's ``PCA`` keeps one fewer:
the index of the first component reaching the level; see the benchmark), at most the rank of
the centred references (``<= N - 1``). DFM needs at least 2 references: one map has no variance
to model (an ``InputError`` naming the params key); with 2 the model is the line through them.

Scores (``score_type``):

- ``fre`` (default, anomalib's default): image score = the feature reconstruction error
  ``|x_c - V V^T x_c|^2`` of the map's vector (``x_c``: centred). Patch map: that error
  split by pooled cell (its sum over the cell's ``D`` channels, anomalib's ``fre`` anomaly
  map), each cell's value given to the ``k x k`` patches it pools (patches past the last full
  cell take the nearest cell's value; anomalib upsamples the cell map bilinearly to the image
  instead). With global pooling the patch map is each patch descriptor's own reconstruction
  error under the same PCA.
- ``nll``: the Gaussian negative log-likelihood (x 2, up to a constant) in PCA space,
  ``sum_j z_j^2 / l_j + sum_j log l_j`` with ``z = V^T x_c`` and ``l_j`` the component
  variances (``1 / N``), anomalib's ``SingleClassGaussian``. anomalib 2.7 centres the reference
  projections twice (``PCA.transform`` subtracts the mean in place from the already centred
  memory bank), which makes its NLL measure ``V^T x`` instead of ``V^T x_c``; ours is the
  intended one. The patch map stays the reconstruction-error map above (an NLL does not split
  by cell), so ``localizes`` holds for both score types.

All scores are float32, deterministic (no randomness; LAPACK's eigendecomposition of the same
input; a component's sign is arbitrary and changes no score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors

#: query maps scored at once
_SCORE_BATCH = 32


@dataclass(frozen=True)
class DFMOptions:
    pca_level: float = field(default=0.97, metadata={
        "gt": 0.0, "max": 1.0, "doc": "fraction of the references' variance the PCA keeps "
                                      "(the fewest components reaching it)"})
    score_type: str = field(default="fre", metadata={
        "stage": "score",
        "enum": ("fre", "nll"), "doc": "image score: fre = feature reconstruction error, "
                                       "nll = Gaussian negative log-likelihood in PCA space"})
    pooling_kernel_size: int | None = field(default=4, metadata={
        "min": 1, "max": 64,
        "doc": "average-pool the patch grid in k x k cells and flatten them into "
               "one vector per map, as anomalib (null: global average pooling)"})


def pooled_features(desc: np.ndarray, k: int | None) -> np.ndarray:
    """``(B, H, W, D)`` -> ``(B, H // k, W // k, D)`` float32 cell means (``k`` None: the
    grid mean, ``(B, 1, 1, D)``)."""
    if k is None:
        return desc.mean(axis=(1, 2), dtype=np.float64, keepdims=True).astype(np.float32)
    b, h, w, d = desc.shape
    hp, wp = h // k, w // k
    rows = desc[:, : hp * k, : wp * k].reshape(b, hp, k, wp * k, d).sum(axis=2)
    return rows.reshape(b, hp, wp, k, d).sum(axis=3) * np.float32(1.0 / (k * k))


def n_components(variances: np.ndarray, level: float, rank: int) -> int:
    """Fewest leading components whose cumulative share of ``variances`` reaches ``level``,
    capped at ``rank``."""
    ratios = np.cumsum(variances) / variances.sum()
    return int(min(np.searchsorted(ratios, level, side="left") + 1, rank))


def pca(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """PCA of ``(N, F)`` float64 rows keeping the fewest components that explain ``level``
    of the variance: ``(mean (F,), components (F, K), variances (K,), rank)``, components by
    decreasing variance (``1 / N``), ``rank`` the numerical rank (``K <= rank``).

    From the eigendecomposition of the smaller Gram matrix (``N x N`` when ``N <= F``, then
    ``V = Xc^T U / sqrt(N * var)``), much cheaper than an SVD of ``Xc`` with few references;
    eigenvalues below ``1e-12`` of the largest count as 0."""
    n, f = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    small = n <= f
    eigval, eigvec = np.linalg.eigh(xc @ xc.T if small else xc.T @ xc)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    rank = int((eigval > eigval[0] * 1e-12).sum()) if eigval[0] > 0 else 0
    if rank == 0:
        return mean, np.zeros((f, 0)), np.zeros(0), 0
    kept = n_components(eigval[:rank], level, rank)
    var = eigval[:kept]
    comps = (xc.T @ eigvec[:, :kept]) / np.sqrt(var) if small else eigvec[:, :kept]
    return mean, comps, var / n, rank


class DFMModel(FittedModel):
    """A PCA of pooled features: ``mean`` ``(F,)`` and ``components`` ``(F, K)`` float32
    (``F = cells * D``), ``variances`` ``(K,)`` float64 (for ``nll``)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, variances: np.ndarray,
                 grid: tuple[int, int], dim: int, options: DFMOptions, where: str = "method",
                 details: dict[str, Any] | None = None) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.variances = np.asarray(variances, dtype=np.float64)
        self.grid = (int(grid[0]), int(grid[1]))
        self.dim = int(dim)
        self.options = options
        self.where = where
        self.details = dict(details or {})
        k = options.pooling_kernel_size
        cells = 1 if k is None else (self.grid[0] // k) * (self.grid[1] // k)
        f = cells * self.dim
        if (self.mean.shape != (f,) or self.components.ndim != 2
                or self.components.shape[0] != f
                or self.variances.shape != (self.components.shape[1],)):
            raise InputError(f"{where}: inconsistent DFM state for a {self.grid} grid of "
                             f"{self.dim} channels: mean {self.mean.shape}, components "
                             f"{self.components.shape}, variances {self.variances.shape}")

    def _residual(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, F)`` -> (projections ``(B, K)``, residuals ``(B, F)``), float32."""
        xc = x - self.mean
        z = xc @ self.components
        return z, xc - z @ self.components.T

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc = np.asarray(desc)
        k = self.options.pooling_kernel_size
        h, w = self.grid
        if desc.ndim != 4 or desc.shape[-1] != self.dim or (
                k is not None and desc.shape[1:3] != (h, w)):
            raise InputError(f"{self.where}: DFM was fit on a {h} x {w} patch grid of "
                             f"{self.dim} channels; got descriptors of shape {desc.shape}")
        b, qh, qw, d = desc.shape
        image = np.empty(b, dtype=np.float32)
        patch = np.empty((b, qh, qw), dtype=np.float32)
        for s in range(0, b, _SCORE_BATCH):
            x = desc[s : s + _SCORE_BATCH].astype(np.float32, copy=False)
            nb = len(x)
            cells = pooled_features(x, k)
            z, resid = self._residual(cells.reshape(nb, -1))
            sq = resid * resid
            if self.options.score_type == "fre":
                image[s : s + nb] = sq.sum(axis=1)
            else:
                z64 = z.astype(np.float64)
                image[s : s + nb] = ((z64 * z64 / self.variances).sum(axis=1)
                                     + np.log(self.variances).sum())
            if k is None:  # each patch's own reconstruction error
                _, pr = self._residual(x.reshape(-1, d))
                patch[s : s + nb] = (pr * pr).sum(axis=1).reshape(nb, qh, qw)
            else:
                hp, wp = cells.shape[1:3]
                cell_err = sq.reshape(nb, hp, wp, d).sum(axis=-1)
                rows = np.minimum(np.arange(qh) // k, hp - 1)
                cols = np.minimum(np.arange(qw) // k, wp - 1)
                patch[s : s + nb] = cell_err[:, rows][:, :, cols]
        return image, patch

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"mean": self.mean, "components": self.components,
                 "variances": self.variances},
                {"grid": list(self.grid), "dim": self.dim,
                 "components": int(self.components.shape[1]), **self.details})


class DFM(Method):
    name = "dfm"
    Options = DFMOptions
    per_position = True
    summary = ("PCA of pooled reference features, feature reconstruction error or Gaussian "
               "NLL (Ahuja et al. 2019)")

    def min_references(self, options: DFMOptions) -> int:
        return 2

    def fit(self, desc: np.ndarray, options: DFMOptions, ctx: FitContext) -> DFMModel:
        desc = check_descriptors(desc, ctx.where)
        n, h, w, d = desc.shape
        k = options.pooling_kernel_size
        if k is not None and (k > h or k > w):
            raise InputError(f"{ctx.where}.pooling_kernel_size: {k} is larger than the "
                             f"{h} x {w} patch grid")
        if n < 2:
            raise InputError(f"{ctx.where}: DFM needs at least 2 reference maps (a PCA of "
                             f"one map has no variance); got {n}")
        x = pooled_features(desc, k).reshape(n, -1).astype(np.float64)
        mean, comps, var, rank = pca(x, options.pca_level)
        if rank == 0:
            raise InputError(f"{ctx.where}: the {n} reference maps have identical pooled "
                             f"features; DFM needs variation among them")
        total = float(((x - mean) ** 2).sum()) / n
        details = {"references": n, "explained_variance": float(var.sum()) / total,
                   "rank": rank}
        return DFMModel(mean, comps, var, (h, w), d, options, ctx.where, details)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: DFMOptions, ctx: FitContext) -> DFMModel:
        details = {k: v for k, v in description.items()
                   if k not in ("grid", "dim", "components")}
        return DFMModel(arrays["mean"], arrays["components"], arrays["variances"],
                        tuple(description["grid"]), description["dim"], options, ctx.where,
                        details)
