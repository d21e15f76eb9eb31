"""Turn maps into normalised backbone inputs.

HDMAP maps are 31 x 95 single-channel float32; backbones want ``(N, 3, S, S)``. The channel is
repeated three times, the map resized (``nearest`` | ``bilinear`` | ``aspect-pad``; ``none``
keeps its own ``H x W``, e.g. for the ``raw`` backbone) and every channel normalised with the
backbone's mean and std. Values above 1 are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hdmap_ad.specs import BackboneConfig

Triple = tuple[float, float, float]


def norm_stats(cfg: BackboneConfig, model: nn.Module) -> tuple[Triple, Triple]:
    """Per-channel (mean, std): ``cfg.mean``/``cfg.std`` if set, else the model's pretrained cfg.

    timm's pretrained cfg says ImageNet statistics for most models and 0.5/0.5 for the
    ``tf_efficientnet_lite*`` family.
    """
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.mean if cfg.mean is not None else pretrained.get("mean", (0.485, 0.456, 0.406))
    std = cfg.std if cfg.std is not None else pretrained.get("std", (0.229, 0.224, 0.225))
    return _triple(mean), _triple(std)


def _triple(values: Sequence[float]) -> Triple:
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"expected 1 or 3 per-channel values, got {vals}")
    return vals  # type: ignore[return-value]


def to_nchw(maps: np.ndarray) -> torch.Tensor:
    """``(N, H, W)`` maps -> ``(N, 3, H, W)`` (channel repeated); ``(N, H, W, 3)`` -> NCHW."""
    if maps.ndim == 3:
        x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        return x.unsqueeze(1).expand(-1, 3, -1, -1)
    if maps.ndim == 4 and maps.shape[-1] == 3:
        return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).permute(0, 3, 1, 2)
    raise ValueError(f"expected maps of shape (N, H, W) or (N, H, W, 3), got {maps.shape}")


def resize(x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)`` (``none``: unchanged).

    Args:
        x: float32 images.
        size: output side in pixels (None with ``none``).
        mode: ``nearest`` (centre-aligned, torch ``nearest-exact``), ``bilinear``
            (``align_corners=False``, no antialiasing), ``aspect-pad`` (bilinear so the
            long side is ``size``, aspect ratio kept, then zero-padded to a centred square),
            or ``none`` (the map's own size: ``x`` itself).
    """
    if mode == "none":
        return x
    if size is None:
        raise ValueError(f"resize mode {mode!r} needs an input size")
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    if mode == "bilinear":
        return F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
    if mode == "aspect-pad":
        h, w = x.shape[-2:]
        scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
        )
        top, left = (size - new_h) // 2, (size - new_w) // 2
        return F.pad(x, (left, size - new_w - left, top, size - new_h - top), value=0.0)
    raise ValueError(f"unknown resize mode {mode!r}; expected nearest, bilinear, aspect-pad "
                     "or none")


def preprocess(
    maps: np.ndarray, cfg: BackboneConfig, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Maps -> normalised backbone input.

    Args:
        maps: float32 ``(N, H, W)`` single-channel maps or ``(N, H, W, 3)`` RGB images.
        cfg: gives ``input_size`` (S) and ``resize`` mode.
        mean: per-channel mean (3 values), subtracted after resizing and padding.
        std: per-channel std (3 values).

    Returns:
        float32 tensor ``(N, 3, S, S)`` (``resize: none``: ``(N, 3, H, W)``) on the CPU:
        ``(resized - mean) / std``; aspect-pad padding is 0 before normalisation, so
        ``-mean / std`` after.
    """
    x = resize(to_nchw(maps), cfg.input_size, cfg.resize)
    mean_t = torch.tensor(_triple(mean), dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(_triple(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).contiguous()
