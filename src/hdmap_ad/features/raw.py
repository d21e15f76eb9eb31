"""The ``raw`` backbone: no network; the map itself is the one feature layer, ``map``.

With ``model: raw`` (``weights: {source: none}`` and ``patch_pool: 1`` by default,
``hdmap_ad.specs.MODEL_DEFAULTS``), :func:`hdmap_ad.features.weights.load_backbone` returns
:class:`RawMap`: a parameter-free ``nn.Module`` that offers the part of timm's interface the
extractor uses (``feature_info``, ``forward_intermediates``, ``pretrained_cfg`` with mean 0 and
std 1). That loader is the one seam: preprocessing, the feature cache and its metadata,
descriptors, provenance, export and predict treat it as any backbone, so a trained method (the
autoencoder family) learns on the maps themselves.

Size and aspect: with ``input_size`` omitted (``resize: none``, the way to use it) the map
enters at its own size, so the cached features of a 31 x 95 HDMAP map are ``(31, 95, 1)``: one
patch per pixel, the map's values as float32, its aspect kept. Every map of a domain must then
share one size (extraction refuses another, naming the map); for folder datasets of mixed sizes
set ``input_size`` and ``resize: aspect-pad`` (the map scaled to fit an ``S x S`` square, aspect
kept, zero padding). ``nearest`` and ``bilinear`` stretch a non-square map to the square.

Channels: the preprocessed input repeats a single-channel map three times; ``map`` is channel 0
(the map itself; for an RGB image, its red channel) and ``rgb`` all three (an RGB image's
colours; three copies of a single-channel map).

Example:
    >>> from hdmap_ad.specs import BackboneConfig
    >>> cfg = BackboneConfig.from_dict("raw", {"model": "raw", "layers": ["map"]})
    >>> (cfg.weights.source, cfg.input_size, cfg.resize, cfg.patch_pool)
    ('none', None, 'none', 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hdmap_ad.specs import RAW_MODEL

LAYER = "map"
#: layer name -> channels of the input it keeps
LAYERS = {LAYER: 1, "rgb": 3}


class RawMap(nn.Module):
    """The identity "backbone": layer ``map`` = channel 0 of the ``(N, 3, H, W)`` input,
    layer ``rgb`` = its three channels.

    ``anchor`` is an empty, frozen parameter: the extractor asks a backbone for its device
    through its parameters, and the weights hash covers a (constant) state dict.
    """

    feature_info = [{"module": name, "num_chs": c, "reduction": 1} for name, c in LAYERS.items()]
    pretrained_cfg = {"architecture": RAW_MODEL, "mean": (0.0, 0.0, 0.0),
                      "std": (1.0, 1.0, 1.0)}

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] = (0,),
                              intermediates_only: bool = True,
                              stop_early: bool = True) -> list[torch.Tensor]:
        """Per requested index: ``(N, 1, H, W)`` (0, ``map``) or ``(N, 3, H, W)`` (1, ``rgb``)."""
        chans = list(LAYERS.values())
        if any(not 0 <= i < len(chans) for i in indices):
            raise ValueError(f"{RAW_MODEL}: layers {list(LAYERS)} (indices 0..{len(chans) - 1}), "
                             f"got {indices}")
        return [x[:, : chans[i]] for i in indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]
