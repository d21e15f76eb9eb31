"""Figures of a run: ROC curves, score histograms, gate p90, anomaly-map grids.

Every figure is drawn with matplotlib's Agg backend (no display needed) and written as PNG
atomically (a temp file beside the target, then ``os.replace``; see ``hdmap_ad.io``), at
``DPI`` dots per inch, without the ``Software`` PNG tag so equal inputs give equal bytes.
Figures are closed after saving.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from hdmap_ad.io import atomic_path  # noqa: E402

DPI = 110
CONDITIONS = ("cold", "warm")
#: Colours of the score / p90 groups (colour-blind friendly pairs: blue good, red fault).
GROUP_COLORS = {
    "cold/good": "#1f77b4",
    "cold/fault": "#d62728",
    "warm/good": "#17becf",
    "warm/fault": "#ff7f0e",
    "good": "#1f77b4",
    "fault": "#d62728",
    "references": "#2ca02c",
}
THRESHOLD_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))

PathLike = str | os.PathLike[str]


def save_figure(fig: Figure, path: PathLike) -> None:
    """Save ``fig`` as PNG atomically (temp file in the same folder, then rename) and close it.

    Args:
        fig: the figure.
        path: target ``.png`` path; its folder is created if missing.
    """
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)


def _fault(labels: pd.Series) -> np.ndarray:
    """``(N,)`` 0/1: 1 where the label is not ``good`` (fault is the positive class)."""
    return (labels.astype(str) != "good").to_numpy().astype(np.int64)


def _test(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[scores.role == "test"] if "role" in scores.columns else scores


def _groups(test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row masks of the groups ``cond/good``, ``cond/fault`` (cold, warm), else good / fault.

    Conditions other than cold / warm (``unknown``) form their own groups when some rows
    have a known condition; when none has, the split is good vs fault only.
    """
    fault = _fault(test.label).astype(bool)
    cond = test.condition.astype(str).to_numpy() if "condition" in test.columns else None
    if cond is None or not np.isin(cond, CONDITIONS).any():
        return {"good": ~fault, "fault": fault}
    others = sorted(set(cond) - set(CONDITIONS))
    groups = {}
    for c in [*CONDITIONS, *others]:
        for name, m in (("good", ~fault), ("fault", fault)):
            groups[f"{c}/{name}"] = (cond == c) & m
    return groups


def _color(name: str, i: int) -> str:
    return GROUP_COLORS.get(name, f"C{i % 10}")


def roc_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: PathLike, title: str
) -> None:
    """ROC curves, one per label, with the AUROC in the legend.

    Args:
        curves: label -> ``(y (N,) 0/1 with 1 = fault, scores (N,))``. A curve whose labels
            hold a single class cannot be drawn; its legend entry says ``n/a``.
        path: output PNG path.
        title: figure title.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="chance")
    for i, (label, (y, s)) in enumerate(curves.items()):
        y = np.asarray(y).astype(np.int64)
        s = np.asarray(s, dtype=np.float64)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            auc = roc_auc_score(y, s)
            ax.plot(fpr, tpr, color=f"C{i % 10}", lw=1.6, label=f"{label} (AUROC {auc:.3f})")
        else:
            ax.plot([], [], color=f"C{i % 10}", label=f"{label} (AUROC n/a: one class)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate",
           ylabel="true positive rate (fault recall)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _threshold_lines(ax, thresholds: dict[str, float | None]) -> None:
    for i, (name, t) in enumerate(thresholds.items()):
        if t is None or not np.isfinite(t):
            ax.plot([], [], color="k", ls=THRESHOLD_STYLES[i % 4], label=f"{name}: n/a")
            continue
        ax.axvline(float(t), color="k", lw=1.3, ls=THRESHOLD_STYLES[i % 4],
                   label=f"{name} = {float(t):.4g}")


def score_histograms(
    scores: pd.DataFrame, thresholds: dict[str, float | None], path: PathLike, title: str
) -> None:
    """Histograms of the test image scores per condition x class, with threshold lines.

    Groups are cold/good, cold/fault, warm/good, warm/fault (plus ``unknown/...`` if some
    maps have no condition); when no map has a known condition, good vs fault. All groups
    share the bins.

    Args:
        scores: scores table (columns ``label``, ``condition``, ``score``; rows with
            ``role != "test"`` are dropped when ``role`` is present).
        thresholds: name -> threshold (e.g. ``{"best": t1, "deployable": t2}``), drawn as
            vertical lines; None or non-finite ones are listed as ``n/a``.
        path: output PNG path.
        title: figure title.
    """
    test = _test(scores)
    s = test.score.to_numpy(np.float64)
    finite = [float(t) for t in thresholds.values() if t is not None and np.isfinite(t)]
    span = np.concatenate([s, finite]) if len(s) or finite else np.zeros(1)
    bins = np.histogram_bin_edges(span, bins=30)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (name, m) in enumerate(_groups(test).items()):
        if not m.any():
            continue
        color = _color(name, i)
        ax.hist(s[m], bins=bins, histtype="stepfilled", alpha=0.25, color=color)
        ax.hist(s[m], bins=bins, histtype="step", lw=1.4, color=color,
                label=f"{name} (n={int(m.sum())})")
    _threshold_lines(ax, thresholds)
    ax.set(xlabel="image score", ylabel="maps", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _hbox(ax, values: np.ndarray, position: int) -> None:
    """A horizontal box plot at y = ``position`` (``orientation`` on matplotlib >= 3.10)."""
    kw = {"positions": [position], "widths": 0.5, "showfliers": False,
          "medianprops": {"color": "k"}}
    try:
        ax.boxplot(values, orientation="horizontal", **kw)
    except TypeError:  # matplotlib < 3.10
        ax.boxplot(values, vert=False, **kw)


def gate_p90_figure(
    p90_by_group: dict[str, np.ndarray], threshold: float | None, path: PathLike, title: str
) -> None:
    """The gate feature (p90) per group as a box + jittered strip plot, with the threshold.

    Args:
        p90_by_group: group name (e.g. ``cold/good``, ``warm/fault``, ``references``) ->
            ``(n,)`` p90 values; empty groups are shown with ``n=0``.
        threshold: fitted gate threshold (vertical line), or None (ungated / not fitted).
        path: output PNG path.
        title: figure title.
    """
    names = list(p90_by_group)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.55 * max(1, len(names))))
    rng = np.random.default_rng(0)  # fixed jitter: same inputs, same picture
    for i, name in enumerate(names):
        v = np.asarray(p90_by_group[name], dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if len(v):
            _hbox(ax, v, i)
            jitter = rng.uniform(-0.18, 0.18, len(v))
            ax.scatter(v, i + jitter, s=10, alpha=0.7, color=_color(name, i), zorder=3)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="k", ls="--", lw=1.3,
                   label=f"gate threshold = {float(threshold):.4g}")
        ax.legend(fontsize=8, loc="best")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} (n={len(np.ravel(p90_by_group[n]))})" for n in names])
    ax.set_ylim(-0.6, max(1, len(names)) - 0.4)
    ax.invert_yaxis()
    ax.set(xlabel="p90 of the map", title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)


def _display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Image ready for ``imshow``: 2-D as is (gray colormap), RGB min-max scaled to [0, 1]."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return img, "gray"
    if img.ndim == 3 and img.shape[2] in (3, 4):
        lo, hi = np.nanmin(img), np.nanmax(img)
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), None
    raise ValueError(f"maps must be (H, W) or (H, W, 3), got {img.shape}")


def anomaly_map_grid(
    maps: list[np.ndarray],
    heatmaps: list[np.ndarray],
    titles: list[str],
    path: PathLike,
    title: str,
) -> None:
    """Rows of (input map, anomaly heatmap over the map), e.g. the worst FNs and FPs.

    The heatmap (patch-score grid of any resolution) is stretched over the map's extent with
    bilinear interpolation; all heatmaps share one colour scale (one colour bar) so rows
    compare. With no maps, a placeholder figure says so.

    Args:
        maps: ``n`` input maps, ``(H, W)`` float (HDMAP: 31 x 95, wide) or ``(H, W, 3)``.
        heatmaps: ``n`` anomaly maps, ``(h, w)`` (e.g. the ``(gh, gw)`` patch scores).
        titles: ``n`` row titles (e.g. ``"FN cold/fault id=... score=..."``).
        path: output PNG path.
        title: figure title.

    Raises:
        ValueError: when the three lists differ in length or a map has a bad shape.
    """
    if not len(maps) == len(heatmaps) == len(titles):
        raise ValueError(
            f"maps, heatmaps, titles differ in length: {len(maps)}, {len(heatmaps)}, "
            f"{len(titles)}"
        )
    n = len(maps)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no maps to show", ha="center", va="center")
        ax.set_axis_off()
        fig.suptitle(title)
        save_figure(fig, path)
        return
    shown = [_display(m) for m in maps]
    heats = [np.asarray(h, dtype=np.float64) for h in heatmaps]
    if any(h.ndim != 2 for h in heats):
        raise ValueError("heatmaps must be 2-D (h, w)")
    vmin = min(float(np.nanmin(h)) for h in heats)
    vmax = max(float(np.nanmax(h)) for h in heats)
    if vmax <= vmin:
        vmax = vmin + 1e-12
    # row height follows the widest aspect (HDMAP is ~1:3), 4.2 in per column
    aspect = max(img.shape[0] / img.shape[1] for img, _ in shown)
    row_h = 4.2 * aspect + 0.55
    fig, axes = plt.subplots(n, 2, figsize=(10.0, 0.6 + n * row_h), squeeze=False,
                             layout="constrained")
    im = None
    for r, ((img, cmap), heat, name) in enumerate(zip(shown, heats, titles, strict=True)):
        h, w = img.shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        left, right = axes[r]
        left.imshow(img, cmap=cmap, interpolation="nearest", extent=extent)
        left.set_title(name, fontsize=8, loc="left")
        right.imshow(img, cmap=cmap, interpolation="nearest", extent=extent)
        im = right.imshow(heat, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax,
                          interpolation="bilinear", extent=extent)
        right.set_title("anomaly map", fontsize=8, loc="left")
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    assert im is not None
    fig.colorbar(im, ax=axes[:, 1].tolist(), fraction=0.03, pad=0.02, label="patch score")
    save_figure(fig, path)


def worst_cases(scores: pd.DataFrame, threshold: float, k: int) -> tuple[list[str], list[str]]:
    """The worst misses and false alarms of the rule ``score >= threshold`` (test rows only).

    Args:
        scores: scores table (``image_id``, ``label``, ``score``; ``role`` filtered to test
            when present).
        threshold: decision threshold (e.g. the deployable one).
        k: at most this many of each.

    Returns:
        ``(fn_ids, fp_ids)``: the up to ``k`` faults scoring lowest below the threshold
        (ascending score), and the up to ``k`` goods scoring highest at or above it
        (descending score); ties broken by ``image_id``.
    """
    test = _test(scores)
    fault = _fault(test.label).astype(bool)
    s = test.score.to_numpy(np.float64)
    fn = test[fault & (s < threshold)].sort_values(["score", "image_id"], kind="stable")
    fp = test[~fault & (s >= threshold)].copy()
    fp["_neg"] = -fp.score
    fp = fp.sort_values(["_neg", "image_id"], kind="stable")
    k = max(0, int(k))
    return fn.image_id.astype(str).head(k).tolist(), fp.image_id.astype(str).head(k).tolist()


#: Colours of a hypothesis's claims in the forest plot.
CLAIM_COLORS = {"pooled": "#2ca02c", "condition_macro": "#9467bd", "cold": "#1f77b4",
                "warm": "#ff7f0e"}


def forest_plot(rows: list[dict], path: PathLike, title: str, margin: float = 0.0) -> None:
    """Deltas with their 95% intervals, one row each (a forest plot), top to bottom.

    Args:
        rows: ``[{"group": str, "claim": str, "delta": float | None, "ci95": [lo, hi] | None,
            "claimed": bool, "verdict": str, "single": [lo, hi] | None}]``; rows of one
            ``group`` (e.g. ``"C, budget 16"``) are drawn together, separated from the next
            by a line; ``claimed`` rows (what the hypothesis is about) get a filled marker and
            a bold label; ``single`` (optional) is a secondary interval (one reference draw),
            drawn thin and grey below the row; the verdict is written at the right. A row
            without a delta is listed as ``n/a``.
        path: output PNG path.
        title: figure title.
        margin: the verdict margin; dashed lines at +-margin when > 0 (0 always drawn).
    """
    n = max(1, len(rows))
    fig, ax = plt.subplots(figsize=(7.8, 1.3 + 0.3 * n))
    ax.axvline(0.0, color="0.35", lw=1.0)
    if margin > 0:
        for x in (-margin, margin):
            ax.axvline(x, color="0.5", lw=0.9, ls="--")
    labels, seen, has_single = [], set(), False
    finite = [0.0]
    for i, r in enumerate(rows):
        color = CLAIM_COLORS.get(r["claim"], f"C{i % 10}")
        delta, ci = r.get("delta"), r.get("ci95")
        labels.append(f"{r['group']} | {r['claim']}")
        if r.get("single"):
            lo, hi = r["single"]
            ax.plot([lo, hi], [i + 0.22] * 2, color="0.6", lw=1.0)
            finite += [lo, hi]
            has_single = True
        if delta is None or ci is None:
            ax.text(0.0, i, " n/a", va="center", fontsize=7, color="0.4")
            continue
        lo, hi = ci
        finite += [lo, hi, delta]
        label = r["claim"] if r["claim"] not in seen else None
        seen.add(r["claim"])
        ax.plot([lo, hi], [i, i], color=color, lw=2.2 if r.get("claimed") else 1.4)
        ax.plot([delta], [i], "o", color=color, ms=6 if r.get("claimed") else 5,
                mfc=color if r.get("claimed") else "white", mew=1.4, label=label, zorder=3)
        if r.get("verdict"):
            ax.annotate(r["verdict"], xy=(1.0, i), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=7,
                        color="k" if r.get("claimed") else "0.45")
    groups = [r["group"] for r in rows]
    for i in range(1, len(rows)):
        if groups[i] != groups[i - 1]:
            ax.axhline(i - 0.5, color="0.8", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7.5)
    for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
        if r.get("claimed"):
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5 if rows else 0.5, -0.6)
    span = max(abs(min(finite)), abs(max(finite)), margin, 1e-3) * 1.15
    ax.set_xlim(-span, span)
    if has_single:
        ax.plot([], [], color="0.6", lw=1.0, label="single draw (first seed)")
    ax.set(xlabel="delta (b - a), 95% interval (filled: the hypothesis's claim)", title=title)
    ax.grid(alpha=0.3, axis="x")
    bottom = 0.0
    if seen or has_single:
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=7,
                   frameon=False)
        bottom = 0.3 / fig.get_figheight()
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    save_figure(fig, path)


def example_maps_figure(rows: list[dict], path: PathLike, title: str) -> None:
    """Rows of example maps, one row per group (e.g. each validation recipe, then real
    faults), a red outline around each map's mask where it has one.

    Every map is shown on its own gray scale (cold and warm maps differ in level).

    Args:
        rows: ``[{"name": str, "maps": [(H, W) or (H, W, 3)], "masks": [(H, W) bool or
            None], "captions": [str]}]``; rows may hold different counts.
        path: output PNG path.
        title: figure title.

    Raises:
        ValueError: a row's lists differ in length, or no row holds a map.
    """
    for r in rows:
        if not len(r["maps"]) == len(r["masks"]) == len(r["captions"]):
            raise ValueError(f"row {r['name']!r}: maps, masks, captions differ in length")
    n_cols = max((len(r["maps"]) for r in rows), default=0)
    if n_cols == 0:
        raise ValueError("no maps to show")
    aspect = max(m.shape[0] / m.shape[1] for r in rows for m in r["maps"])
    fig, axes = plt.subplots(len(rows), n_cols,
                             figsize=(3.6 * n_cols, 0.7 + len(rows) * (3.6 * aspect + 0.55)),
                             squeeze=False, layout="constrained")
    for i, r in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r["maps"]):
                ax.set_axis_off()
                continue
            img, cmap = _display(r["maps"][j])
            ax.imshow(img, cmap=cmap, interpolation="nearest")
            mask = r["masks"][j]
            if mask is not None and np.asarray(mask).any():
                ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="red",
                           linewidths=0.7, alpha=0.8)
            ax.set_title(r["captions"][j], fontsize=7.5, loc="left")
            if j == 0:
                ax.set_ylabel(r["name"], fontsize=9)
    fig.suptitle(title)
    save_figure(fig, path)
