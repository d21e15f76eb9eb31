"""Pixel-level anomaly maps and localisation metrics (pixel AUROC, PRO / AUPRO).

Shapes: ``gh, gw`` is the patch-score grid of one image (e.g. 33 x 33), ``H, W`` the image
(mask) size, ``N`` the number of images. Masks are boolean (``True`` = defect); any nonzero
value is taken as defect, so MVTec-style 0/255 masks may be passed as they are. Good images
without a mask file should be given all-``False`` masks: they contribute normal pixels only.

Choices, following the MVTec AD evaluation code (Bergmann et al.) and anomalib:

- Blur: scipy ``gaussian_filter(sigma, truncate=4.0, mode="mirror")``. The radius
  ``int(4.0 * sigma + 0.5)`` gives anomalib's ``GaussianBlur2d`` kernel size
  ``2 * int(4.0 * sigma + 0.5) + 1`` (33 for sigma 4) and the same normalised sampled
  gaussian; scipy's ``"mirror"`` is torch's ``F.pad(mode="reflect")`` (the edge pixel is not
  repeated), which is what anomalib pads with. (scipy's own ``"reflect"`` repeats the edge
  pixel and differs from anomalib only within ``radius`` pixels of the border.)
- Regions: connected components of each mask with 8-connectivity (3 x 3 ones structure, as
  ``scipy.ndimage.label`` in the MVTec AD evaluation code; ``connectivity=4`` is available).
- Thresholds: a pixel is predicted anomalous when ``map >= t``. By default every distinct
  map value is a threshold (exact curve); with ``num_thresholds`` the thresholds are that many
  quantiles of all map values (approximate, coarser curve).
- Curve: points ``(FPR, PRO)`` for thresholds from high to low, starting at ``(0, 0)`` and
  ending at ``(1, 1)``; the area is taken with the trapezoid rule up to ``max_fpr``, with the
  PRO at ``max_fpr`` linearly interpolated between the two enclosing points, and divided by
  ``max_fpr`` so that a perfect detector scores 1.0.

``progress=True`` shows a bar (maps/s) on stderr for each pass over the maps (masks and
anomaly maps, then the defect regions), refreshed at most every 2 s so logs stay short; the
results are the same either way.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

__all__ = ["anomaly_map", "pixel_auroc", "pro_curve", "pro_score", "pixel_metrics"]

ANOMALY_MAP_CHUNK = 64  # maps per anomaly-map call in masked_pixel_metrics (bar steps)


def anomaly_map(patch_scores: np.ndarray, size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """Upsample patch scores to image size and smooth them, as anomalib's PatchCore does.

    Bilinear upsampling (``F.interpolate(mode="bilinear", align_corners=False)``) to ``size``,
    then a gaussian blur of standard deviation ``sigma`` pixels (kernel size
    ``2 * int(4.0 * sigma + 0.5) + 1``, mirror / torch-"reflect" borders), applied to each
    image on its own (never across the batch axis).

    Args:
        patch_scores: ``(gh, gw)`` or batched ``(N, gh, gw)`` patch-score grid(s).
        size: output ``(H, W)``.
        sigma: gaussian standard deviation in output pixels; ``0`` disables the blur.

    Returns:
        float32 ``(H, W)`` for a 2-D input, ``(N, H, W)`` for a 3-D one.
    """
    scores = np.asarray(patch_scores, dtype=np.float32)
    if scores.ndim not in (2, 3):
        raise ValueError(f"patch_scores must be (gh, gw) or (N, gh, gw), got {scores.shape}")
    single = scores.ndim == 2
    batch = scores[None] if single else scores
    h, w = (int(s) for s in size)
    import torch  # here, not at the top: a metrics step without pixel masks needs no torch
    import torch.nn.functional as F  # noqa: N812

    t = torch.from_numpy(np.require(batch, requirements=["C", "W"]))[:, None]  # (N, 1, gh, gw)
    with torch.no_grad():
        up = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    out = up[:, 0].numpy()  # (N, H, W) float32
    if sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=(0.0, sigma, sigma), mode="mirror", truncate=4.0)
    out = out.astype(np.float32, copy=False)
    return out[0] if single else out


def _as_maps_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and view ``maps`` / ``masks`` as ``(N, H, W)`` float / bool arrays."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    if maps.ndim == 2:
        maps, masks = maps[None], masks[None]
    if maps.ndim != 3:
        raise ValueError(f"maps and masks must be (H, W) or (N, H, W), got {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)
    if masks.dtype != bool:
        masks = masks != 0
    return maps, masks


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images (sklearn ``roc_auc_score``).

    Exact: every pixel of every image is one sample. The inputs are flattened as views (no
    copy for contiguous arrays); sklearn then sorts them, which costs about 20-30 bytes per
    pixel (an int64 argsort, sorted copies, cumulative counts): ~2-3 GB for 100 images of
    1024 x 1024, ~0.2 GB for 100 images of 256 x 256.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``) anomaly maps, higher = more anomalous.
        masks: same shape, bool (nonzero = defect).

    Returns:
        The AUROC in [0, 1].

    Raises:
        ValueError: shapes differ, or the masks hold only one class.
    """
    maps, masks = _as_maps_masks(maps, masks)
    y = masks.reshape(-1)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("pixel AUROC needs both defect and normal pixels")
    return float(roc_auc_score(y, maps.reshape(-1)))


def pro_curve(
    maps: np.ndarray,
    masks: np.ndarray,
    num_thresholds: int | None = None,
    connectivity: int = 8,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: PRO against the false-positive rate.

    For a threshold ``t`` (prediction ``map >= t``): FPR = fraction of all normal pixels
    (``mask == 0``, over all images) that are predicted; PRO = mean over all defect regions
    (connected components of each image's mask, pooled over images) of the fraction of the
    region's pixels that are predicted, so every region counts the same however large.

    Memory: one sorted copy of the normal pixel values (the map dtype) plus the defect pixel
    values and float64 weights; with ``num_thresholds`` also a quantile pass over all values.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``) anomaly maps, higher = more anomalous.
        masks: same shape, bool (nonzero = defect).
        num_thresholds: ``None`` for every distinct map value (exact), else that many
            quantiles (0 to 1, evenly spaced) of all map values.
        connectivity: 8 (3 x 3 ones structure, MVTec reference) or 4.
        progress: a bar over the maps (region labelling) on stderr.

    Returns:
        ``(fpr, pro)``, float64 1-D arrays of equal length, thresholds from high to low: both
        nondecreasing, starting with ``(0, 0)`` and ending with ``(1, 1)``.

    Raises:
        ValueError: shapes differ, no defect region, or no normal pixel.
    """
    maps, masks = _as_maps_masks(maps, masks)
    if connectivity == 8:
        structure = np.ones((3, 3), dtype=bool)
    elif connectivity == 4:
        structure = ndimage.generate_binary_structure(2, 1)
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")

    values, weights = [], []
    n_regions = 0
    bar = tqdm(total=len(maps), unit="map", desc="PRO regions", disable=not progress,
               mininterval=2.0)
    for m, mask in zip(maps, masks, strict=True):
        bar.update(1)
        if not mask.any():
            continue
        labels, n = ndimage.label(mask, structure=structure)
        lab = labels[mask]  # 1..n, the region of each defect pixel
        sizes = np.bincount(lab, minlength=n + 1)
        values.append(m[mask])
        weights.append(1.0 / sizes[lab])  # each region's pixels sum to 1
        n_regions += n
    bar.close()
    if n_regions == 0:
        raise ValueError("PRO needs at least one defect region (all masks are empty)")

    normal = np.sort(maps[~masks], kind="stable")
    n_normal = normal.size
    if n_normal == 0:
        raise ValueError("PRO needs normal pixels to compute the false-positive rate")
    dval = np.concatenate(values)
    order = np.argsort(dval, kind="stable")
    dval = dval[order]
    # cumulative region weight of the defect pixels below each position, ascending values
    cum_w = np.concatenate([[0.0], np.cumsum(np.concatenate(weights)[order])])

    if num_thresholds is None:
        thr = np.union1d(normal, dval)[::-1]
    else:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        q = np.linspace(0.0, 1.0, int(num_thresholds))
        thr = np.unique(np.quantile(maps, q).astype(maps.dtype))[::-1]
        # the quantile at 0 is the minimum, so the last point is (1, 1)

    fp = n_normal - np.searchsorted(normal, thr, side="left")
    covered = cum_w[-1] - cum_w[np.searchsorted(dval, thr, side="left")]
    fpr = np.concatenate([[0.0], fp / n_normal])
    pro = np.concatenate([[0.0], np.clip(covered / n_regions, 0.0, 1.0)])
    pro[-1] = 1.0  # lowest threshold is the minimum: all pixels predicted (no rounding drift)
    return fpr, pro


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x <= x_max``; ``x`` nondecreasing, ``x[-1] >= x_max``.

    The curve is linearly interpolated at ``x_max`` between its two enclosing points.
    """
    k = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:k], y[:k]
    if xs[-1] < x_max:
        x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
        yb = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, yb)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def pro_score(
    maps: np.ndarray,
    masks: np.ndarray,
    max_fpr: float = 0.3,
    num_thresholds: int | None = None,
    connectivity: int = 8,
    progress: bool = False,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (AUPRO).

    See :func:`pro_curve` for the curve. The area under ``(FPR, PRO)`` for FPR in
    ``[0, max_fpr]`` (trapezoid rule, PRO linearly interpolated at ``max_fpr``) is divided
    by ``max_fpr``: 1.0 for a perfect detector, about ``max_fpr / 2`` for a random one.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``) anomaly maps, higher = more anomalous.
        masks: same shape, bool (nonzero = defect); images without defect contribute
            normal pixels only.
        max_fpr: integration limit in (0, 1]; 0.3 as in MVTec AD.
        num_thresholds: ``None`` for the exact curve, else that many quantile thresholds.
        connectivity: 8 (MVTec reference) or 4.
        progress: a bar over the maps on stderr (see :func:`pro_curve`).

    Returns:
        The normalised area in [0, 1].

    Raises:
        ValueError: bad ``max_fpr``, shapes differ, no defect region, or no normal pixel.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(maps, masks, num_thresholds=num_thresholds, connectivity=connectivity,
                         progress=progress)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def pixel_metrics(maps: np.ndarray, masks: np.ndarray,
                  progress: bool = False) -> dict[str, float | None]:
    """Pixel AUROC and PRO (up to FPR 0.3) of a set of maps.

    Args:
        maps: ``(N, H, W)`` anomaly maps.
        masks: ``(N, H, W)`` bool (nonzero = defect).
        progress: a bar over the maps on stderr (PRO's region pass).

    Returns:
        ``{"pixel_auroc": ..., "pro": ...}``; both ``None`` when the masks have no defect
        pixel (or no normal pixel), since neither metric is defined then.
    """
    maps, masks = _as_maps_masks(maps, masks)
    n_pos = int(np.count_nonzero(masks))
    if n_pos == 0 or n_pos == masks.size:
        return {"pixel_auroc": None, "pro": None}
    return {"pixel_auroc": pixel_auroc(maps, masks),
            "pro": pro_score(maps, masks, 0.3, progress=progress)}


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as ``(H, W)`` bool; it must match the image ``shape``."""
    from PIL import Image

    from hdmap_ad.errors import InputError

    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except Exception as exc:
        raise InputError(f"{path}: cannot read mask ({type(exc).__name__}: {exc})") from None
    if mask.shape != tuple(shape):
        raise InputError(f"{path}: mask shape {mask.shape} differs from its image {shape}")
    return mask


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (identity when the shape already matches)."""
    if mask.shape == tuple(shape):
        return mask
    import torch
    import torch.nn.functional as F  # noqa: N812

    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(x) for x in shape), mode="nearest-exact")[0, 0] \
        .numpy() > 0.5


def masked_pixel_metrics(
    patch_scores: np.ndarray, mask_paths: list[str], is_good: np.ndarray,
    image_shape: tuple[int, int], own_shapes: list[tuple[int, int]] | None = None,
    progress: bool = False,
) -> dict[str, float | None] | None:
    """Pixel AUROC and PRO of scored test maps, or None where any defect lacks a mask.

    Args:
        patch_scores: ``(N, gh, gw)`` patch-score grids.
        mask_paths: ``N`` mask files (``""`` for good maps, which count as all normal).
        is_good: ``(N,)`` bool.
        image_shape: ``(H, W)`` the anomaly maps are upsampled to (gaussian sigma 4).
        own_shapes: each map's own ``(H, W)`` where sizes differ (folder datasets): its mask
            must have that shape and is resized (nearest) to ``image_shape``.
        progress: bars (maps/s) on stderr: masks and anomaly maps, then PRO's regions.
    """
    if not any(mask_paths) or any(not m for m, g in zip(mask_paths, is_good, strict=True)
                                  if not g):
        return None
    own = own_shapes or [tuple(image_shape)] * len(mask_paths)
    patch_scores = np.asarray(patch_scores)
    n = len(mask_paths)
    masks = np.zeros((n, *image_shape), dtype=bool)
    maps = np.empty((n, *image_shape), dtype=np.float32)
    bar = tqdm(total=n, unit="map", desc="pixel maps", disable=not progress, mininterval=2.0)
    # chunks only pace the bar: upsampling and blur act on each map alone (same numbers)
    for start in range(0, n, ANOMALY_MAP_CHUNK):
        stop = min(start + ANOMALY_MAP_CHUNK, n)
        for i in range(start, stop):
            if not is_good[i]:
                masks[i] = _resize_mask(read_mask(mask_paths[i], own[i]), image_shape)
        maps[start:stop] = anomaly_map(patch_scores[start:stop], image_shape)
        bar.update(stop - start)
    bar.close()
    return pixel_metrics(maps, masks, progress=progress)
