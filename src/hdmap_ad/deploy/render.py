"""Anomaly-map images and patch locations, shared by ``predict`` and the web app.

Shapes: a map is ``(H, W)`` float (HDMAP: 31 x 95) or ``(H, W, 3)``; a patch-score grid is
``(gh, gw)``; an anomaly map is the grid upsampled to ``(H, W)`` and smoothed
(:func:`hdmap_ad.metrics.pixel.anomaly_map`, gaussian sigma 4, as the metrics and anomalib).
"""

from __future__ import annotations

import io

import numpy as np


def _input_extent(map_shape: tuple[int, ...], input_size: int | None,
                  resize: str) -> tuple[int, int]:
    """``(height, width)`` of the backbone's input: ``input_size`` squared, or the map's own
    with ``resize: none`` (``input_size`` None)."""
    if resize == "none":
        return int(map_shape[0]), int(map_shape[1])
    assert input_size is not None
    return int(input_size), int(input_size)


def _input_to_map(ys: np.ndarray, xs: np.ndarray, map_shape: tuple[int, ...],
                  input_size: int | None, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """Backbone-input pixel coordinates -> map pixel coordinates (continuous).

    The backbone sees the map resized to ``input_size`` squared: stretched (``nearest``,
    ``bilinear``) or scaled with its aspect kept and zero-padded to a centred square
    (``aspect-pad``); or the map itself (``none``).
    """
    h, w = int(map_shape[0]), int(map_shape[1])
    if resize == "aspect-pad":
        assert input_size is not None
        scale = input_size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (input_size - new_h) // 2, (input_size - new_w) // 2
        return (ys - top) * h / new_h, (xs - left) * w / new_w
    ih, iw = _input_extent(map_shape, input_size, resize)
    return ys * h / ih, xs * w / iw


def patch_center(row: int, col: int, grid: tuple[int, int], map_shape: tuple[int, ...],
                 input_size: int | None, resize: str) -> tuple[int, int]:
    """Pixel ``(y, x)`` of the map under the centre of patch ``(row, col)``: each patch of
    the ``(gh, gw)`` grid covers an equal share of the backbone's input (``input_size`` None
    with ``resize: none``: the map itself)."""
    gh, gw = grid
    ih, iw = _input_extent(map_shape, input_size, resize)
    y, x = _input_to_map(np.array([(row + 0.5) * ih / gh]),
                         np.array([(col + 0.5) * iw / gw]), map_shape, input_size,
                         resize)
    h, w = int(map_shape[0]), int(map_shape[1])
    return int(np.clip(np.floor(y[0]), 0, h - 1)), int(np.clip(np.floor(x[0]), 0, w - 1))


def worst_patch(patch_scores: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the highest score in a ``(gh, gw)`` grid (first one on ties)."""
    r, c = np.unravel_index(int(np.argmax(patch_scores)), patch_scores.shape)
    return int(r), int(c)


def _gray(img: np.ndarray, gray_range: tuple[float, float] | None = None) -> np.ndarray:
    """``(H, W)`` in [0, 1]: an RGB image averaged, then scaled by ``gray_range`` (default:
    its own min and max), clipped."""
    g = np.asarray(img, dtype=np.float64)
    if g.ndim == 3:
        g = g.mean(axis=-1)
    lo, hi = gray_range if gray_range is not None else (float(g.min()), float(g.max()))
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(g)


def overlay_rgb(img: np.ndarray, heat: np.ndarray | None, vmin: float, vmax: float,
                alpha: float = 0.5, scale: int = 4,
                gray_range: tuple[float, float] | None = None) -> np.ndarray:
    """The map in gray with the anomaly map (jet colours, ``vmin..vmax``) blended over it.

    Args:
        img: ``(H, W)`` or ``(H, W, 3)`` map.
        heat: ``(H, W)`` anomaly map, or None for the map alone.
        vmin, vmax: colour range of ``heat`` (values outside are clipped).
        alpha: weight of the colours.
        scale: integer upscaling (nearest) so that small maps stay visible.
        gray_range: map values shown black and white (default: the map's min and max).

    Returns:
        uint8 ``(H * scale, W * scale, 3)``.
    """
    from matplotlib import colormaps

    base = np.repeat(_gray(img, gray_range)[..., None], 3, axis=-1)
    if heat is not None:
        span = vmax - vmin if vmax > vmin else 1.0
        colours = colormaps["jet"](np.clip((np.asarray(heat) - vmin) / span, 0.0, 1.0))[..., :3]
        base = (1.0 - alpha) * base + alpha * colours
    out = np.clip(np.round(base * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of a uint8 ``(H, W, 3)`` image (no timestamps: equal input, equal bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def patch_box(row: int, col: int, grid: tuple[int, int], map_shape: tuple[int, ...],
              input_size: int | None, resize: str) -> tuple[int, int, int, int]:
    """Map pixels ``(y0, x0, y1, x1)`` (ends exclusive) under patch ``(row, col)`` of the grid
    (see :func:`patch_center` for the geometry)."""
    h, w = int(map_shape[0]), int(map_shape[1])
    gh, gw = grid
    ih, iw = _input_extent(map_shape, input_size, resize)
    ys, xs = _input_to_map(np.array([row, row + 1]) * ih / gh,
                           np.array([col, col + 1]) * iw / gw, map_shape, input_size,
                           resize)
    y0, y1 = int(np.clip(np.floor(ys[0]), 0, h - 1)), int(np.clip(np.ceil(ys[1]), 1, h))
    x0, x1 = int(np.clip(np.floor(xs[0]), 0, w - 1)), int(np.clip(np.ceil(xs[1]), 1, w))
    return y0, x0, max(y1, y0 + 1), max(x1, x0 + 1)


def draw_box(rgb: np.ndarray, box: tuple[int, int, int, int], scale: int,
             color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of the upscaled image ``rgb`` with the outline of map box ``(y0, x0, y1, x1)``."""
    out = rgb.copy()
    y0, x0, y1, x1 = (v * scale for v in box)
    y1, x1 = min(y1, out.shape[0]) - 1, min(x1, out.shape[1]) - 1
    out[y0, x0 : x1 + 1] = color
    out[y1, x0 : x1 + 1] = color
    out[y0 : y1 + 1, x0] = color
    out[y0 : y1 + 1, x1] = color
    return out
