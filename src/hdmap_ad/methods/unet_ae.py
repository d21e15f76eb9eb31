"""A U-Net autoencoder: the AE (:mod:`hdmap_ad.methods.ae`) with skip connections.

Same input, standardisation, training, checkpoint and scores as ``ae`` (patch score = the
reconstruction error, ``l2`` or ``ssim``, optional ``row_window``; image score = the largest
patch score); only the module differs: at the ``skip_levels`` coarsest decoder levels the
encoder block output of the same resolution is concatenated to the upsampled code (Ronneberger
et al. 2015). With ``depth`` d there are d - 1 such levels (the input itself is never a skip).

Why the options matter: skips carry detail around the bottleneck, so reconstructions are
sharper (fewer false alarms on normal texture), but a skip can also carry the *anomaly*
around it: a network that reconstructs through its skips copies a fault band into its output
and its reconstruction error stays low there. The bottleneck (``latent``) is then no longer
what limits what the decoder can reproduce. Hence:

- ``skip_levels`` (default 1: the one skip next to the bottleneck, the coarsest; with the
  default ``depth`` 2 that is every skip there is): fewer, coarser skips copy less fine
  detail such as a one-row band; 0 gives the plain AE's architecture;
- ``skip_dropout`` (default 0: off): during training each map's skip tensors are dropped
  whole with this probability (and scaled by ``1 / (1 - p)`` otherwise, as dropout), so the
  decoder must also reconstruct from the bottleneck alone; scoring always uses every skip.
  Drops come from the experiment seed (deterministic CPU training).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.methods.ae import AE, AEOptions, conv_autoencoder_class
from hdmap_ad.methods.base import FitContext


@dataclass(frozen=True)
class UNetAEOptions(AEOptions):
    skip_levels: int = field(default=1, metadata={
        "min": 0, "max": 3, "doc": "skip connections, from the coarsest decoder level "
                                   "outwards (at most depth - 1; 0 = the plain AE)"})
    skip_dropout: float = field(default=0.0, metadata={
        "min": 0.0, "max": 0.9, "doc": "training only: probability of dropping a map's "
                                       "skips (forces reconstruction through the bottleneck)"})


@functools.cache
def unet_class() -> type:
    """The AE module class with skip dropout in :meth:`skip` (torch imported on first use)."""
    import torch

    base = conv_autoencoder_class()

    class UNetAutoencoder(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, skip_dropout: float = 0.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.skip_dropout = skip_dropout

        def skip(self, feat: torch.Tensor) -> torch.Tensor:
            p = self.skip_dropout
            if not self.training or p <= 0:
                return feat
            keep = (torch.rand(feat.shape[0], 1, 1, 1, device=feat.device) >= p).to(feat.dtype)
            return feat * keep / (1.0 - p)

    return UNetAutoencoder


class UNetAE(AE):
    name = "unet_ae"
    Options = UNetAEOptions
    summary = ("U-Net autoencoder: the AE with skip connections (`skip_levels`, "
               "`skip_dropout`: skips can copy anomalies around the bottleneck); patch score "
               "= reconstruction error")
    smoke_options = MappingProxyType({"epochs": 8, "hidden": 8, "latent": 8})

    def build(self, channels: int, options: UNetAEOptions, ctx: FitContext) -> Any:
        if options.skip_levels > options.depth - 1:
            raise InputError(f"{ctx.where}.skip_levels: {options.skip_levels} must be at most "
                             f"depth - 1 = {options.depth - 1} (one skip per encoder block "
                             "but the last)")
        return unet_class()(channels, options.hidden, options.depth, options.latent,
                            skip_levels=options.skip_levels, skip_dropout=options.skip_dropout)
