"""Patch descriptors built from cached layer maps, applied identically to bank and queries.

Multi-layer features follow PatchCore: every coarser grid is upsampled bilinearly to the
finest grid and the channels are concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
    """

    def __init__(
        self,
        feature_paths: list[str],
        image_ids: list[str],
        descriptor: DescriptorConfig | None = None,
        where: str = "descriptor",
        stream: bool = False,
    ) -> None:
        from hdmap_ad.features.cache import FeatureReader

        self.image_ids = np.asarray(list(image_ids), dtype=object)
        ids = list(self.image_ids)
        # only the requested rows are ever decoded (never the whole cache file)
        readers = [FeatureReader(p) for p in feature_paths]
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
        combined = combine_layers(maps)
        return self.descriptor.apply(combined, self.where)
