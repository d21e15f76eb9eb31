"""PaDiM (Defard et al. 2020): a multivariate Gaussian per patch position.

Fit: a seeded random subset of ``n_features`` channels (``numpy.random.default_rng(seed)``,
drawn without replacement and sorted; anomalib 2.7 keeps ``torch.randperm(D)[:n_features]``,
unsorted, which no Mahalanobis distance depends on; the subset is capped at ``D`` where
anomalib refuses a larger ``n_features``), then per patch position ``(h, w)`` the mean and the
inverse covariance of the references' descriptors there.

Covariance (``covariance``), each plus ``eps * I``:

- ``eps``: anomalib's estimate, the unbiased sample covariance (``N - 1``) + ``eps * I``
  (anomalib adds ``0.01 * I`` and then ``1e-5 * I``). With one reference the sample covariance
  is undefined (anomalib divides 0 by 0: NaN scores); here it is taken as 0, so the covariance
  is ``eps * I`` and the score a scaled Euclidean distance to that reference.
- ``ledoit_wolf`` (default): the Ledoit-Wolf shrunk covariance (``sklearn.covariance.
  ledoit_wolf``'s estimator, computed for all positions at once) + ``eps * I``. With few
  references the sample covariance is singular; shrinking it towards ``mu * I`` (``mu`` = its
  mean eigenvalue) by the estimated optimal amount gives a well-conditioned estimate without a
  hand-set regulariser. ``eps`` keeps it invertible where the estimated shrinkage is 0: always
  with 2 references (their centred descriptors are ``+x`` and ``-x``, for which the
  Ledoit-Wolf estimate of the shrinkage is exactly 0) and with 1 reference (covariance 0, so
  ``eps * I`` as above).

Covariances are estimated and inverted in float64 (with ``N <= D'`` references by the Woodbury
identity: both estimates are a rank ``<= N`` matrix plus a multiple of ``I``; else through a
Cholesky factorisation per position) and the inverses stored as float32 (``H * W * D'^2 * 4``
bytes, 43 MB for a 33 x 33 grid and ``D' = 100``).

Score: the Mahalanobis distance of each query patch to its position's Gaussian (the distance,
not its square, as anomalib) is the patch score; the image score is the largest patch score
on the patch grid. anomalib instead upsamples the distance map bilinearly to the input image
size, blurs it (Gaussian, sigma 4 pixels) and takes the maximum of that; on the patch grid
there is no image size, so only ``image_score: max`` is offered (the benchmark
``benchmarks/methods_vs_anomalib.py`` measures both).

Scores are computed in float32 with batched BLAS matrix products: bit-identical for the same
batch, equal to float32 rounding (not necessarily bit-identical) when the same map is scored
in a batch of another size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext, FittedModel, Method, check_descriptors

#: float64 bytes of covariance work per fit chunk (positions are processed in chunks).
_FIT_CHUNK_BYTES = 64 * 2**20
#: query maps scored per matrix product.
_SCORE_BATCH = 32


@dataclass(frozen=True)
class PaDiMOptions:
    n_features: int = field(default=100, metadata={
        "min": 1, "max": 8192,
        "doc": "channels in the seeded random subset (capped at the descriptor "
               "width; anomalib's default for wide_resnet50 is 550, resnet18 100)"})
    covariance: str = field(default="ledoit_wolf", metadata={
        "enum": ("ledoit_wolf", "eps"),
        "doc": "per-position covariance: ledoit_wolf shrinkage, or eps = anomalib's sample "
               "covariance; both + eps * I"})
    eps: float = field(default=0.01, metadata={
        "gt": 0.0, "doc": "added to the covariance diagonal (anomalib: 0.01)"})
    image_score: str = field(default="max", metadata={
        "stage": "score",
        "enum": ("max",), "doc": "image score from the patch grid: its largest patch score"})


def _one_blas_thread():
    """BLAS limited to one thread, for the fit's per-position loops of small scipy BLAS /
    LAPACK calls between numpy ones: numpy's and scipy's own OpenBLAS thread pools taking
    turns on a few cores slow them down ten times over."""
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, so that the limit covers it)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def channel_subset(dim: int, n_features: int, seed: int) -> np.ndarray:
    """The sorted channel indices PaDiM keeps: all of them when ``n_features >= dim``, else
    ``n_features`` drawn without replacement by ``numpy.random.default_rng(seed)``."""
    if n_features >= dim:
        return np.arange(dim, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(dim, size=n_features, replace=False)).astype(np.int64)


def ledoit_wolf_shrinkage(xc: np.ndarray, scatter: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Ledoit-Wolf shrinkage for many groups at once (sklearn's ``ledoit_wolf`` estimator).

    The shrunk covariance of a group is ``(1 - s) * S + s * mu * I`` with ``S`` the biased
    (``1 / N``) sample covariance and ``mu = trace(S) / D``. ``|S|_F`` comes from the ``N x N``
    Gram matrices when ``N <= D`` (``|X^T X|_F = |X X^T|_F``), else from ``scatter``.

    Args:
        xc: ``(P, N, D)`` float64 descriptors, centred per group (axis 1 = samples).
        scatter: ``(P, D, D)`` lower triangles of ``Xc^T Xc`` (upper triangles 0), if at hand.

    Returns:
        ``(s (P,), mu (P,))``.
    """
    p_groups, n, d = xc.shape
    row_sq = np.einsum("pni,pni->pn", xc, xc)                # |x_k|^2 per sample
    trace = row_sq.sum(axis=1) / n                           # trace(S)
    mu = trace / d
    if d == 1:  # sklearn: no shrinkage of a single feature
        return np.zeros(p_groups), mu
    if n <= d:
        gram = np.matmul(xc, xc.transpose(0, 2, 1))
        fro2 = np.einsum("pij,pij->p", gram, gram)
    else:
        if scatter is None:
            scatter = _scatter_lower(xc)
        diag = np.einsum("pii->pi", scatter)
        fro2 = 2.0 * np.einsum("pij,pij->p", scatter, scatter) - np.einsum("pi,pi->p", diag,
                                                                           diag)
    delta_ = fro2 / n**2                                     # |S|_F^2
    beta_ = np.einsum("pn,pn->p", row_sq, row_sq)           # sum_k |x_k|^4
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d     # |S - mu I|_F^2 / D
    beta = np.minimum(beta, delta)
    safe = np.where(delta > 0, delta, 1.0)
    return np.where(beta > 0, beta / safe, 0.0), mu


def _scatter_lower(xc: np.ndarray) -> np.ndarray:
    """Lower triangles of ``Xc^T Xc`` per group (``dsyrk``; upper triangles 0)."""
    from scipy.linalg import blas

    out = np.empty((xc.shape[0], xc.shape[2], xc.shape[2]))
    for i, x in enumerate(xc):
        out[i] = blas.dsyrk(1.0, x, trans=1, lower=1)
    return out


def _spd_inverse_lower(a: np.ndarray) -> np.ndarray:
    """Inverses of symmetric positive definite matrices given by their lower triangles:
    Cholesky ``L`` (``dpotrf``), ``W = L^-1`` (``dtrtri``), ``A^-1 = W^T W``."""
    from scipy.linalg import lapack

    w = np.empty_like(a)
    for i, m in enumerate(a):
        factor, info = lapack.dpotrf(m, lower=1, clean=1)
        if info == 0:
            w[i], info = lapack.dtrtri(factor, lower=1)
        if info != 0:  # not numerically positive definite: a general inverse, factored
            full = np.tril(m) + np.tril(m, -1).T
            w[i] = np.linalg.cholesky(np.linalg.inv(full)).T
    return np.matmul(w.transpose(0, 2, 1), w)


def inverse_low_rank_plus_diag(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(B^T B + c I)^-1`` for many groups: ``b`` ``(P, N, D)``, ``c`` ``(P,)`` > 0.

    With ``N <= D`` by the Woodbury identity, ``(I - B^T (B B^T + c I_N)^-1 B) / c`` (an
    ``N x N`` solve per group instead of a ``D x D`` inverse); otherwise through a Cholesky
    factorisation per group. float64 throughout.
    """
    p_groups, n, d = b.shape
    if n <= d:
        k = np.matmul(b, b.transpose(0, 2, 1))
        k[:, np.arange(n), np.arange(n)] += c[:, None]
        inv = -np.matmul(b.transpose(0, 2, 1), np.linalg.solve(k, b))
        inv[:, np.arange(d), np.arange(d)] += 1.0
        return inv / c[:, None, None]
    a = _scatter_lower(b)
    a[:, np.arange(d), np.arange(d)] += c[:, None]
    return _spd_inverse_lower(a)


def gaussian_per_position(x: np.ndarray, channels: np.ndarray, covariance: str, eps: float
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Mean and inverse covariance at each position.

    Both estimates have the form ``alpha * Xc^T Xc + c * I`` (``Xc``: the centred references
    at the position): ``eps``: ``alpha = 1 / (N - 1)`` (0 for one reference), ``c = eps``;
    ``ledoit_wolf``: ``alpha = (1 - s) / N``, ``c = s * mu + eps``.

    Args:
        x: ``(N, P, D_all)`` float32 descriptors (P positions).
        channels: the ``D`` channels modelled (indices into ``D_all``).
        covariance: ``ledoit_wolf`` or ``eps`` (see the module docstring).

    Returns:
        ``(mean (P, D) float32, inv_covariance (P, D, D) float32, details)``.
    """
    n, p, d = x.shape[0], x.shape[1], len(channels)
    mean = np.zeros((p, d), dtype=np.float64)
    inv = np.empty((p, d, d), dtype=np.float32)
    shrink = []
    m = min(n, d)
    chunk = max(1, _FIT_CHUNK_BYTES // (8 * (3 * d * d + 2 * n * d + 2 * m * m)))
    diag = np.arange(d)
    for s in range(0, p, chunk):
        xs = np.ascontiguousarray(x[:, s : s + chunk][..., channels].transpose(1, 0, 2),
                                  dtype=np.float64)                      # (P', N, D)
        mu = xs.mean(axis=1)
        mean[s : s + chunk] = mu
        xc = xs - mu[:, None, :]
        scatter = _scatter_lower(xc) if n > d else None
        if covariance == "eps" or n == 1:
            alpha = np.full(len(xs), 1.0 / (n - 1) if n > 1 else 0.0)
            c = np.full(len(xs), eps)
        else:
            sh, mu_diag = ledoit_wolf_shrinkage(xc, scatter)
            shrink.append(sh)
            alpha, c = (1.0 - sh) / n, sh * mu_diag + eps
        if scatter is None:
            inv[s : s + chunk] = inverse_low_rank_plus_diag(xc * np.sqrt(alpha)[:, None, None],
                                                            c)
        else:
            scatter *= alpha[:, None, None]
            scatter[:, diag, diag] += c[:, None]
            inv[s : s + chunk] = _spd_inverse_lower(scatter)
    details: dict[str, Any] = {}
    if shrink:
        sh = np.concatenate(shrink)
        details = {"shrinkage_mean": float(sh.mean()), "shrinkage_min": float(sh.min()),
                   "shrinkage_max": float(sh.max())}
    return mean.astype(np.float32), inv, details


def mahalanobis(x: np.ndarray, mean: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Per-position Mahalanobis distance.

    Args:
        x: ``(B, P, D)`` float32 queries; ``mean`` ``(P, D)``; ``inv`` ``(P, D, D)`` float32.

    Returns:
        ``(B, P)`` float32 distances (``sqrt`` of the clamped quadratic form).
    """
    delta = np.ascontiguousarray((x - mean[None]).transpose(1, 0, 2))   # (P, B, D)
    q = np.einsum("pbi,pbi->bp", np.matmul(delta, inv), delta)
    return np.sqrt(np.maximum(q, 0.0, out=q), out=q).astype(np.float32, copy=False)


class PaDiMModel(FittedModel):
    """Per-position Gaussians: ``mean`` ``(H, W, D')`` float32, ``inv_covariance``
    ``(H, W, D', D')`` float32, ``channels`` ``(D',)`` int64 (indices into the ``dim``-wide
    descriptors)."""

    def __init__(self, mean: np.ndarray, inv_covariance: np.ndarray, channels: np.ndarray,
                 dim: int, options: PaDiMOptions, where: str = "method",
                 details: dict[str, Any] | None = None) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.inv_covariance = np.ascontiguousarray(inv_covariance, dtype=np.float32)
        self.channels = np.asarray(channels, dtype=np.int64)
        self.dim = int(dim)
        self.options = options
        self.where = where
        self.details = dict(details or {})
        h, w, d = self.mean.shape
        if (self.inv_covariance.shape != (h, w, d, d) or self.channels.shape != (d,)
                or (d and (self.channels.min() < 0 or self.channels.max() >= self.dim))):
            raise InputError(f"{where}: inconsistent PaDiM state: mean {self.mean.shape}, "
                             f"inverse covariance {self.inv_covariance.shape}, "
                             f"channels {self.channels.shape} of {self.dim}")

    def score(self, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc = np.asarray(desc)
        h, w, d = self.mean.shape
        if desc.ndim != 4 or desc.shape[1:] != (h, w, self.dim):
            raise InputError(f"{self.where}: PaDiM was fit on a {h} x {w} patch grid of "
                             f"{self.dim} channels; got descriptors of shape {desc.shape}")
        b = desc.shape[0]
        mean = self.mean.reshape(h * w, d)
        inv = self.inv_covariance.reshape(h * w, d, d)
        patch = np.empty((b, h * w), dtype=np.float32)
        for s in range(0, b, _SCORE_BATCH):
            x = desc[s : s + _SCORE_BATCH].reshape(-1, h * w, self.dim)[..., self.channels]
            patch[s : s + _SCORE_BATCH] = mahalanobis(x.astype(np.float32, copy=False),
                                                      mean, inv)
        image = patch.max(axis=1) if b else np.zeros(0, dtype=np.float32)
        return image.astype(np.float32), patch.reshape(b, h, w)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        h, w, d = self.mean.shape
        return ({"mean": self.mean, "inv_covariance": self.inv_covariance,
                 "channels": self.channels},
                {"grid": [h, w], "dim": self.dim, "n_features": d, **self.details})


class PaDiM(Method):
    name = "padim"
    Options = PaDiMOptions
    per_position = True
    summary = ("per-position Gaussian over a random channel subset, Mahalanobis patch "
               "distance (Defard et al. 2020)")

    def fit(self, desc: np.ndarray, options: PaDiMOptions, ctx: FitContext) -> PaDiMModel:
        desc = check_descriptors(desc, ctx.where)
        n, h, w, d = desc.shape
        channels = channel_subset(d, options.n_features, ctx.seed)
        # more references than channels: per-position scipy loops (see _one_blas_thread)
        with _one_blas_thread() if n > len(channels) else contextlib.nullcontext():
            mean, inv, details = gaussian_per_position(desc.reshape(n, h * w, d), channels,
                                                       options.covariance, options.eps)
        if not np.isfinite(inv).all():
            raise InputError(f"{ctx.where}: PaDiM covariance not invertible in float32; "
                             f"raise {ctx.where}.eps (now {options.eps})")
        details = {"references": n, "covariance": options.covariance, **details}
        return PaDiMModel(mean.reshape(h, w, -1), inv.reshape(h, w, len(channels), -1),
                          channels, d, options, ctx.where, details)

    def from_state(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                   options: PaDiMOptions, ctx: FitContext) -> PaDiMModel:
        details = {k: v for k, v in description.items() if k not in ("grid", "dim",
                                                                      "n_features")}
        return PaDiMModel(arrays["mean"], arrays["inv_covariance"], arrays["channels"],
                          description["dim"], options, ctx.where, details)
