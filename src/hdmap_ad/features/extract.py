"""Patch features from a timm backbone: one forward pass per batch, every layer at once.

Layers are named by timm's ``feature_info`` module names (``blocks.8`` for a ViT,
``blocks.2``/``blocks.4`` for an EfficientNet, ``layer2`` for a ResNet). timm's
``forward_intermediates`` numbers its outputs by position in ``feature_info``, not by block:
for an EfficientNet index 2 is ``blocks.2`` and index 3 is ``blocks.4`` (the stage ends), and
index 0 of a ResNet is ``act1``. ViT token outputs come back as ``(N, C, gh, gw)`` maps with
the prefix (CLS and register) tokens dropped.

Each layer map is then locally averaged (``AvgPool2d(k, 1, k // 2)``, zero padding counted,
as anomalib's PatchCore does) and stored channels last, ``(N, gh, gw, C)``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hdmap_ad.data.maps import read_map
from hdmap_ad.errors import InputError
from hdmap_ad.features.cache import (
    FeatureWriter,
    open_feature_writer,
)
from hdmap_ad.features.preprocess import Triple, norm_stats, preprocess
from hdmap_ad.features.weights import WeightsInfo, load_backbone
from hdmap_ad.specs import BackboneConfig, check_int

CACHE_FORMAT_VERSION = 1


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", type(model).__name__))


def feature_layer_names(model: nn.Module) -> list[str]:
    """timm ``feature_info`` module names, in ``forward_intermediates`` index order."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise InputError(
            f"{_model_name(model)}: timm model without feature_info/forward_intermediates; "
            "choose a backbone that supports timm's forward_intermediates"
        )
    return [str(entry["module"]) for entry in info]


def layer_indices(
    model: nn.Module, layers: Sequence[str], where: str | None = None
) -> list[int]:
    """``forward_intermediates`` indices of ``layers`` (their positions in ``feature_info``).

    ``where`` names the params key in the error (``backbones.lite2.layers``); default: the
    model's name.

    Raises:
        InputError: a name that is not a feature layer; the message lists the valid ones.
    """
    names = feature_layer_names(model)
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        raise InputError(
            f"{where or _model_name(model)}: unknown layer(s) {unknown} for "
            f"{_model_name(model)}; valid layer names: {names}"
        )
    return [names.index(layer) for layer in layers]


def pool_patches(feats: torch.Tensor, patch_pool: int) -> torch.Tensor:
    """PatchCore's local neighbourhood average over ``(N, C, gh, gw)``; shape is kept.

    ``patch_pool`` k > 1 is ``AvgPool2d(k, stride=1, padding=k // 2)`` with zero padding
    counted (anomalib's choice: border patches are damped); 1 returns ``feats`` unchanged.
    """
    if patch_pool < 1 or patch_pool % 2 == 0:
        raise InputError(f"patch_pool: must be an odd integer >= 1, got {patch_pool}")
    if patch_pool == 1:
        return feats
    return F.avg_pool2d(feats, patch_pool, stride=1, padding=patch_pool // 2)


def precision(device: str, autocast_cuda: bool) -> str:
    """``bf16-autocast`` for a CUDA forward pass with autocast on, else ``float32``."""
    return "bf16-autocast" if torch.device(device).type == "cuda" and autocast_cuda else "float32"


def extract_batch(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str], patch_pool: int,
    autocast_cuda: bool = True,
) -> dict[str, np.ndarray]:
    """Features of every layer in one forward pass.

    Args:
        model: a timm model with ``forward_intermediates``, in eval mode.
        x: float32 ``(N, 3, S, S)`` preprocessed input (moved to the model's device).
        layers: ``feature_info`` module names.
        patch_pool: odd local-average size (1 = none).
        autocast_cuda: on a CUDA model, run the forward pass under bf16 autocast (pooling
            and the returned features are float32 either way).

    Returns:
        ``{layer: float32 (N, gh, gw, C)}`` on the CPU, channels last.
    """
    indices = layer_indices(model, layers)
    wanted = sorted(set(indices))
    device = next(model.parameters()).device
    channels = [int(entry["num_chs"]) for entry in model.feature_info]
    use_bf16 = precision(str(device), autocast_cuda) == "bf16-autocast"
    with torch.inference_mode():
        x = x.to(device).contiguous(memory_format=torch.channels_last)  # see load_backbone
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outs = model.forward_intermediates(
                x, indices=wanted, intermediates_only=True, stop_early=True
            )
        by_index = dict(zip(wanted, outs, strict=True))
        result: dict[str, np.ndarray] = {}
        for layer, index in zip(layers, indices, strict=True):
            feats = by_index[index]
            if feats.ndim != 4 or feats.shape[1] != channels[index]:
                raise RuntimeError(
                    f"{_model_name(model)} {layer}: forward_intermediates gave {tuple(feats.shape)}"
                    f", expected (N, {channels[index]}, gh, gw)"
                )
            pooled = pool_patches(feats.float(), patch_pool)
            result[layer] = pooled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return result


def _versions() -> dict[str, str]:
    """Versions of the libraries that shape the features."""
    out = {
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "timm": timm.__version__,
        "torch": torch.__version__,
    }
    try:
        out["hdmap_ad"] = version("hdmap-ad")
    except PackageNotFoundError:
        out["hdmap_ad"] = "unknown"
    return out


def cache_metadata(
    cfg: BackboneConfig,
    info: WeightsInfo,
    layer: str,
    feature_shape: tuple[int, ...],
    mean: Triple,
    std: Triple,
    map_shape: tuple[int, ...],
    device: str,
) -> dict[str, Any]:
    """What a cache file records about how its features were made (no timestamps).

    Args:
        feature_shape: ``(gh, gw, C)`` of one row.
        map_shape: shape of one input map, ``(H, W)`` or ``(H, W, 3)``.
    """
    weights = {**info.to_dict(), "layout": cfg.weights.layout, "package": cfg.weights.package}
    if cfg.weights.source == "random":
        weights["seed"] = cfg.weights.seed
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "backbone": cfg.key,
        "model": cfg.model,
        "layer": layer,
        "weights": weights,
        "input_size": cfg.input_size,
        "resize": cfg.resize,
        "mean": list(mean),
        "std": list(std),
        "patch_pool": cfg.patch_pool,
        "grid": [int(feature_shape[0]), int(feature_shape[1])],
        "channels": int(feature_shape[2]),
        "map_shape": [int(s) for s in map_shape],
        "batch_size": cfg.batch_size,
        "device": torch.device(device).type,
        "precision": precision(device, cfg.autocast_cuda),
        "versions": _versions(),
    }


def read_batch(
    items: Sequence[tuple[str, str]], expected: tuple[tuple[int, ...], str] | None
) -> tuple[list[np.ndarray], tuple[tuple[int, ...], str]]:
    """Read maps.

    Sizes may differ (folder datasets with images of several sizes; the manifest refuses
    them for HDMAP layouts): every map is resized to the backbone's input on its own.

    Args:
        items: ``(image_id, path)`` pairs.
        expected: ``(shape, path)`` of the first map seen so far, or None.

    Returns:
        float32 maps ``(H, W)`` or ``(H, W, 3)``, and the first map's ``(shape, path)``.
    """
    maps = [read_map(path) for _, path in items]
    if expected is None and maps:
        expected = (maps[0].shape, str(items[0][1]))
    assert expected is not None
    return maps, expected


def check_own_size(maps: Sequence[np.ndarray], chunk: Sequence[tuple[str, str]],
                   expected: tuple[tuple[int, ...], str]) -> None:
    """With ``resize: none`` each map keeps its own size, and one cache holds one patch grid:
    refuse a map whose ``H x W`` differs from the first map's, naming both."""
    shape, first = expected
    for m, (_, path) in zip(maps, chunk, strict=True):
        if m.shape[:2] != shape[:2]:
            raise InputError(
                f"{path}: map size {m.shape[:2]} differs from {tuple(shape[:2])} of {first}; "
                "with resize 'none' (no input_size) every map keeps its own size and all must "
                "match: set input_size (resize: aspect-pad keeps the aspect)")


def preprocess_maps(maps: list[np.ndarray], cfg: BackboneConfig, mean: Triple,
                    std: Triple) -> torch.Tensor:
    """Backbone input ``(n, 3, S, S)`` (``resize: none``: ``(n, 3, H, W)``, one size, see
    :func:`check_own_size`) of maps that may differ in size or channels: one
    batched resize where they all match (the common case), else one resize per map (the
    same numbers per map either way)."""
    if len({m.shape for m in maps}) == 1:
        return preprocess(np.stack(maps), cfg, mean, std)
    return torch.cat([preprocess(m[None], cfg, mean, std) for m in maps])


def check_finite(feats: Mapping[str, np.ndarray], chunk: Sequence[tuple[str, str]]) -> None:
    """Refuse non-finite features, naming the first map that produced them: a finite but
    extreme map value (1e30) overflows inside the backbone; the cache must never hold NaN."""
    for layer, arr in feats.items():
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if bad.any():
            path = chunk[int(np.flatnonzero(bad)[0])][1]
            raise InputError(
                f"{path}: its {layer} features are NaN or Inf (map values too large for the "
                f"backbone? max |value| {float(np.abs(read_map(path)).max()):.4g}); fix or "
                "remove the map")


def _check_items(items: Sequence[tuple[str, str]], out_paths: Mapping[str, str]) -> None:
    where = next(iter(out_paths.values()), "feature cache")
    if not items:
        raise InputError(f"{where}: no maps to extract features from")
    seen: set[str] = set()
    for image_id, path in items:
        if image_id in seen:
            raise InputError(f"{path}: duplicate image id {image_id!r}")
        seen.add(image_id)


def extract_to_cache(
    items: list[tuple[str, str]],
    cfg: BackboneConfig,
    out_paths: dict[str, str],
    device: str = "cpu",
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Extract every layer in ``out_paths`` for ``items`` and write one cache file per layer.

    ``provenance`` (e.g. the data hash of the maps) is added to every file's metadata.

    Maps are read and processed in batches of ``cfg.batch_size`` (one forward pass each) and
    streamed to the files one row group per batch; each file appears atomically at the end.
    The same items and config give byte-identical files.

    Args:
        items: ``(image_id, map path)`` pairs, in the row order of the files.
        cfg: the backbone, its weights and preprocessing.
        out_paths: ``{layer: parquet path}``; layers are ``feature_info`` module names.
        device: torch device.
        progress: show a progress bar (stderr, maps/s).

    Raises:
        InputError: no items, duplicate ids, unreadable maps, maps of different shapes,
            unknown layers or unusable weights.
    """
    _check_items(items, out_paths)
    # a config built without from_dict: range() with a step < 1 would extract nothing
    check_int(cfg.batch_size, f"backbones.{cfg.key}.batch_size", minimum=1)
    model, info = load_backbone(cfg, device)
    layers = list(out_paths)
    # unknown layers fail before any map is read or any file is opened
    layer_indices(model, layers, f"backbones.{cfg.key}.layers")
    mean, std = norm_stats(cfg, model)
    expected: tuple[tuple[int, ...], str] | None = None
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(
                total=len(items),
                unit="maps",
                desc=f"{cfg.key} features",
                file=sys.stderr,
                disable=not progress,
            )
        )
        writers: dict[str, FeatureWriter] = {}
        for start in range(0, len(items), cfg.batch_size):
            chunk = items[start : start + cfg.batch_size]
            maps, expected = read_batch(chunk, expected)
            if cfg.resize == "none":
                check_own_size(maps, chunk, expected)
            feats = extract_batch(model, preprocess_maps(maps, cfg, mean, std), layers,
                                  cfg.patch_pool, cfg.autocast_cuda)
            if not writers:
                for layer in layers:
                    shape = tuple(feats[layer].shape[1:])
                    meta = cache_metadata(
                        cfg, info, layer, shape, mean, std, maps[0].shape, device
                    ) | (provenance or {})
                    writers[layer] = stack.enter_context(
                        open_feature_writer(Path(out_paths[layer]), shape, meta)
                    )
            ids = [image_id for image_id, _ in chunk]
            check_finite(feats, chunk)  # before anything of this batch is cached
            for layer in layers:
                writers[layer].write(ids, feats[layer])
            bar.update(len(chunk))
