"""Greedy k-center coreset (PatchCore): exact, or on randomly projected features.

Each point is stored as ``[x, |x|^2, 1]`` and each centre as ``[-2c, 1, |c|^2]``, so one
matrix product gives the squared distances ``|x - c|^2`` (no temporaries).

The textbook loop reads all N points once per selected centre (one matrix-vector product):
``k N`` distances. Here the picks are made in *blocks*, and each block reads the data once,
computing only the distances that can change something:

- **Candidates.** A block's candidates are the current farthest point and the next ``m - 1``
  farthest by the nearest-centre distance ``min_d``; every other point has ``min_d <=``
  ``bound``, the largest left out. The block keeps picking the candidate farthest from the
  centres so far (its ``min_d`` lowered by the candidate-candidate distances alone) as long as
  that distance exceeds ``bound``: it is then the argmax over all points. When it no longer
  does, the block ends; on patch features a block of 4096 candidates serves 1000-2500 picks.
- **One pruned pass per block.** Only then is ``min_d`` of every point lowered, by the
  block's picks only. The points are kept in *groups* around anchors (the greedy picks of a
  random sample), each group contiguous and sorted by decreasing *reach*
  ``|x - o| + sqrt(min_d[x])`` (``o`` its anchor). By the triangle inequality a pick ``c``
  cannot bring ``x`` closer when ``|c - o| >= reach(x)`` (:meth:`_Selection._limits`, with
  the float rounding bound of :func:`_pair_error`), so it is compared with a prefix of each
  group only, and with none of most groups. On 779k patch-like features at 10% this
  computes about 8% of the textbook loop's distances.

The picks are the textbook greedy's up to float32 rounding, on any BLAS: every computed
distance is a float32 product within ``8 (d + 2) 2^-24`` times the largest squared norm of
the exact one (``d`` dims after any projection, itself rounded as its product's shape
rounds; :func:`_pair_error`, whatever order the kernel sums in), a skipped one provably
would not have lowered ``min_d`` however it rounds, and equal computed distances go to the
lowest index. So each pick is farthest from the picks before it up to twice that bound: where
the farthest point leads the next by more, it is the textbook loop's pick, in float32 or
float64. Within the bound (a near-tie), a product of another shape, another BLAS
build or kernel (``OPENBLAS_CORETYPE``), the GPU loop or the textbook loop may take the other
point, and the picks go on from there. The same input, machine, BLAS and thread count give
the same picks. (On OpenBLAS with its default kernel choice no product is made small enough
for its small-matrix kernel, ``SMALL_PRODUCT``: there the pruned and unpruned loops round
alike and agree bit for bit; other builds promise no such thing.)

Memory: the ``N x (dim + 2)`` rows in group order (projected in row chunks when the input is
wider than ``proj_dim``, so a 1.5M x 1536 input needs only its own memory plus this copy), a
few ``N``-vectors, the ``m x m`` candidate distances and ``(groups x m)`` pruning limits
(~50 MB each at 779k patches). With ``device="cuda"`` the textbook loop runs in torch on
the GPU (float32, original order; near-ties may resolve differently from the CPU path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 65536
# rows at a time while grouping and copying the input: small temporaries, which the
# allocator may keep after they are freed (they would add to the selection's peak)
ROW_STEP = 16384
MAX_BLOCK = 4096  # candidates per block: only the picked ones cost distances
GROUP_POINTS = 256  # points per group (pruning granularity)
SAMPLE_PER_GROUP = 8  # random sample for the anchors: this many points per anchor
# A block is compared with every point (no per-group products) above this fraction of pairs.
FULL_PASS_FRACTION = 0.5
CHUNK_BYTES = 16 * 2**20  # a product's distances (picks x points float32): at most this
MAX_TIERS = 6  # a group's picks are compared in up to this many tiers of similar reach
TIER_OVERHEAD = 40  # a product of r picks costs as much as r + this at full speed
SORT_ROWS = 32768  # rows moved at a time when a group is re-sorted
# OpenBLAS (default kernel choice) computes products with rows * cols up to about 1200 by
# another kernel, whose rounding differs; every product here has at least 2 rows and
# rows * cols above this, so that small and large products round alike there. Not portable
# (OPENBLAS_CORETYPE=Haswell, other BLAS builds): correctness never relies on it.
SMALL_PRODUCT = 4096
UNIT_ROUNDOFF = 2.0**-24  # float32
# Wider descriptors are randomly projected to this many dims for the distances (anomalib
# projects to ~25 ln N, about 300 at 100k patches); narrower ones are selected exactly.
DEFAULT_PROJ_DIM = 256


def _projection_matrix(n_feat: int, dim: int | None, seed: int) -> np.ndarray | None:
    """The seeded Gaussian map ``(n_feat, dim)`` scaled ``1/sqrt(dim)``; None: no projection."""
    if dim is None or n_feat <= dim:
        return None
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_feat, dim)).astype(np.float32) / np.float32(math.sqrt(dim))


def _space_rows(features: np.ndarray, proj: np.ndarray | None, rows) -> np.ndarray:
    """``features[rows]`` as float32 in the selection space (projected when ``proj``)."""
    x = np.asarray(features[rows]).astype(np.float32, copy=False)
    return x if proj is None else np.matmul(x, proj)


def random_projection(features: np.ndarray, dim: int | None, seed: int) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, dim)`` with a seeded Gaussian map.

    Identity (a float32 copy only where needed) when ``dim`` is None or ``D <= dim``.

    The scale ``1/sqrt(dim)`` keeps distances comparable (Johnson-Lindenstrauss). Rows are
    projected in chunks of ``CHUNK_ROWS`` so no full-size temporary is made.
    """
    proj = _projection_matrix(features.shape[1], dim, seed)
    if proj is None:
        return np.ascontiguousarray(features, dtype=np.float32)
    out = np.empty((features.shape[0], proj.shape[1]), dtype=np.float32)
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


def _as_centres(rows: np.ndarray) -> np.ndarray:
    """Point rows ``[x, |x|^2, 1]`` -> centre rows ``[-2x, 1, |x|^2]``."""
    d = rows.shape[1] - 2
    out = np.empty_like(rows)
    np.multiply(rows[:, :d], -2.0, out=out[:, :d])
    out[:, d] = 1.0
    out[:, d + 1] = rows[:, d]
    return out


def block_size(n: int) -> int:
    """Candidates per block for ``n`` points: ``MAX_BLOCK`` (at most ``n``)."""
    return max(1, min(MAX_BLOCK, n))


def _pair_error(d2: int) -> float:
    """``c`` with ``|computed - exact| <= c (|x|^2 + |y|^2)`` for any float32 squared distance.

    A float32 dot product of length ``K = d2`` errs by at most ``K u sum|a_i b_i|``
    (``u = 2^-24``, any summation order); for ``[x, |x|^2, 1] . [-2y, 1, |y|^2]`` that sum is at
    most ``2 (|x|^2 + |y|^2)``, and each stored norm errs by at most ``K u`` of itself: ``3 K u``
    in all, 4 leaves room.
    """
    return 4.0 * d2 * UNIT_ROUNDOFF


def _products(centres: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``centres @ points.T`` ``(r, c)`` float32, within :func:`_pair_error`'s bound of exact.

    Too small a product is padded (rows and columns repeated) and the result cut back, so that
    OpenBLAS with its default kernel choice rounds it as the large ones (``SMALL_PRODUCT``).
    """
    r, c = len(centres), len(points)
    if r >= 2 and c >= 2 and r * c > SMALL_PRODUCT:
        return np.matmul(centres, points.T)
    rows = max(2, r, -(-SMALL_PRODUCT // max(2, c)) + 1)
    if c < 2:
        points = np.resize(points, (2, points.shape[1]))
    out = np.matmul(np.resize(centres, (rows, centres.shape[1])), points.T)
    return out[:r, :c]


@dataclass(frozen=True)
class _Groups:
    """Rows sorted into groups around anchors (see the module docstring).

    ``order`` ``(N,)``: original index of each sorted row; ``starts`` ``(G + 1,)``: group
    ``g`` is sorted rows ``starts[g]:starts[g + 1]``; ``anchors`` ``(G, d)`` float64.
    """

    order: np.ndarray
    starts: np.ndarray
    anchors: np.ndarray


def _plan_groups(features: np.ndarray, proj: np.ndarray | None, seed: int,
                group_points: int = GROUP_POINTS) -> _Groups:
    """Group the points of ``features`` (in the selection space) around ``N / group_points``
    anchors: the greedy k-center picks of a seeded random sample, so that groups are compact.

    Any grouping gives the same picks; compact ones let a pick skip more groups.
    """
    n = len(features)
    n_groups = max(1, n // max(1, group_points))
    if n_groups == 1:
        anchors = _space_rows(features, proj, slice(0, 1)).astype(np.float64)
        return _Groups(np.arange(n, dtype=np.int64), np.array([0, n], dtype=np.int64), anchors)
    rng = np.random.default_rng([seed, 1])
    sample = np.sort(rng.choice(n, size=min(n, SAMPLE_PER_GROUP * n_groups), replace=False))
    sample_aug = _augmented(_space_rows(features, proj, sample))
    picks = _select_sorted(sample_aug, n_groups, 0, None, block_size(len(sample)))
    anchors = sample_aug[picks, :-2]  # (no groups: original indices are rows)
    # nearest anchor, two-level: the first 4 sqrt(G) picks cover the sample coarsely; a
    # point takes the nearest anchor among those near its nearest coarse one (each anchor is
    # listed under its 3 nearest coarse ones). Nearly always the nearest anchor, and any
    # assignment is correct: a farther anchor only prunes less.
    coarse = anchors[: min(n_groups, 4 * (math.isqrt(n_groups - 1) + 1))]
    near = 0.5 * np.einsum("cd,cd->c", coarse, coarse) - anchors @ coarse.T
    near = np.argsort(near, axis=1)[:, :3]
    children = [np.flatnonzero((near == c).any(axis=1)) for c in range(len(coarse))]
    for c, kids in enumerate(children):
        if len(kids) == 0:  # (duplicate anchors) the coarse anchor itself
            children[c] = np.array([c])
    group = np.empty(n, dtype=np.int64)
    for start in range(0, n, ROW_STEP):
        x = _space_rows(features, proj, slice(start, start + ROW_STEP))
        up = _nearest(x, coarse)
        for c in np.unique(up):
            rows = np.flatnonzero(up == c)
            kids = children[c]
            group[start + rows] = kids[_nearest(x[rows], anchors[kids])]
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=n_groups)
    keep = sizes > 0  # an anchor may win no point (duplicates): no empty groups
    starts = np.concatenate(([0], np.cumsum(sizes[keep])))
    return _Groups(order, starts.astype(np.int64), anchors[keep].astype(np.float64))


def _nearest(x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Nearest of ``anchors`` to each row of ``x``, in float32 (by ``|a|^2 / 2 - x . a``)."""
    return np.argmin(0.5 * np.einsum("gd,gd->g", anchors, anchors) - x @ anchors.T, axis=1)


def _augmented_in_order(features: np.ndarray, proj: np.ndarray | None,
                        order: np.ndarray) -> np.ndarray:
    """:func:`_augmented` of the selection-space rows ``order`` (row chunks, one full copy)."""
    d = features.shape[1] if proj is None else proj.shape[1]
    aug = np.empty((len(order), d + 2), dtype=np.float32)
    for start in range(0, len(order), ROW_STEP):
        x = _space_rows(features, proj, order[start : start + ROW_STEP])
        aug[start : start + len(x), :d] = x
        aug[start : start + len(x), d] = np.einsum("nd,nd->n", x, x)
    aug[:, d + 1] = 1.0
    return aug


def _anchor_radii(aug: np.ndarray, groups: _Groups) -> np.ndarray:
    """``(N,)`` float64 distance of each sorted row to its group's anchor."""
    d = aug.shape[1] - 2
    sizes = np.diff(groups.starts)
    which = np.repeat(np.arange(len(sizes)), sizes)
    out = np.empty(len(aug))
    step = 8192
    for start in range(0, len(aug), step):
        diff = aug[start : start + step, :d] - groups.anchors[which[start : start + step]]
        out[start : start + len(diff)] = np.sqrt(np.einsum("nd,nd->n", diff, diff))
    return out


def _parallel_blas(jobs: list, costs: list[int]) -> list:
    """Run ``jobs`` (callables) with one BLAS thread each, on as many Python threads as BLAS
    has; consecutive jobs are batched into parts of similar total ``costs``. Returns their
    results, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info, threadpool_limits

    workers = max([1] + [int(i.get("num_threads", 1)) for i in threadpool_info()
                         if i.get("user_api") == "blas"])
    if not jobs:
        return []
    bounds = np.searchsorted(np.cumsum(costs), np.linspace(0, sum(costs), 4 * workers + 1)[1:-1])
    parts = [p for p in np.split(np.arange(len(jobs)), bounds) if len(p)]

    def run(part: np.ndarray) -> list:
        return [jobs[j]() for j in part]

    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            return [r for part in parts for r in run(part)]
        with ThreadPoolExecutor(workers) as pool:
            return [r for rs in pool.map(run, parts) for r in rs]


def _tiers(lengths: np.ndarray) -> np.ndarray:
    """Cuts ``(T + 1,)`` of decreasing prefix ``lengths`` into ``T`` tiers of equal count,
    ``T`` chosen (up to ``MAX_TIERS``) for the least estimated time: a tier of ``r`` picks and
    prefix ``w`` costs about ``w (r + TIER_OVERHEAD)``, as small products run slower per
    distance (single-threaded OpenBLAS: ~25% of its best rate at 16 rows, ~80% at 128)."""
    best, best_cost = None, np.inf
    for t in range(1, min(MAX_TIERS, len(lengths)) + 1):
        cuts = np.linspace(0, len(lengths), t + 1).astype(np.int64)
        cost = float(lengths[cuts[:-1]] @ (np.diff(cuts) + TIER_OVERHEAD))
        if cost < best_cost:
            best, best_cost = cuts, cost
    return best


class _Selection:
    """The state of one selection over ``aug`` rows grouped by ``groups`` (see the module
    docstring): ``min_d`` and the original index ``order`` of every row, and what prunes a
    block's read. Rows move within their group (sorted by reach), never out of it."""

    def __init__(self, aug: np.ndarray, groups: _Groups | None) -> None:
        n, d2 = aug.shape
        self.aug = aug
        self.min_d = np.full(n, np.inf, dtype=np.float32)
        self.order = np.arange(n, dtype=np.int64) if groups is None else groups.order.copy()
        self.counts = {"passes": 0, "points_read": 0, "distances": 0}
        self.grouped = groups is not None and len(groups.starts) > 2
        if not self.grouped:
            return
        self.starts = groups.starts
        sizes = np.diff(self.starts)
        self.group_of = np.repeat(np.arange(len(sizes)), sizes)
        self.anchors = groups.anchors
        self.anchor_norms = np.einsum("gd,gd->g", self.anchors, self.anchors)
        self.radius = _anchor_radii(aug, groups)
        self.norm_max = np.maximum.reduceat(aug[:, d2 - 2].astype(np.float64), self.starts[:-1])
        self.pair_error = _pair_error(d2)
        # -(|x - o| + sqrt(min_d[x])) as of the last sort: ascending within each group
        self.neg_reach = np.full(n, -np.inf)

    def _lower(self, centres: np.ndarray, lo: int, hi: int) -> int:
        """``min_d[lo:hi]`` lowered by its distances to ``centres`` (column chunks of at most
        ``CHUNK_BYTES`` of distances); returns the number of distances computed."""
        done = 0
        step = max(1024, CHUNK_BYTES // (4 * len(centres)))
        for s in range(lo, hi, step):
            e = min(hi, s + step)
            if hi - e < step // 4:  # no small last chunk (see SMALL_PRODUCT)
                e = hi
            dist = _products(centres, self.aug[s:e])
            np.minimum(self.min_d[s:e], dist.min(axis=0), out=self.min_d[s:e])
            done += len(centres) * (e - s)
            if e == hi:
                break
        return done

    def _lower_all(self, centres: np.ndarray) -> None:
        n = len(self.aug)
        self.counts["distances"] += self._lower(centres, 0, n)
        self.counts["points_read"] += n

    def update(self, centres: np.ndarray, points: np.ndarray) -> None:
        """Lower ``min_d`` by the distances to new centres (``centres``: their centre rows,
        ``points``: their point rows), each compared only with the points it can bring
        closer; then re-sort the groups by reach."""
        n = len(self.aug)
        self.counts["passes"] += 1
        if len(centres) == 1 and np.isinf(self.min_d[0]):
            # the first pick: one matrix-vector product, as the textbook loop
            np.minimum(self.min_d, (centres @ self.aug.T)[0], out=self.min_d)
            self.counts["points_read"] += n
            self.counts["distances"] += n
        elif not self.grouped or np.isinf(self.neg_reach[0]):
            self._lower_all(centres)
        else:
            self._update_pruned(centres, points)
        if self.grouped:
            self._sort()

    def _update_pruned(self, centres: np.ndarray, points: np.ndarray) -> None:
        """:meth:`update` group by group (:meth:`_lower_group`), on parallel threads. When a
        sample of the picks meets more than ``FULL_PASS_FRACTION`` of the points, every pick
        is compared with every point instead (one product per column chunk)."""
        n = len(self.aug)
        limit = self._limits(points)
        sample = limit[:, :: max(1, limit.shape[1] // 64)]
        if self._prefix_lengths(sample).sum() > FULL_PASS_FRACTION * sample.shape[1] * n:
            self._lower_all(centres)
            return
        top = self.margin - self.neg_reach[self.starts[:-1]]  # each group's largest reach
        top32 = top.astype(np.float32)
        np.nextafter(top32, np.float32(np.inf), out=top32, where=top32 < top)  # round up
        reaching = (limit < top32[:, None]).sum(axis=1)
        groups = np.flatnonzero(reaching)
        done = _parallel_blas(
            [lambda g=g: self._lower_group(g, limit[g], top32[g], centres) for g in groups],
            reaching[groups] * np.diff(self.starts)[groups])
        self.counts["distances"] += sum(d for d, _ in done)
        self.counts["points_read"] += sum(r for _, r in done)

    def _lower_group(self, g: int, limit: np.ndarray, top: float,
                     centres: np.ndarray) -> tuple[int, int]:
        """Lower ``min_d`` of group ``g`` by the picks that can reach it: pick ``c`` meets the
        points whose reach ``|x - o| + sqrt(min_d[x])`` exceeds ``limit[c]`` (see
        :meth:`_limits`), a prefix of the group as sorted. The picks, by decreasing prefix,
        go in tiers (:func:`_tiers`), each compared with its longest prefix. Returns
        (distances computed, points read)."""
        lo, hi = int(self.starts[g]), int(self.starts[g + 1])
        rows = np.flatnonzero(limit < top)
        # points with -reach < -limit: reach > limit (and a margin, for the sort's rounding)
        lengths = np.searchsorted(self.neg_reach[lo:hi],
                                  self.margin - limit[rows].astype(np.float64), "left")
        by_length = np.argsort(-lengths, kind="stable")
        rows = rows[by_length]
        lengths = np.maximum(lengths[by_length], min(2, hi - lo))
        cuts = _tiers(lengths)
        done = 0
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            done += self._lower(centres[rows[a:b]], lo, lo + int(lengths[a]))
        return done, int(lengths[0])

    def _prefix_lengths(self, limit: np.ndarray) -> np.ndarray:
        """``(G, p)``: points of each group with reach above ``limit`` (an estimate: the
        float64 key rounds at about 1e-10)."""
        g = np.arange(limit.shape[0])[:, None]
        queries = g * self.key_span + np.clip(self.margin - limit.astype(np.float64),
                                              -self.key_span / 2,
                                              self.key_span / 4)
        return np.searchsorted(self.key, queries, "left") - self.starts[:-1, None]

    def _limits(self, points: np.ndarray) -> np.ndarray:
        """``(G, p)`` float32: pick ``p`` cannot bring closer any point of group ``g`` whose
        reach ``|x - o_g| + sqrt(min_d[x])`` is at most ``limit[g, p]``.

        Triangle inequality: ``|x - c| >= |c - o| - |x - o| >= sqrt(min_d[x])`` when
        ``|c - o| >= reach(x)``. ``limit = |c - o| - err``, where ``err`` covers the float64
        evaluation here and the float32 rounding of ``D(x, c)`` (:func:`_pair_error`; the
        square root of a sum bounded by the sum of roots): then ``D(x, c) >= min_d[x]`` as
        the textbook loop would compute it, so ``min_d`` would not change. ``min_d`` only
        decreases, so a reach computed earlier stays an upper bound. Evaluated in float64
        for a few picks at a time, stored rounded down.
        """
        d = points.shape[1] - 2
        k64 = 4.0 * (d + 2) * 2.0**-53
        # float64: the squares err by at most 4 K 2^-53 of both norms, radii and sums by a
        # relative 1e-15 or so
        err_g = (np.sqrt(self.pair_error * self.norm_max) + np.sqrt(k64 * self.anchor_norms)
                 + 1e-12 * np.sqrt(self.anchor_norms))
        out = np.empty((len(self.anchors), len(points)), dtype=np.float32)
        for lo in range(0, len(points), 512):
            part = points[lo : lo + 512]
            c = part[:, :d].astype(np.float64)
            c_norms = np.einsum("pd,pd->p", c, c)
            dist = self.anchors @ c.T  # (G, part), then in place: |c - o| - err
            dist *= -2.0
            dist += c_norms[None, :]
            dist += self.anchor_norms[:, None]
            np.maximum(dist, 0.0, out=dist)
            np.sqrt(dist, out=dist)
            dist -= (np.sqrt(self.pair_error * np.maximum(part[:, d], 0).astype(np.float64))
                     + np.sqrt(k64 * c_norms) + 1e-12 * (np.sqrt(c_norms) + 1.0))[None, :]
            dist -= err_g[:, None]
            view = out[:, lo : lo + len(part)]
            view[...] = dist
            np.nextafter(view, np.float32(-np.inf), out=view, where=view > dist)
        return out

    def _sort(self) -> None:
        """Sort the rows of each group by decreasing reach (moving ``aug``, ``min_d``,
        ``order`` and the radii along), a few groups of rows at a time."""
        reach = self.radius + np.sqrt(np.maximum(self.min_d, 0.0).astype(np.float64))
        span = 2.0 * float(reach.max()) + 2.0
        # a row keeps its group (keys of one group lie within span / 2 of each other); within
        # a group the order is by reach up to the keys' rounding (see `margin` below)
        perm = np.argsort(self.group_of * span - reach)
        starts = self.starts
        cut = 0
        while cut < len(perm):
            nxt = int(np.searchsorted(starts, cut, "right"))  # first group start past cut
            end = max(int(starts[nxt]),
                      int(starts[np.searchsorted(starts, cut + SORT_ROWS, "right") - 1]))
            self.aug[cut:end] = self.aug[perm[cut:end]]
            cut = end
        self.min_d[:] = self.min_d[perm]
        self.order[:] = self.order[perm]
        self.radius[:] = self.radius[perm]
        self.neg_reach = -reach[perm]
        # one sorted key over all groups, to count prefix lengths in one search
        self.key_span = span
        self.key = self.group_of * span + self.neg_reach
        # the keys round at their spacing, so a group is sorted by reach only up to that;
        # every reach comparison gives a wide multiple of it away. (Binary search on such an
        # array still places every value below q - spacing before its answer for q, so no
        # point above a limit is left out.)
        self.margin = max(1e-6, 1024.0 * float(np.spacing(len(self.starts) * span)))


def _argmax_lowest(values: np.ndarray, order: np.ndarray) -> int:
    """Position of the largest value; among equal ones the lowest original index ``order``."""
    j = int(np.argmax(values))
    ties = np.flatnonzero(values == values[j])
    return j if len(ties) == 1 else int(ties[np.argmin(order[ties])])


def _select_sorted(aug: np.ndarray, k: int, start: int, groups: _Groups | None, m: int,
                   counts: dict | None = None, progress: bool = False) -> np.ndarray:
    """Greedy k-center over ``aug`` rows (grouped by ``groups`` if given; rows move within
    their groups), ``k`` picks from row ``start``; returns original indices (``groups.order``
    of the rows). See the module docstring and :func:`_select_numpy`."""
    from tqdm import tqdm

    n = len(aug)
    m = max(1, min(int(m), n))
    state = _Selection(aug, groups)
    min_d, order = state.min_d, state.order
    selected = np.empty(k, dtype=np.int64)
    bar = tqdm(total=k, unit="pt", desc="coreset", disable=not progress, mininterval=2.0,
               smoothing=0.1)
    cand_pairs = 0
    i, cur = 0, int(start)
    while True:
        # The block: the current farthest point, then the next farthest ones.
        if i == 0 or m == 1:
            cands = np.array([cur], dtype=np.int64)
            bound = float(min_d[cur])  # no other point is farther
        else:
            top = np.argpartition(min_d, n - m)[n - m:]
            cands = np.concatenate(([cur], top[top != cur][: m - 1]))
            left = top[~np.isin(top, cands)]  # at most one, when ties kept cur out of top
            rest = float(min_d[top].min()) if m < n else -np.inf  # everything outside top
            bound = max(rest, float(min_d[left].max()) if len(left) else -np.inf)
        points = aug[cands]
        centres = _as_centres(points)
        between = _products(centres, points)  # (m, m) as the textbook loop computes them
        cand_pairs += len(cands) ** 2
        near = min_d[cands]
        cand_order = order[cands]
        picks = []
        j = 0
        while True:
            selected[i] = cand_order[j]
            picks.append(j)
            i += 1
            bar.update(1)
            if i == k:
                break
            np.minimum(near, between[j], out=near)
            j = _argmax_lowest(near, cand_order)
            if not near[j] > bound:  # a point outside the block may be as far: update all
                break
        del between
        if i == k:
            break
        state.update(centres[picks], points[picks])  # may move rows within their groups
        cur = _argmax_lowest(min_d, order)
        bar.set_postfix(passes=state.counts["passes"],
                        read=f"{state.counts['points_read'] / n:.1f}N", refresh=False)
    bar.close()
    if counts is not None:
        counts.update(state.counts, candidate_distances=cand_pairs)
    return selected


def _select_numpy(aug: np.ndarray, k: int, start: int, block: int | None = None,
                  counts: dict | None = None, progress: bool = False,
                  group_points: int | None = GROUP_POINTS, seed: int = 0) -> np.ndarray:
    """Greedy k-center over ``aug`` rows (:func:`_augmented`), ``k`` picks from row ``start``.

    ``block``: candidates per block (default ``block_size(n)``). ``group_points``: points per
    pruning group (None: no groups, every block reads every point); the rows are sorted into
    groups in a copy of ``aug`` (:func:`greedy_coreset` builds them in that order instead).
    ``counts`` (if given) receives ``passes`` (blocks whose distances were computed),
    ``points_read`` (points they were computed against, summed: ``points_read / N`` full
    reads' worth), ``distances`` (point-centre distances computed; the textbook loop computes
    ``(k - 1) N``), ``candidate_distances`` (within blocks) and ``groups``. ``progress``: a
    bar on stderr (points selected, points/s, ETA, passes and full reads' worth so far),
    refreshed every 2 s.

    Returns:
        ``(k,)`` int64 row indices in selection order.
    """
    m = block_size(len(aug)) if block is None else block
    groups = None
    if group_points is not None and len(aug) >= 2 * group_points:
        d = aug.shape[1] - 2
        groups = _plan_groups(aug[:, :d], None, seed, group_points)
        aug = aug[groups.order]
        start = int(np.flatnonzero(groups.order == start)[0])
    got = _select_sorted(aug, k, start, groups, m, counts, progress)
    if counts is not None:
        counts["groups"] = 1 if groups is None else len(groups.starts) - 1
    return got


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
    counts: dict | None = None,
) -> np.ndarray:
    """Indices of a greedy k-center coreset.

    Starts at one seeded random point, then repeatedly adds the point farthest (squared L2,
    in the projected space) from everything selected so far.

    Args:
        features: ``(N, D)`` float32 patch features.
        ratio: fraction of points to keep, in (0, 1]; 1.0 keeps all (no selection run).
        seed: seeds the start point, the projection and the pruning groups' anchors.
        proj_dim: features with more dimensions are randomly projected to this many for the
            distance computations (cheaper, approximate); ``None`` or ``D <= proj_dim``: exact
            distances in the feature space.
        device: ``cpu``, or ``cuda`` to run the selection loop on the GPU when one is present.
        k: select exactly this many points instead of ``coreset_size(N, ratio)``.
        progress: show the selection's progress on stderr (CPU loop).
        counts: if given, receives the CPU selection's counts (see :func:`_select_numpy`).

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
    start = int(np.random.default_rng(seed).integers(n))
    if k == 1:
        return np.array([start], dtype=np.int64)
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return _select_torch(_augmented(random_projection(features, proj_dim, seed)), k,
                                 start, device)
    proj = _projection_matrix(features.shape[1], proj_dim, seed)
    groups = _plan_groups(features, proj, seed)
    aug = _augmented_in_order(features, proj, groups.order)  # the one full-size copy
    start_row = int(np.flatnonzero(groups.order == start)[0])
    got = _select_sorted(aug, k, start_row, groups, block_size(n), counts, progress)
    if counts is not None:
        counts["groups"] = len(groups.starts) - 1
    return got


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
