"""Reading one map from disk, with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from hdmap_ad.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", *TIFF_SUFFIXES)


def read_map(path: str | Path) -> np.ndarray:
    """Read a map as float32 ``(H, W)`` (single channel) or ``(H, W, 3)`` (RGB images).

    See :func:`read_map_raw` for the scaling rule and the checks.
    """
    return read_map_raw(path)[0]


def read_map_raw(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a map as float32, and the dtype it was stored with.

    Scaling rule: floating-point files (HDMAP: float32 31x95, values may exceed 1) are taken
    as stored; **integer** files of any width, signed or not (uint8/uint16 PNGs, int16 or
    uint16 TIFFs) are divided by their dtype's maximum (255, 65535, 32767 ...), so they land in
    [0, 1]. The manifest checks that every map of a domain has the same stored dtype.
    Raises :class:`InputError` naming the file for unreadable data, boolean images, NaN/Inf or
    negative values.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a map file")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as img:
                img = img.convert("RGB") if img.mode not in ("L", "I;16", "F") else img
                arr = np.asarray(img)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:  # corrupt or not an image: one clear line, no traceback
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the library says
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {detail})") from None
    stored = str(arr.dtype)
    if arr.dtype == np.bool_:
        raise InputError(f"{path}: boolean image; expected intensities (float or integer)")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InputError(f"{path}: expected a 2-D map or an RGB image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN or Inf values")
    if (arr < 0).any():
        raise InputError(f"{path}: contains negative values (min {float(arr.min()):.4g})")
    return arr, stored
