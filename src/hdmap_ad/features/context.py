"""Horizontal context descriptors (CPD) for thin horizontal fault bands.

A fault on a health data map is a thin *horizontal* band, so a patch on the band looks like
its left/right neighbours while a patch on a normal map looks like its normal neighbours. The
context descriptor of a patch ``(i, j)`` aggregates the patches of the *same row* ``i`` at
columns ``j - k .. j + k`` **excluding** ``j`` itself, and is appended to the patch descriptor
(``concat``) or appended together with the difference ``f - ctx`` (``residual``).

Every function here is pure, deterministic and per-map: a map's output depends only on that
map (and on ``ContextConfig.seed`` for the ``random`` control), so the transform applied to
the bank (reference) descriptors and to the query descriptors is the same function, and
applying it to a batch equals applying it to each map separately.

Shapes: descriptors are ``(N, H, W, D)`` float32 (``N`` maps on an ``H x W`` patch grid with
``D`` channels, as built by ``hdmap_ad.features.descriptors.combine_layers``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError

AGGREGATIONS = ("mean", "gaussian", "median", "trimmed", "max")
MODES = ("concat", "residual")
CONTROLS = (None, "random", "global")

#: Upper bound (bytes) of the neighbour stack built at once by ``median`` / ``trimmed``.
_STACK_BYTES = 256 * 2**20


def _check_values(
    radius: tuple[int, ...], aggregation: str, mode: str, control: str | None, seed: int, where: str
) -> None:
    """Raise ``InputError`` naming ``where.<key>`` for a bad value."""
    if not isinstance(radius, tuple):
        raise InputError(f"{where}.radius: {radius!r} is not a tuple of ints")
    for k in radius:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"{where}.radius: {k!r} is not an integer >= 1")
    if len(set(radius)) != len(radius):
        raise InputError(f"{where}.radius: {list(radius)} has duplicates")
    if aggregation not in AGGREGATIONS:
        raise InputError(f"{where}.aggregation: {aggregation!r} is not one of {AGGREGATIONS}")
    if mode not in MODES:
        raise InputError(f"{where}.mode: {mode!r} is not one of {MODES}")
    if control not in CONTROLS:
        raise InputError(f"{where}.control: {control!r} is not one of {CONTROLS}")
    if control is not None and not radius:
        raise InputError(f"{where}.control: {control!r} needs a non-empty radius")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{where}.seed: {seed!r} is not an integer >= 0")


@dataclass(frozen=True)
class ContextConfig:
    """How the horizontal context descriptor is built (``apply_context``).

    Attributes:
        radius: horizontal context radii ``k`` (integers >= 1, no duplicates), one context
            block per radius in this order; empty means no context (descriptor unchanged).
        aggregation: how the ``<= 2k`` row neighbours are aggregated, one of
            ``mean | gaussian | median | trimmed | max`` (see ``row_context``).
        mode: ``concat`` -> ``[f | ctx_k1 | ctx_k2 ...]``; ``residual`` ->
            ``[f | ctx_k1 | f - ctx_k1 | ctx_k2 | f - ctx_k2 ...]``.
        control: ``None`` (real context) or an ablation of the same width: ``random`` (a
            seeded random projection of the patch itself) or ``global`` (the map's mean
            patch); see ``apply_context``.
        seed: seed of the ``random`` control's projection matrices.
    """

    radius: tuple[int, ...] = ()
    aggregation: str = "mean"
    mode: str = "concat"
    control: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_values(self.radius, self.aggregation, self.mode, self.control, self.seed, "context")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "context") -> ContextConfig:
        """Build from a params block; ``radius`` may be an int or a list of ints.

        Args:
            data: mapping with some of the keys ``radius, aggregation, mode, control, seed``
                (``None`` or ``{}`` gives the default: no context).
            where: dotted params path used in error messages, e.g. ``experiments.x.context``.

        Raises:
            InputError: naming ``where.<key>`` for an unknown key or a bad value.
        """
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"{where}.{unknown[0]}: unknown key(s) {unknown}; expected some of {sorted(known)}"
            )
        radius = data.get("radius", ())
        if isinstance(radius, (int, np.integer)) and not isinstance(radius, bool):
            radius = (radius,)
        elif isinstance(radius, (list, tuple)):
            radius = tuple(radius)
        else:
            raise InputError(f"{where}.radius: {radius!r} is not an int or a list of ints")
        data["radius"] = tuple(int(k) if isinstance(k, np.integer) else k for k in radius)
        merged = {f.name: data.get(f.name, f.default) for f in fields(cls)}
        _check_values(**merged, where=where)
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that ``from_dict`` turns back into this config."""
        out = asdict(self)
        out["radius"] = list(self.radius)
        return out

    @property
    def enabled(self) -> bool:
        """Whether any context block is added."""
        return bool(self.radius)

    def validate_grid(self, width: int, where: str = "context") -> None:
        """Check the radii against the patch grid width ``W``.

        Args:
            width: number of patch columns ``W`` of the descriptors.
            where: dotted params path used in the error message.

        Raises:
            InputError: naming ``where.radius`` when a radius ``k >= width`` (the CPD radius
                is wider than the grid, so every patch would see the whole row).
        """
        for k in self.radius:
            if k >= width:
                raise InputError(
                    f"{where}.radius: CPD radius {k} wider than the grid "
                    f"(width {width}; need radius < width)"
                )


def _neighbour_offsets(k: int, width: int) -> np.ndarray:
    """Column offsets ``d`` in ``-k..k`` without 0, restricted to ``|d| < width``."""
    kk = min(k, width - 1)
    return np.array([d for d in range(-kk, kk + 1) if d != 0], dtype=np.int64)


def _neighbour_counts(k: int, width: int) -> np.ndarray:
    """``(W,)`` number of existing neighbours of each column (border clipping)."""
    j = np.arange(width)
    lo = np.maximum(j - k, 0)
    hi = np.minimum(j + k, width - 1)
    return hi - lo  # (hi - lo + 1) columns in the window, minus the patch itself


def _shift_reduce(desc: np.ndarray, k: int, aggregation: str) -> np.ndarray:
    """``mean`` / ``gaussian`` / ``max`` by accumulating the ``2k`` shifted copies."""
    width = desc.shape[2]
    if aggregation == "max":
        out = np.full(desc.shape, -np.inf, dtype=np.float32)
    else:
        out = np.zeros(desc.shape, dtype=np.float32)
    wsum = np.zeros(width, dtype=np.float64)
    sigma = k / 2.0
    for d in _neighbour_offsets(k, width):
        a = abs(int(d))
        # target columns t receive the patch at column t + d
        t0, t1 = max(0, -d), min(width, width - d)
        src = desc[:, :, t0 + d : t1 + d]
        if aggregation == "max":
            np.maximum(out[:, :, t0:t1], src, out=out[:, :, t0:t1])
            continue
        w = 1.0 if aggregation == "mean" else float(np.exp(-(a**2) / (2.0 * sigma**2)))
        out[:, :, t0:t1] += np.float32(w) * src
        wsum[t0:t1] += w
    if aggregation != "max":
        out /= wsum.astype(np.float32)[None, None, :, None]
    return out


def _stack_reduce(desc: np.ndarray, k: int, aggregation: str) -> np.ndarray:
    """``median`` / ``trimmed`` from the sorted neighbour stack, in chunks of rows."""
    n, h, width, dim = desc.shape
    rows = desc.reshape(n * h, width, dim)
    counts = _neighbour_counts(k, width)  # (W,)
    c = counts[None, :, None, None]
    pos = np.arange(2 * k)[None, None, None, :]
    if aggregation == "median":
        lo = (c - 1) // 2
        hi = c // 2
    else:  # trimmed: keep sorted positions 1..c-2 when c >= 3, else all 0..c-1
        first = np.where(c >= 3, 1, 0)
        last = np.where(c >= 3, c - 2, c - 1)
        keep = (pos >= first) & (pos <= last)  # (1, W, 1, 2k)
        n_keep = (last - first + 1)[..., 0].astype(np.float32)  # (1, W, 1)
    out = np.empty_like(rows)
    per_row = width * dim * 2 * k * 4 * 3
    step = max(1, _STACK_BYTES // max(per_row, 1))
    for r0 in range(0, rows.shape[0], step):
        chunk = rows[r0 : r0 + step]
        padded = np.pad(chunk, ((0, 0), (k, k), (0, 0)), constant_values=np.nan)
        win = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1, axis=1)
        stack = np.delete(win, k, axis=-1)  # (R, W, D, 2k), the patch itself removed
        stack.sort(axis=-1)  # missing neighbours (NaN) sort last
        if aggregation == "median":
            a = np.take_along_axis(stack, lo, axis=-1)[..., 0]
            b = np.take_along_axis(stack, hi, axis=-1)[..., 0]
            out[r0 : r0 + step] = 0.5 * (a + b)
        else:
            total = np.where(keep, stack, np.float32(0)).sum(axis=-1)
            out[r0 : r0 + step] = total / n_keep
    return out.reshape(n, h, width, dim)


def row_context(desc: np.ndarray, k: int, aggregation: str = "mean") -> np.ndarray:
    """Aggregate each patch's horizontal neighbours in its own row.

    For patch ``(i, j)`` the neighbours are the patches ``(i, j')`` with
    ``0 < |j' - j| <= k``; the patch itself is excluded. At the left/right borders the window
    is clipped: only neighbours that exist are used (a border patch has ``k`` neighbours,
    an interior one ``2k``; a radius ``k >= W`` means the whole row minus the patch).

    Aggregations (per channel):
      - ``mean``: plain average of the neighbours.
      - ``gaussian``: weighted average with weights ``exp(-d^2 / (2 sigma^2))``,
        ``sigma = k / 2`` and ``d`` the column distance, normalised over the existing
        neighbours.
      - ``median``: median of the neighbours (mean of the two middle ones for an even count).
      - ``trimmed``: mean after dropping the single smallest and single largest value when
        there are ``>= 3`` neighbours; with 1 or 2 neighbours it is the plain mean.
      - ``max``: maximum of the neighbours.

    Args:
        desc: ``(N, H, W, D)`` descriptors, ``W >= 2``.
        k: radius, an integer ``>= 1``.
        aggregation: one of ``mean | gaussian | median | trimmed | max``.

    Returns:
        ``(N, H, W, D)`` float32 context descriptors; map ``n`` depends only on ``desc[n]``.

    Raises:
        InputError: bad ``k``, unknown ``aggregation``, or ``W < 2`` (no neighbours).
    """
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    if desc.ndim != 4:
        raise InputError(f"descriptors: expected (N, H, W, D), got shape {desc.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"context.radius: {k!r} is not an integer >= 1")
    if aggregation not in AGGREGATIONS:
        raise InputError(f"context.aggregation: {aggregation!r} is not one of {AGGREGATIONS}")
    if desc.shape[2] < 2:
        raise InputError(f"descriptors: grid width {desc.shape[2]} has no horizontal neighbours")
    k = int(k)
    if aggregation in ("mean", "gaussian", "max"):
        return _shift_reduce(desc, k, aggregation)
    return _stack_reduce(desc, min(k, desc.shape[2] - 1), aggregation)


def _random_projections(dim: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` fixed ``(dim, dim)`` Gaussian matrices with entries ``N(0, 1/dim)`` from ``seed``."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(dim)
    return [(rng.standard_normal((dim, dim)) * scale).astype(np.float32) for _ in range(n)]


def apply_context(desc: np.ndarray, cfg: ContextConfig, where: str = "context") -> np.ndarray:
    """Append the horizontal context blocks configured by ``cfg``.

    Layout (``f`` = the patch descriptor, ``ctx_k = row_context(desc, k, cfg.aggregation)``):
      - no radius: ``desc`` unchanged (as float32);
      - ``concat``: ``[f | ctx_k1 | ctx_k2 | ...]``;
      - ``residual``: ``[f | ctx_k1 | f - ctx_k1 | ctx_k2 | f - ctx_k2 | ...]``.

    Controls replace every ``ctx_k`` by a block of the same width that carries no
    neighbour information, so a gain of the real descriptor over its control is not just
    extra width:
      - ``random``: ``ctx_k = f @ R_k`` where ``R_k`` is a fixed ``(D, D)`` matrix with
        i.i.d. ``N(0, 1/D)`` entries drawn from ``numpy.random.default_rng(cfg.seed)`` (one
        matrix per radius, in order): a width-matched random projection of the patch itself,
        deterministic and independent of the neighbours and of other maps.
      - ``global``: ``ctx_k`` = the mean of all ``H * W`` patches of the same map,
        broadcast to every patch (identical for every radius).

    Args:
        desc: ``(N, H, W, D)`` descriptors.
        cfg: the context configuration.
        where: params path named when a radius does not fit the grid.

    Returns:
        ``(N, H, W, descriptor_width(D, cfg))`` float32; map ``n`` depends only on
        ``desc[n]`` (and ``cfg.seed``), so bank and query descriptors are transformed alike.

    Raises:
        InputError: a radius ``>= W`` (see ``ContextConfig.validate_grid``).
    """
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    if not cfg.radius:
        return desc
    if desc.ndim != 4:
        raise InputError(f"descriptors: expected (N, H, W, D), got shape {desc.shape}")
    cfg.validate_grid(desc.shape[2], where)
    dim = desc.shape[-1]
    if cfg.control == "random":
        mats = _random_projections(dim, len(cfg.radius), cfg.seed)
    elif cfg.control == "global":
        glob = np.broadcast_to(desc.mean(axis=(1, 2), keepdims=True, dtype=np.float64), desc.shape)
        glob = glob.astype(np.float32)
    parts = [desc]
    for idx, k in enumerate(cfg.radius):
        if cfg.control is None:
            ctx = row_context(desc, k, cfg.aggregation)
        elif cfg.control == "random":
            ctx = (desc.reshape(-1, dim) @ mats[idx]).reshape(desc.shape)
        else:
            ctx = glob
        parts.append(ctx)
        if cfg.mode == "residual":
            parts.append(desc - ctx)
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32)


def descriptor_width(d: int, cfg: ContextConfig) -> int:
    """Output channel count of ``apply_context`` for input width ``d``.

    ``d`` without radius; ``d * (1 + len(radius))`` for ``concat``;
    ``d * (1 + 2 * len(radius))`` for ``residual`` (controls keep the width).
    """
    if not cfg.radius:
        return d
    per_k = 2 if cfg.mode == "residual" else 1
    return d * (1 + per_k * len(cfg.radius))


def project_channels(desc: np.ndarray, dim: int) -> np.ndarray:
    """Reduce every patch vector to ``dim`` channels by adaptive average pooling.

    This is the reference PatchCore's fixed-width projection: each patch vector of length
    ``D`` is treated as a 1-D signal and pooled with
    ``torch.nn.functional.adaptive_avg_pool1d`` to ``dim`` bins (bin ``i`` averages channels
    ``floor(i * D / dim) .. ceil((i + 1) * D / dim) - 1``), i.e. ``(N*H*W, 1, D) ->
    (N*H*W, 1, dim)``. With ``dim == D`` it is the identity (pooled anyway, like the
    reference). Per patch, hence per map.

    Args:
        desc: ``(N, H, W, D)`` descriptors.
        dim: target width, ``1 <= dim <= D``.

    Returns:
        ``(N, H, W, dim)`` float32.

    Raises:
        InputError: ``dim < 1`` or ``dim > D`` (pooling cannot add channels).
    """
    desc = np.ascontiguousarray(desc, dtype=np.float32)
    if desc.ndim != 4:
        raise InputError(f"descriptors: expected (N, H, W, D), got shape {desc.shape}")
    width = desc.shape[-1]
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InputError(f"project_channels: dim {dim!r} is not an integer >= 1")
    if dim > width:
        raise InputError(f"project_channels: dim {dim} > descriptor width {width}")
    n, h, w, _ = desc.shape
    import torch  # here, not at the top: parsing params (ContextConfig) needs no torch
    import torch.nn.functional as F

    t = torch.from_numpy(desc.reshape(n * h * w, 1, width))
    with torch.no_grad():
        out = F.adaptive_avg_pool1d(t, int(dim))
    return np.ascontiguousarray(out.reshape(n, h, w, int(dim)).numpy(), dtype=np.float32)
