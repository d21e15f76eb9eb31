"""FastFlow (Yu et al. 2021, "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows"): a 2-D normalising flow trained on a sub-model's references; the anomaly
score of a patch is how unlikely its latent is under the flow's standard normal.

Input is the experiment's cached descriptor grid ``(N, H, W, D)`` seen as a ``D``-channel
image (training reads the cache, never the backbone). Channels are standardised with the
references' per-channel mean and standard deviation (stored with the weights).

Architecture (as anomalib 2.7 ``models/image/fastflow``, FrEIA's ``AllInOneBlock`` written
out in plain torch): ``flow_steps`` blocks, each

1. an affine coupling: split the channels into ``x1`` (the first ``D - D // 2``) and ``x2``;
   a subnet ``conv k x k -> ReLU -> conv k x k`` (zero padding, ``int(hidden_ratio *
   len(x1))`` hidden channels) maps ``x1`` to ``a``, scaled by 0.1; with the soft clamp
   ``s = clamp * tanh(a_s)``, ``x2 <- x2 * exp(s) + a_t``. Kernels alternate 3x3 (even
   blocks) and 1x1 (odd blocks) unless ``conv3x3_only``;
2. a learned per-channel global affine ``x * 0.1 * softplus_0.5(g) + b`` (initialised to the
   identity);
3. a fixed channel permutation (drawn from the experiment seed, stored with the weights).

Loss: the negative log-likelihood ``0.5 * |z|^2 - log|det J|`` (constant dropped) averaged
over the batch *and divided by the number of dimensions* ``D * H * W`` (anomalib sums over
dimensions; Adam is invariant to that scale, and a per-dimension loss is comparable across
grids and layers). Trained with :mod:`hdmap_ad.methods.training` (Adam, held-out reference
fold, early stopping); the paper's and anomalib's ``lr 1e-3`` and ``weight_decay 1e-5`` are
already the training defaults.

Scores: patch score = ``0.5 * mean_c z^2``, the latent's negative log-density per channel at
that position (log-determinant and constant left out, as anomalib's map does). anomalib's map
is ``-exp(-0.5 * mean_c z^2)``: a monotone function of ours, so patches and images rank the
same, but it saturates at 0 for strongly anomalous patches (float32 ``exp`` underflows, ties)
where ours keeps growing. Image score = the largest patch score (anomalib: ``amax`` of its
map).

Where this differs from anomalib: one flow on the descriptor grid, which already concatenates
the experiment's layers (anomalib runs one flow per backbone layer on its own grid and averages
the upsampled maps); fixed reference standardisation instead of anomalib's trainable
``LayerNorm`` over ``(C, H, W)`` (so the flow is convolutional and scores any grid size);
the permutation is an index gather (the same values as FrEIA's 1x1 conv with a permutation
matrix); no upsampling (patch scores stay on the descriptor grid, as every method here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdmap_ad.methods.base import FitContext
from hdmap_ad.methods.training import TrainedMethod, TrainedModel, TrainOptions


@dataclass(frozen=True)
class FastFlowOptions(TrainOptions):
    flow_steps: int = field(default=8, metadata={
        "min": 1, "doc": "affine coupling blocks in the flow (paper / anomalib: 8)"})
    hidden_ratio: float = field(default=1.0, metadata={
        "gt": 0.0, "doc": "subnet hidden channels per coupling input channel"})
    conv3x3_only: bool = field(default=False, metadata={
        "doc": "every subnet uses 3x3 convolutions (false: 3x3 and 1x1 blocks alternate)"})
    clamp: float = field(default=2.0, metadata={
        "gt": 0.0, "doc": "soft clamp of the coupling log-scales (clamp * tanh)"})


def build_flow(channels: int, options: FastFlowOptions) -> Any:
    """The flow module for ``channels`` input channels (see the module docstring).

    ``flow(x)`` maps ``(B, C, H, W)`` to ``(z (B, C, H, W), log|det J| (B,))``;
    ``flow.inverse(z)`` returns ``(x, -log|det J|)``. Call under :func:`seeded`: the
    initialisation and the permutations come from torch's seed.
    """
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    # global affine: 0.1 * softplus(g, beta=0.5), initialised so that the scale is 1
    global_init = 2.0 * math.log(math.exp(0.5 * 10.0 * 1.0) - 1.0)

    class CouplingBlock(nn.Module):
        """FrEIA ``AllInOneBlock`` (no condition, hard permutation, softplus global affine)."""

        def __init__(self, kernel: int) -> None:
            super().__init__()
            self.splits = (channels - channels // 2, channels // 2)
            c1, c2 = self.splits
            hidden = max(1, int(c1 * options.hidden_ratio))
            # one channel: nothing to couple, the block is the global affine + permutation
            self.subnet = nn.Sequential(
                nn.Conv2d(c1, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                nn.Conv2d(hidden, 2 * c2, kernel, padding=kernel // 2)) if c2 else None
            self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), global_init))
            self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
            perm = torch.randperm(channels)
            self.register_buffer("perm", perm)
            self.register_buffer("perm_inv", torch.argsort(perm))

        def _coupling(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a = self.subnet(x1) * 0.1  # FrEIA: scaled down for a near-identity start
            c2 = self.splits[1]
            return options.clamp * torch.tanh(a[:, :c2]), a[:, c2:]

        def _scale(self) -> torch.Tensor:
            return 0.1 * F.softplus(self.global_scale, beta=0.5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x1, x2 = torch.split(x, self.splits, dim=1)
            log_det = x.new_zeros(len(x))
            if self.subnet is not None:
                s, t = self._coupling(x1)
                x2 = x2 * torch.exp(s) + t
                log_det = s.sum(dim=(1, 2, 3))
            scale = self._scale()
            y = torch.cat((x1, x2), dim=1) * scale + self.global_offset
            log_det = log_det + x.shape[2] * x.shape[3] * torch.log(scale).sum()
            return y[:, self.perm], log_det

        def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scale = self._scale()
            x = (y[:, self.perm_inv] - self.global_offset) / scale
            log_det = -y.shape[2] * y.shape[3] * torch.log(scale).sum().expand(len(y))
            x1, x2 = torch.split(x, self.splits, dim=1)
            if self.subnet is not None:
                s, t = self._coupling(x1)
                x2 = (x2 - t) * torch.exp(-s)
                log_det = log_det - s.sum(dim=(1, 2, 3))
            return torch.cat((x1, x2), dim=1), log_det

    class Flow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                CouplingBlock(3 if options.conv3x3_only or i % 2 == 0 else 1)
                for i in range(options.flow_steps))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_det = x.new_zeros(len(x))
            for block in self.blocks:
                x, ld = block(x)
                log_det = log_det + ld
            return x, log_det

        def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_det = z.new_zeros(len(z))
            for block in reversed(self.blocks):
                z, ld = block.inverse(z)
                log_det = log_det + ld
            return z, log_det

    return Flow()


def nll_per_dim(flow: Any, x: Any) -> Any:
    """Training loss: ``0.5 * |z|^2 - log|det J|`` per dimension, batch mean (a scalar
    tensor) for standardised ``x`` ``(B, C, H, W)``."""
    z, log_det = flow(x)
    dims = x[0].numel()
    return ((0.5 * (z**2).flatten(1).sum(dim=1) - log_det) / dims).mean()


class FastFlowModel(TrainedModel):
    """A trained flow (``module``) with the references' channel statistics."""

    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        z, _ = self.module(x)
        patch = 0.5 * (z**2).mean(dim=1)
        return patch.flatten(1).amax(dim=1), patch


class FastFlow(TrainedMethod):
    name = "fastflow"
    Options = FastFlowOptions
    model_class = FastFlowModel
    summary = ("FastFlow: a 2-D normalising flow (affine coupling blocks) trained on the "
               "references; patch score = the latent's negative log-density per channel")

    def build(self, channels: int, options: FastFlowOptions, ctx: FitContext) -> Any:
        return build_flow(channels, options)

    def loss(self, options: FastFlowOptions, ctx: FitContext) -> Callable[[Any, Any], Any]:
        return nll_per_dim
