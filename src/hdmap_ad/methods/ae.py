"""A convolutional autoencoder (AE) trained on a sub-model's references; the anomaly score is
the reconstruction error.

Input is the experiment's descriptor grid ``(N, H, W, D)`` seen as a ``D``-channel image:
with the ``raw`` backbone that is the map itself (one channel: the classic image AE), with a
CNN backbone it reconstructs the cached features (a feature-reconstruction AE). Channels are
standardised with the references' per-channel mean and standard deviation (stored with the
weights).

Architecture: ``depth`` stride-2 conv blocks (conv 3x3, batch norm, ReLU) from ``hidden``
channels doubling per block, a 1x1 bottleneck of ``latent`` channels, and the mirror image
with bilinear upsampling back to exactly ``H x W`` (no padding rules on odd sizes such as
31 x 95). Trained with the mean squared error (``hdmap_ad.methods.training``: Adam, held-out
reference fold, early stopping).

Scores: patch score = the per-position reconstruction error over channels (``score: l2``,
the squared error's channel mean; ``ssim``: 1 - local SSIM over a 3x3 window, channel mean),
optionally averaged along each row over ``row_window`` positions (the HDMAP fault prior: a
fault is a thin horizontal band, so row-wise averaging favours bands over speckle; off by
default). Image score = the largest patch score.

The family: ``unet_ae`` (skip connections) and ``vae`` (a probabilistic bottleneck) reuse
this module's encoder/decoder (:func:`conv_autoencoder_class`), model and fit; they subclass
:class:`AE` and override :meth:`AE.build`, :meth:`AE.loss` and ``model_class``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from hdmap_ad.methods.base import FitContext
from hdmap_ad.methods.training import TrainedMethod, TrainedModel, TrainOptions

SCORES = ("l2", "ssim")


@dataclass(frozen=True)
class AEOptions(TrainOptions):
    hidden: int = field(default=32, metadata={
        "min": 1, "max": 1024, "doc": "channels of the first conv block (doubling per block)"})
    depth: int = field(default=2, metadata={
        "min": 1, "max": 4, "doc": "stride-2 conv blocks in the encoder (and decoder)"})
    latent: int = field(default=16, metadata={
        "min": 1, "max": 1024, "doc": "channels of the 1x1 bottleneck"})
    score: str = field(default="l2", metadata={
        "stage": "score", "enum": SCORES,
        "doc": "patch score: l2 = squared error | ssim = 1 - local SSIM (3x3)"})
    row_window: int = field(default=1, metadata={
        "stage": "score", "min": 1, "max": 256,
        "doc": "average patch scores along each row over this many positions (HDMAP fault "
               "prior: horizontal bands; 1 = off)"})


@functools.cache
def conv_autoencoder_class() -> type:
    """The encoder/decoder module class shared by the autoencoder family (AE, U-Net AE, VAE).

    ``ConvAutoencoder(channels, hidden, depth, latent, code_channels=latent, skip_levels=0)``:
    ``depth`` stride-2 conv blocks from ``hidden`` channels doubling per block, a 1x1 conv to
    ``code_channels`` (the code: ``latent``, or ``2 * latent`` for a VAE's mean and log-variance),
    and the mirror image from ``latent`` channels with bilinear upsampling to the encoder's
    sizes. ``skip_levels`` k > 0 concatenates, at the k coarsest decoder levels, the encoder
    block output of the same resolution (U-Net skips; at most ``depth - 1``: the input itself is
    never a skip). ``encode`` returns ``(code, sizes, feats)``, ``decode(z, sizes, feats, size)``
    the reconstruction; :meth:`skip` is the hook a subclass uses to alter a skip (dropout).
    Built on first use (torch is imported here, never at import time).
    """
    import torch
    from torch import nn

    class ConvAutoencoder(nn.Module):
        def __init__(self, channels: int, hidden: int, depth: int, latent: int,
                     code_channels: int | None = None, skip_levels: int = 0) -> None:
            super().__init__()
            if not 0 <= skip_levels <= depth - 1:
                raise ValueError(f"skip_levels {skip_levels}: 0 .. depth - 1 = {depth - 1}")
            widths = [hidden * 2**i for i in range(depth)]
            self.skip_levels = skip_levels
            enc, c = [], channels
            for w in widths:
                enc += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w),
                        nn.ReLU(inplace=True)]
                c = w
            self.encoder = nn.Sequential(*enc, nn.Conv2d(c, code_channels or latent, 1))
            self.ups = nn.ModuleList()
            c = latent
            for j, w in enumerate(reversed(widths)):
                extra = widths[depth - 2 - j] if j < skip_levels else 0
                self.ups.append(nn.Sequential(nn.Conv2d(c + extra, w, 3, padding=1),
                                              nn.BatchNorm2d(w), nn.ReLU(inplace=True)))
                c = w
            self.head = nn.Conv2d(c, channels, 3, padding=1)

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Any], list[torch.Tensor]]:
            """``(code, sizes, feats)``: the code, each stride-2 block's input size and each
            block's output (the skips' sources)."""
            sizes, feats = [], []
            for layer in self.encoder:
                if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2):
                    sizes.append(x.shape[-2:])
                x = layer(x)
                if isinstance(layer, nn.ReLU):
                    feats.append(x)
            return x, sizes, feats

        def skip(self, feat: torch.Tensor) -> torch.Tensor:
            """An encoder feature on its way into the decoder (unchanged here)."""
            return feat

        def decode(self, z: torch.Tensor, sizes: list[Any], feats: list[torch.Tensor],
                   size: Any) -> torch.Tensor:
            """The reconstruction of size ``size`` from a ``latent``-channel code."""
            for j, (up, s) in enumerate(zip(self.ups, reversed(sizes), strict=True)):
                z = nn.functional.interpolate(z, size=s, mode="bilinear", align_corners=False)
                if j < self.skip_levels:
                    z = torch.cat([z, self.skip(feats[len(feats) - 2 - j])], dim=1)
                z = up(z)
            return nn.functional.interpolate(self.head(z), size=size, mode="bilinear",
                                             align_corners=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            code, sizes, feats = self.encode(x)
            return self.decode(code, sizes, feats, x.shape[-2:])

    return ConvAutoencoder


def build_autoencoder(channels: int, options: AEOptions) -> Any:
    """The AE module for ``channels`` input channels (see the module docstring)."""
    return conv_autoencoder_class()(channels, options.hidden, options.depth, options.latent)


def local_ssim(x: Any, y: Any) -> Any:
    """``1 - SSIM`` per position over a 3x3 window, channel mean: ``(B, C, H, W)`` x2 ->
    ``(B, H, W)`` (constants of Wang et al. 2004 for a data range of 1)."""
    from torch.nn import functional as F  # noqa: N812

    c1, c2 = 0.01**2, 0.03**2
    pool = lambda t: F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy = pool(x * x) - mx * mx, pool(y * y) - my * my
    cxy = pool(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return (1.0 - ssim).mean(dim=1)


def row_average(patch: Any, window: int) -> Any:
    """Average ``(B, H, W)`` scores along W over ``window`` positions (same size)."""
    if window <= 1:
        return patch
    from torch.nn import functional as F  # noqa: N812

    pooled = F.avg_pool2d(patch[:, None], (1, window), stride=1, padding=(0, window // 2),
                          count_include_pad=False)
    return pooled[:, 0, :, :patch.shape[-1]]


class AEModel(TrainedModel):
    """A trained autoencoder with the references' channel statistics."""

    def patch_error(self, x: Any, rec: Any) -> Any:
        """``(B, H, W)`` reconstruction error of standardised ``x`` (``options.score``, then
        ``row_window``)."""
        if self.options.score == "ssim":
            patch = local_ssim(x, rec)
        else:
            patch = ((x - rec) ** 2).mean(dim=1)
        return row_average(patch, self.options.row_window)

    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        patch = self.patch_error(x, self.module(x))
        return patch.flatten(1).amax(dim=1), patch


class AE(TrainedMethod):
    """The AE; its relatives (``unet_ae``, ``vae``) subclass it and override
    :meth:`build` (the module), :meth:`loss` (the training loss) and ``model_class``."""

    name = "ae"
    Options = AEOptions
    model_class: ClassVar[type[AEModel]] = AEModel
    summary = ("convolutional autoencoder trained on the references; patch score = "
               "reconstruction error (raw maps with the `raw` backbone, else features)")
    smoke_options = MappingProxyType({"epochs": 8, "hidden": 8, "latent": 8})

    def build(self, channels: int, options: AEOptions, ctx: FitContext) -> Any:
        """The untrained module for ``channels`` input channels."""
        return build_autoencoder(channels, options)

    def loss(self, options: AEOptions, ctx: FitContext) -> Callable[[Any, Any], Any]:
        """``loss(module, batch) -> scalar``: the mean squared reconstruction error."""
        return lambda m, b: ((m(b) - b) ** 2).mean()
