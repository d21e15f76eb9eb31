"""Patch descriptors built from cached layer maps, applied identically to bank and queries.

Multi-layer features follow PatchCore: every coarser grid is upsampled bilinearly to the
finest grid and the channels are concatenated.

An experiment with ``input_map`` (a ``raw`` backbone's cache) also carries the map itself, for
methods whose network reads the image (STFPM's student): the map is resized the way the
backbone resized it for the teacher, to ``r`` times the descriptor grid (``r = ceil(input_size
/ grid)``), and folded onto the grid by pixel unshuffle, so each patch gets the ``c * r * r``
pixels under it as extra channels after the teacher's (:func:`append_input_map`; lossless:
``pixel_shuffle`` gives the resized map back). Every consumer (gates, folds, scoring) keeps
seeing one ``(N, H, W, D)`` array; :attr:`DescriptorSource.layout` says which channels are which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.features.context import ContextConfig, apply_context, project_channels


def combine_layers(layer_maps: list[np.ndarray]) -> np.ndarray:
    """Concatenate layer maps on the finest grid.

    Args:
        layer_maps: arrays ``(N, h_i, w_i, C_i)`` float32, one per layer, same ``N``.

    Returns:
        ``(N, H, W, sum C_i)`` float32 where ``(H, W)`` is the largest grid; coarser maps are
        upsampled bilinearly (``align_corners=False``).
    """
    if len(layer_maps) == 1:
        return np.ascontiguousarray(layer_maps[0], dtype=np.float32)
    import torch  # only layers on different grids need it (a fit step without it is lighter)
    import torch.nn.functional as F  # noqa: N812

    target = max((m.shape[1], m.shape[2]) for m in layer_maps)
    parts = []
    for m in layer_maps:
        if (m.shape[1], m.shape[2]) == target:
            parts.append(m.astype(np.float32, copy=False))
            continue
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)).permute(0, 3, 1, 2)
        up = F.interpolate(t, size=target, mode="bilinear", align_corners=False)
        parts.append(up.permute(0, 2, 3, 1).numpy())
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32)


def input_scale(input_size: int | None, grid: tuple[int, int], where: str) -> int:
    """Pixels per grid cell along each side when the map is folded onto ``grid``:
    ``ceil(input_size / grid)`` (the backbone's input side over the descriptor grid)."""
    if input_size is None:
        raise InputError(f"{where}: the teacher backbone keeps each map at its own size "
                         "(resize: none); input_map needs a backbone with an input_size")
    if grid[0] != grid[1]:
        raise InputError(f"{where}: input_map needs a square descriptor grid, got {grid}")
    return max(1, math.ceil(input_size / grid[0]))


def append_input_map(desc: np.ndarray, maps: np.ndarray, scale: int,
                     resize_mode: str) -> np.ndarray:
    """``desc`` ``(N, H, W, D)`` with the maps folded on as ``c * scale**2`` more channels.

    Args:
        maps: ``(N, h, w, c)`` float32 (the raw backbone's cache: the map's own values).
        scale: pixels per grid cell along each side (:func:`input_scale`).
        resize_mode: the teacher backbone's ``resize`` (``bilinear`` | ``nearest`` |
            ``aspect-pad``), applied to the side ``scale * H``.

    Returns:
        ``(N, H, W, D + c * scale**2)`` float32: channel ``D + k * scale**2 + i * scale + j``
        is pixel ``(i, j)`` of cell ``(y, x)`` in map channel ``k`` (torch ``pixel_unshuffle``).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    from hdmap_ad.features.preprocess import resize

    n, h, w, _ = desc.shape
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).permute(0, 3, 1, 2)
    x = resize(x, scale * h, resize_mode)
    folded = F.pixel_unshuffle(x, scale).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(np.concatenate([desc, folded], axis=-1), dtype=np.float32)


@dataclass(frozen=True)
class DescriptorConfig:
    """How patch descriptors are built from the cached layers (bank and queries alike).

    ``project_dim``: adaptive-average projection of the concatenated layers to a fixed width
    (the reference PatchCore's design; None keeps every channel). ``context``: horizontal
    context (CPD, see :mod:`hdmap_ad.features.context`), applied after the projection.
    """

    project_dim: int | None = None
    context: ContextConfig = field(default_factory=ContextConfig)

    def apply(self, desc: np.ndarray, where: str = "descriptor") -> np.ndarray:
        """``(N, H, W, D)`` -> ``(N, H, W, D')``; per map, so batches can be built apart."""
        if self.project_dim is not None:
            desc = project_channels(desc, self.project_dim)
        return apply_context(desc, self.context, where=f"{where}.context")


class DescriptorSource:
    """Cached layers of a fixed list of maps, combined on demand per batch.

    Only the requested rows are decoded (:class:`~hdmap_ad.features.cache.FeatureReader`).
    With ``stream=False`` they are read into memory once; with ``stream=True`` per call, so
    memory does not grow with the number of maps (scoring large test sets).

    Args:
        feature_paths: one Parquet feature cache per layer (``features/<domain>/<bb>/<layer>``).
        image_ids: manifest ``image_id`` values; positions index into this list.
        descriptor: projection / context applied after combining the layers.
        where: params key for error messages (``experiments.<key>``).
        stream: read rows from the files per call instead of all at once.
        input_path: the ``raw`` backbone cache of the same maps (``input_map``): the map is
            folded onto the grid after the teacher's channels (:func:`append_input_map`).
    """

    def __init__(
        self,
        feature_paths: list[str],
        image_ids: list[str],
        descriptor: DescriptorConfig | None = None,
        where: str = "descriptor",
        stream: bool = False,
        input_path: str | None = None,
    ) -> None:
        from hdmap_ad.features.cache import FeatureReader

        self.image_ids = np.asarray(list(image_ids), dtype=object)
        ids = list(self.image_ids)
        # only the requested rows are ever decoded (never the whole cache file)
        readers = [FeatureReader(p) for p in feature_paths]
        self.n_layers = len(readers)
        if input_path is not None:
            readers.append(FeatureReader(input_path))
        self.layout = descriptor_layout([r.metadata for r in readers[: self.n_layers]],
                                        readers[-1].metadata if input_path else None,
                                        descriptor or DescriptorConfig(), where)
        self.readers: list[FeatureReader] = []
        self.layers: list[np.ndarray] = []
        if stream:
            for reader in readers:
                reader.check_ids(ids)  # fail before any scoring, not at the first batch
            self.readers = readers
        else:
            self.layers = [reader.rows(ids) for reader in readers]
        self.descriptor = descriptor or DescriptorConfig()
        self.where = where

    def __len__(self) -> int:
        return len(self.image_ids)

    def __call__(self, positions: np.ndarray | slice = slice(None)) -> np.ndarray:
        """``(B, H, W, D)`` float32 descriptors of the maps at ``positions``."""
        if self.readers:
            ids = list(self.image_ids[positions])
            maps = [reader.rows(ids) for reader in self.readers]
        else:
            maps = [layer[positions] for layer in self.layers]
        combined = combine_layers(maps[: self.n_layers])
        desc = self.descriptor.apply(combined, self.where)
        if self.layout["input"] is None:
            return desc
        return append_input_map(desc, maps[-1], self.layout["input"]["scale"],
                                self.layout["teacher"]["resize"])


def descriptor_layout(layer_metas: list[dict[str, Any]], input_meta: dict[str, Any] | None,
                      descriptor: DescriptorConfig, where: str) -> dict[str, Any]:
    """Which channels of an experiment's descriptors are what (JSON-ready), from the cache
    metadata: ``teacher`` (the backbone: model, input size, resize, mean, std, patch pool),
    ``layers`` (name, channels, grid, in order), ``grid``, ``transformed`` (a projection or
    context changed the layers' channels) and ``input`` (``channels``, ``scale``, the folded
    map's channel count and pixels per cell; None without ``input_map``)."""
    first = layer_metas[0]
    shapes = [[int(v) for v in m["feature_shape"]] for m in layer_metas]  # (gh, gw, C)
    grid = max((sh[0], sh[1]) for sh in shapes)
    input_part = None
    if input_meta is not None:
        if first.get("resize") not in ("bilinear", "nearest", "aspect-pad"):
            raise InputError(f"{where}.input_map: the teacher backbone keeps each map at its own "
                             "size (resize: none); input_map needs one with an input_size")
        c = int(input_meta["feature_shape"][2])
        input_part = {"backbone": input_meta.get("backbone"), "layer": input_meta.get("layer"),
                      "channels": c, "scale": input_scale(first.get("input_size"), grid,
                                                          f"{where}.input_map")}
    return {
        "teacher": {k: first.get(k) for k in ("backbone", "model", "input_size", "resize",
                                              "mean", "std", "patch_pool")},
        "layers": [{"name": m.get("layer"), "channels": sh[2], "grid": sh[:2]}
                   for m, sh in zip(layer_metas, shapes, strict=True)],
        "grid": list(grid),
        "transformed": descriptor.project_dim is not None or descriptor.context.enabled,
        "input": input_part,
    }
