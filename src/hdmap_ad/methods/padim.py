"""PaDiM (Defard et al. 2020): a multivariate Gaussian per patch position.

Fit: a seeded random subset of ``n_features`` channels (``numpy.random.default_rng(seed)``,
drawn without replacement and sorted; anomalib draws its subset with Python's
``random.sample``; the order does not change a Mahalanobis distance), then per patch position
``(h, w)`` the mean and the inverse covariance of the references' descriptors there.

Covariance (``covariance``), each plus ``eps * I``:

- ``eps``: anomalib's estimate, the unbiased sample covariance (``N - 1``) + ``eps * I``. With
  one reference the sample covariance is undefined (anomalib divides by zero and yields NaN);
  here it is taken as 0, so the covariance is ``eps * I``.
- ``ledoit_wolf`` (default): the Ledoit-Wolf shrunk covariance (``sklearn.covariance.
  ledoit_wolf``'s estimator, computed for all positions at once) + ``eps * I``. With few
  references the sample covariance is singular and shrinking it towards ``mu * I`` (``mu``
  = its mean eigenvalue) gives a better conditioned, better ranked estimate. ``eps`` keeps it
  invertible where the estimated shrinkage is 0: always with 2 references (their centred
  descriptors are ``+x`` and ``-x``, for which the Ledoit-Wolf estimate of the shrinkage is
  exactly 0) and with 1 reference (covariance 0, so ``eps * I`` as above).

Covariances are estimated and inverted in float64 and the inverses stored as float32
(``H * W * D'^2 * 4`` bytes, 43 MB for a 33 x 33 grid and ``D' = 100``).

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
        "min": 1, "doc": "channels in the seeded random subset (capped at the descriptor "
                         "width; anomalib's default for wide_resnet50 is 550, resnet18 100)"})
    covariance: str = field(default="ledoit_wolf", metadata={
        "enum": ("ledoit_wolf", "eps"),
        "doc": "per-position covariance: ledoit_wolf shrinkage, or eps = anomalib's sample "
               "covariance; both + eps * I"})
    eps: float = field(default=0.01, metadata={
        "gt": 0.0, "doc": "added to the covariance diagonal (anomalib: 0.01)"})
    image_score: str = field(default="max", metadata={
        "enum": ("max",), "doc": "image score from the patch grid: its largest patch score"})


def channel_subset(dim: int, n_features: int, seed: int) -> np.ndarray:
    """The sorted channel indices PaDiM keeps: all of them when ``n_features >= dim``, else
    ``n_features`` drawn without replacement by ``numpy.random.default_rng(seed)``."""
    if n_features >= dim:
        return np.arange(dim, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(dim, size=n_features, replace=False)).astype(np.int64)


def ledoit_wolf_shrinkage(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ledoit-Wolf estimate for many groups at once (sklearn's ``ledoit_wolf`` estimator).

    Args:
        xc: ``(P, N, D)`` float64 descriptors, centred per group (axis 1 = samples).

    Returns:
        ``(shrunk (P, D, D), shrinkage (P,))``: ``(1 - s) * S + s * mu * I`` where ``S`` is
        the biased (``1 / N``) sample covariance and ``mu = trace(S) / D``.
    """
    p_groups, n, d = xc.shape
    emp = np.matmul(xc.transpose(0, 2, 1), xc) / n
    if d == 1:  # sklearn: no shrinkage of a single feature
        return emp, np.zeros(p_groups)
    row_sq = np.einsum("pni,pni->pn", xc, xc)                # |x_k|^2 per sample
    trace = row_sq.sum(axis=1) / n                           # trace(S)
    mu = trace / d
    beta_ = np.einsum("pn,pn->p", row_sq, row_sq)           # sum_k |x_k|^4
    delta_ = np.einsum("pij,pij->p", emp, emp)               # |S|_F^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d     # |S - mu I|_F^2 / D
    beta = np.minimum(beta, delta)
    safe = np.where(delta > 0, delta, 1.0)
    shrinkage = np.where(beta > 0, beta / safe, 0.0)
    shrunk = (1.0 - shrinkage)[:, None, None] * emp
    diag = np.arange(d)
    shrunk[:, diag, diag] += (shrinkage * mu)[:, None]
    return shrunk, shrinkage


def gaussian_per_position(x: np.ndarray, covariance: str, eps: float
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Mean and inverse covariance at each position.

    Args:
        x: ``(N, P, D)`` float32 descriptors (P positions).
        covariance: ``ledoit_wolf`` or ``eps`` (see the module docstring).

    Returns:
        ``(mean (P, D) float32, inv_covariance (P, D, D) float32, details)``.
    """
    n, p, d = x.shape
    mean = np.zeros((p, d), dtype=np.float64)
    inv = np.empty((p, d, d), dtype=np.float32)
    shrink = []
    chunk = max(1, _FIT_CHUNK_BYTES // (8 * (3 * d * d + n * d)))
    diag = np.arange(d)
    for s in range(0, p, chunk):
        xs = x[:, s : s + chunk].astype(np.float64).transpose(1, 0, 2)   # (P', N, D)
        mu = xs.mean(axis=1)
        mean[s : s + chunk] = mu
        xc = xs - mu[:, None, :]
        if n == 1:
            cov = np.zeros((len(xs), d, d))
        elif covariance == "eps":
            cov = np.matmul(xc.transpose(0, 2, 1), xc) / (n - 1)
        else:
            cov, sh = ledoit_wolf_shrinkage(xc)
            shrink.append(sh)
        cov[:, diag, diag] += eps
        inv[s : s + chunk] = np.linalg.inv(cov)
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
        x = desc.reshape(n, h * w, d)[..., channels]
        mean, inv, details = gaussian_per_position(x, options.covariance, options.eps)
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
