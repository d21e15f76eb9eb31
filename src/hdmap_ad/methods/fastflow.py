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

Layers (``flows``): ``per_layer`` (default) is the paper's and anomalib's layout: one flow per
backbone layer, each on the layer's own channels and its own (native) grid. The descriptor grid
holds coarser layers bilinearly upsampled
(:func:`hdmap_ad.features.descriptors.combine_layers`); that upsampling is linear and injective,
so its pseudo-inverse (one small matrix per axis) gives the native grid back exactly (to float
error) and each flow costs what anomalib's does. The maps combine as anomalib's: each layer's
``exp(-m_l)`` (``m_l = 0.5 mean_c z_l^2``) upsampled bilinearly to the descriptor grid, averaged
over layers; the patch score is ``-log`` of that mean (anomalib reports ``-mean``: the same
ranking, computed here with a per-map shift in float64 so it does not underflow). ``per_layer``
needs the layout of the layers (the pipeline's ``DescriptorSource``) and untransformed
descriptors (no ``project_dim``, no ``context``). ``joint`` runs one flow on the descriptor
grid, which concatenates the experiment's layers on the finest grid (any descriptor, CPD and
projections included): a larger network, its coupling subnets see all channels (cost grows with
the square of the channel count) on the finest grid. On synthetic C it ranked better than
``per_layer`` (``make bench-trained``).

Where this differs from anomalib otherwise: fixed reference standardisation instead of
anomalib's trainable ``LayerNorm`` over ``(C, H, W)`` (so the flow is convolutional and scores
any grid size); the permutation is an index gather (the same values as FrEIA's 1x1 conv with a
permutation matrix); scores are upsampled to the descriptor grid, not to the input image (patch
scores stay on the descriptor grid, as every method here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext
from hdmap_ad.methods.training import TrainedMethod, TrainedModel, TrainOptions

FLOWS = ("joint", "per_layer")


@dataclass(frozen=True)
class FastFlowOptions(TrainOptions):
    flow_steps: int = field(default=8, metadata={
        "min": 1, "max": 64, "doc": "affine coupling blocks in the flow (paper / anomalib: 8)"})
    hidden_ratio: float = field(default=1.0, metadata={
        "gt": 0.0, "max": 16.0, "doc": "subnet hidden channels per coupling input channel"})
    conv3x3_only: bool = field(default=False, metadata={
        "doc": "every subnet uses 3x3 convolutions (false: 3x3 and 1x1 blocks alternate)"})
    clamp: float = field(default=2.0, metadata={
        "gt": 0.0, "doc": "soft clamp of the coupling log-scales (clamp * tanh)"})
    flows: str = field(default="per_layer", metadata={
        "enum": FLOWS, "doc": "per_layer = one flow per layer on its own grid (the paper's "
                              "and anomalib's layout; needs untransformed descriptors) | "
                              "joint = one flow on the concatenated descriptor grid"})


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


def flow_groups(layout: dict[str, Any] | None, channels: int,
                where: str) -> dict[str, Any]:
    """What ``flows: per_layer`` builds (JSON-ready, stored with the weights): ``grid`` (the
    descriptor grid) and ``layers`` (name, channels, native grid, in channel order), from a
    descriptor layout; an ``InputError`` naming ``where`` when the channels are not the
    layers' own."""
    if layout is None:
        raise InputError(f"{where}: flows: per_layer needs the descriptors' layer layout (the "
                         "pipeline's feature caches); use flows: joint")
    if layout.get("transformed"):
        raise InputError(f"{where}: flows: per_layer needs each layer's own channels, but the "
                         "descriptor projects them or adds context (descriptor.project_dim / "
                         "descriptor.context); use flows: joint")
    if layout.get("input") is not None:
        raise InputError(f"{where}: flows: per_layer reads descriptors without input_map")
    layers = [{"name": la["name"], "channels": int(la["channels"]),
               "grid": [int(g) for g in la["grid"]]} for la in layout["layers"]]
    if sum(la["channels"] for la in layers) != channels:
        raise InputError(f"{where}: descriptors have {channels} channels, the layers "
                         f"{[la['name'] for la in layers]} {sum(la['channels'] for la in layers)}")
    return {"grid": [int(g) for g in layout["grid"]], "layers": layers}


def native_projector(native: int, common: int) -> Any:
    """``(native, common)`` float32: the pseudo-inverse of the 1-D linear upsampling
    (``align_corners=False``) from ``native`` to ``common`` samples, so that
    ``projector @ upsample(v) == v`` (to float error) for any ``v`` of length ``native``."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    eye = torch.eye(native, dtype=torch.float64)[None]  # (1, native as channels, native)
    up = F.interpolate(eye, size=common, mode="linear", align_corners=False)[0].T
    return torch.linalg.pinv(up).float()  # (native, common)


def build_layer_flows(groups: dict[str, Any], options: FastFlowOptions) -> Any:
    """``flows: per_layer``: one flow per layer of ``groups`` (:func:`flow_groups`).

    ``module(x)`` maps descriptors ``(B, D, H, W)`` to a list of ``(z_l, log|det J_l|)``, each
    on its layer's native grid."""
    import torch
    from torch import nn

    class LayerFlows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.groups = groups  # stored with the weights' description (FastFlowModel.state)
            self.splits = [la["channels"] for la in groups["layers"]]
            self.flows = nn.ModuleList(build_flow(c, options) for c in self.splits)
            gh, gw = groups["grid"]
            for i, la in enumerate(groups["layers"]):
                h, w = la["grid"]
                ph = native_projector(h, gh) if h != gh else None
                pw = native_projector(w, gw) if w != gw else None
                self.register_buffer(f"ph{i}", ph, persistent=False)
                self.register_buffer(f"pw{i}", pw, persistent=False)

        def native(self, i: int, x: torch.Tensor) -> torch.Tensor:
            ph, pw = getattr(self, f"ph{i}"), getattr(self, f"pw{i}")
            if ph is not None:
                x = torch.einsum("hH,bcHW->bchW", ph, x)
            if pw is not None:
                x = torch.einsum("wW,bchW->bchw", pw, x)
            return x

        def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
            parts = torch.split(x, self.splits, dim=1)
            return [flow(self.native(i, p)) for i, (flow, p) in
                    enumerate(zip(self.flows, parts, strict=True))]

    return LayerFlows()


def nll_per_dim(flow: Any, x: Any) -> Any:
    """Training loss: ``0.5 * |z|^2 - log|det J|`` per dimension, batch mean (a scalar
    tensor) for standardised ``x`` ``(B, C, H, W)``; with ``flows: per_layer`` the sum over
    layers of each layer's (anomalib sums the layers' raw losses: each flow has its own
    parameters, and Adam's steps do not depend on a per-flow scale)."""
    out = flow(x)
    if isinstance(out, list):
        return sum(_nll(z, log_det) for z, log_det in out)
    return _nll(*out)


def _nll(z: Any, log_det: Any) -> Any:
    dims = z[0].numel()
    return ((0.5 * (z**2).flatten(1).sum(dim=1) - log_det) / dims).mean()


def combine_layer_maps(maps: list[Any], grid: tuple[int, int]) -> Any:
    """Per-layer maps ``m_l`` ``(B, h_l, w_l)`` -> ``(B, H, W)``
    ``-log(mean_l upsample(exp(-m_l)))``, anomalib's combination (it reports ``-mean``) in a
    form that does not underflow: each map is shifted by its smallest ``m`` first, in
    float64."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    def on_grid(t: Any) -> Any:  # (B, h, w) -> (B, H, W), bilinear as anomalib
        if tuple(t.shape[-2:]) == tuple(grid):
            return t
        return F.interpolate(t[:, None], size=tuple(grid), mode="bilinear",
                             align_corners=False)[:, 0]

    maps = [m.double() for m in maps]
    shift = torch.stack([m.flatten(1).amin(dim=1) for m in maps]).amin(dim=0)[:, None, None]
    mean = sum(on_grid(torch.exp(-(m - shift))) for m in maps) / len(maps)
    # a patch where every layer is > ~700 above the map's most normal one: exp underflows to
    # 0 even in float64; its score is then the layers' mean m (finite, and still the largest)
    fallback = sum(on_grid(m) for m in maps) / len(maps)
    return torch.where(mean > 0, shift - torch.log(mean.clamp_min(1e-300)), fallback).float()


class FastFlowModel(TrainedModel):
    """A trained flow (``module``) with the references' channel statistics."""

    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        out = self.module(x)
        if isinstance(out, list):
            patch = combine_layer_maps([0.5 * (z**2).mean(dim=1) for z, _ in out],
                                       tuple(x.shape[-2:]))
        else:
            patch = 0.5 * (out[0] ** 2).mean(dim=1)
        return patch.flatten(1).amax(dim=1), patch

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays, description = super().state()
        groups = getattr(self.module, "groups", None)  # flows: per_layer
        if groups is not None:
            description["flows"] = groups
        return arrays, description


class FastFlow(TrainedMethod):
    name = "fastflow"
    Options = FastFlowOptions
    model_class = FastFlowModel
    summary = ("FastFlow: a 2-D normalising flow (affine coupling blocks) trained on the "
               "references, one on the joint descriptor grid or one per layer on its own "
               "grid; patch score = the latent's negative log-density per channel")
    # the contract runs on bare descriptors (no layer layout): the joint flow
    smoke_options = MappingProxyType({"epochs": 5, "flow_steps": 2, "flows": "joint"})

    def build(self, channels: int, options: FastFlowOptions, ctx: FitContext) -> Any:
        if options.flows == "per_layer":
            return build_layer_flows(flow_groups(ctx.layout, channels, ctx.where), options)
        return build_flow(channels, options)

    def loss(self, options: FastFlowOptions, ctx: FitContext) -> Callable[[Any, Any], Any]:
        return nll_per_dim

    def needs_layer_channels(self, options: FastFlowOptions) -> str | None:
        return "flows: per_layer; flows: joint reads any descriptor" if (
            options.flows == "per_layer") else None

    def from_state(self, arrays: dict[str, Any], description: dict[str, Any],
                   options: FastFlowOptions, ctx: FitContext) -> FastFlowModel:
        from dataclasses import replace

        groups = description.get("flows")
        if options.flows == "per_layer":
            if groups is None:
                raise InputError(f"{ctx.where}: the checkpoint holds a joint flow; the "
                                 "options ask for flows: per_layer (re-run the fit step)")
            layout = {"grid": groups["grid"], "layers": groups["layers"],
                      "transformed": False, "input": None}
            ctx = replace(ctx, layout=layout)
        return super().from_state(arrays, description, options, ctx)
