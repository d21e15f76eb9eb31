"""STFPM (Wang et al. 2021, "Student-Teacher Feature Pyramid Matching for Anomaly Detection"):
a student network, the teacher's architecture with random weights, is trained to reproduce the
frozen (pretrained) teacher's multi-scale features on normal maps; where it fails to, the map
is anomalous.

Inputs. The teacher's features are the experiment's cached layers (training never runs the
teacher: the cache *is* its output). The student needs the image, so an STFPM experiment sets
``input_map`` to a ``raw`` backbone: the descriptors then carry the map, resized as the
teacher's backbone resized it and folded onto the grid
(:func:`hdmap_ad.features.descriptors.append_input_map`). The descriptors must be the layers
as cached (no ``project_dim``, no ``context``).

Student. ``timm.create_model(<teacher model>, pretrained=False)`` built for the folded map's
side (``scale * grid``, e.g. 256 px for a 64 x 64 grid at stride 4; 264 px for lite2's 33 x 33
stride-8 grid at 260 px), fed the map normalised with the teacher's mean / std (a one-channel
map repeated to three channels, as extraction does); its outputs at the teacher's layers go
through the same local average (``patch_pool``) and are resized bilinearly to the descriptor
grid. It is initialised from the experiment seed.

Loss (as anomalib 2.7 ``models/image/stfpm``): per layer, teacher and student features are
L2-normalised over channels and ``0.5 * |t - s|^2`` is averaged over positions; layers are
summed. anomalib sums the loss over the batch and trains with SGD (lr 0.4, momentum 0.9,
weight decay 1e-3; the paper 1e-4); here the reported loss is the batch mean and each step
follows the batch sum (``batch_sum``: the mean's gradient times the batch's real size), so
every step, a partial last batch's included, is anomalib's update. Positions are those of the
descriptor grid (coarser layers upsampled), where anomalib averages each layer on its own
grid.

Scores: per layer, ``0.5 * |t - s|^2`` at each position (normalised features); the patch
score combines the layers by ``product`` (paper, anomalib) or ``sum``; the image score is the
largest patch score (anomalib: the maximum of the map upsampled to the image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.methods.base import FitContext
from hdmap_ad.methods.training import TrainedMethod, TrainedModel, TrainOptions

COMBINE = ("product", "sum")


@dataclass(frozen=True)
class STFPMOptions(TrainOptions):
    epochs: int = field(default=100, metadata={
        "min": 1, "max": 10_000, "doc": "training epochs at most (early stopping may end "
                                         "sooner; anomalib: 100)"})
    batch_size: int = field(default=32, metadata={
        "min": 1, "max": 1024, "doc": "maps per optimisation step (anomalib: 32)"})
    lr: float = field(default=0.4, metadata={
        "gt": 0.0, "doc": "SGD learning rate for the batch-summed loss (anomalib: 0.4)"})
    weight_decay: float = field(default=1e-3, metadata={
        "min": 0.0, "doc": "SGD weight decay (anomalib: 1e-3; the paper: 1e-4)"})
    momentum: float = field(default=0.9, metadata={
        "min": 0.0, "max": 1.0, "doc": "SGD momentum (anomalib: 0.9)"})
    combine: str = field(default="product", metadata={
        "stage": "score", "enum": COMBINE,
        "doc": "how the layers' patch distances become one patch score: product (paper) | "
               "sum"})


def student_spec(layout: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """What the student is built from (stored with its weights), from a descriptor layout;
    ``InputError`` when the descriptors cannot feed an STFPM student."""
    if layout is None or layout.get("input") is None:
        raise InputError(f"{where}: stfpm's student reads the map itself; set the experiment's "
                         "input_map to a raw backbone (model: raw, layers: [map] or [rgb])")
    if layout.get("transformed"):
        raise InputError(f"{where}: stfpm matches the teacher's layers as cached; drop the "
                         "experiment's project_dim and context")
    teacher = layout["teacher"]
    if teacher.get("model") == "raw":
        raise InputError(f"{where}: stfpm needs a network teacher, not the raw backbone")
    grid = [int(g) for g in layout["grid"]]
    scale = int(layout["input"]["scale"])
    return {
        "model": teacher["model"], "side": scale * grid[0], "grid": grid, "scale": scale,
        "in_channels": int(layout["input"]["channels"]),
        "layers": [[la["name"], int(la["channels"])] for la in layout["layers"]],
        "patch_pool": int(teacher.get("patch_pool") or 1),
        "mean": [float(v) for v in teacher["mean"]], "std": [float(v) for v in teacher["std"]],
    }


def build_student(spec: dict[str, Any]) -> Any:
    """The student module for ``spec`` (:func:`student_spec`). Call under ``seeded``.

    ``student(x)`` takes descriptors ``(B, D, H, W)`` (teacher channels, then the folded map)
    and returns the student's features per layer, each ``(B, C_l, H, W)``.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    from hdmap_ad.features.extract import layer_indices, pool_patches
    from hdmap_ad.features.weights import create_model
    from hdmap_ad.specs import BackboneConfig

    names = [name for name, _ in spec["layers"]]
    cfg = BackboneConfig.from_dict("stfpm_student", {
        "model": spec["model"], "input_size": spec["side"], "layers": names,
        "weights": {"source": "random"}})
    d_teacher = sum(c for _, c in spec["layers"])
    grid = tuple(spec["grid"])

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spec = spec  # stored with the weights' description (STFPMModel.state)
            self.net = create_model(cfg)
            self.indices = layer_indices(self.net, names, "stfpm student")
            self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            image = F.pixel_shuffle(x[:, d_teacher:], spec["scale"])
            if image.shape[1] == 1:
                image = image.expand(-1, 3, -1, -1)
            image = (image - self.mean) / self.std
            wanted = sorted(set(self.indices))
            outs = dict(zip(wanted, self.net.forward_intermediates(
                image, indices=wanted, intermediates_only=True, stop_early=True), strict=True))
            feats = []
            for i in self.indices:
                f = pool_patches(outs[i], spec["patch_pool"])
                if tuple(f.shape[-2:]) != grid:
                    f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                feats.append(f)
            return feats

    return Student()


def layer_distances(student: Any, x: Any) -> list[Any]:
    """Per layer, ``0.5 * |t/|t| - s/|s||^2`` over channels: ``(B, H, W)`` each."""
    from torch.nn import functional as F  # noqa: N812

    out, start = [], 0
    for (_, c), s in zip(student.spec["layers"], student(x), strict=True):
        t = x[:, start : start + c]
        start += c
        out.append(0.5 * ((F.normalize(t, dim=1) - F.normalize(s, dim=1)) ** 2).sum(dim=1))
    return out


class STFPMModel(TrainedModel):
    """A trained student; its module carries the spec (the teacher's architecture, layers and
    grid)."""

    def standardised_scores(self, x: Any) -> tuple[Any, Any]:
        dists = layer_distances(self.module, x)
        patch = dists[0]
        for d in dists[1:]:
            patch = patch * d if self.options.combine == "product" else patch + d
        return patch.flatten(1).amax(dim=1), patch

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays, description = super().state()
        description["student"] = self.module.spec
        return arrays, description


class STFPM(TrainedMethod):
    name = "stfpm"
    Options = STFPMOptions
    model_class = STFPMModel
    standardise = False  # the student reads the map; the teacher's features stay as cached
    batch_sum = True  # anomalib's step: lr on the batch-summed loss, whatever the batch's size
    reads_map = True
    summary = ("STFPM: a random-init copy of the backbone learns to reproduce its "
               "multi-scale features from the map (needs input_map); patch score = "
               "student-teacher distance")
    smoke_options = MappingProxyType({"epochs": 6, "batch_size": 4})

    def build(self, channels: int, options: STFPMOptions, ctx: FitContext) -> Any:
        spec = student_spec(ctx.layout, ctx.where)
        want = sum(c for _, c in spec["layers"]) + spec["in_channels"] * spec["scale"] ** 2
        if channels != want:
            raise InputError(f"{ctx.where}: descriptors have {channels} channels, the layout "
                             f"says {want}")
        return build_student(spec)

    def loss(self, options: STFPMOptions, ctx: FitContext) -> Callable[[Any, Any], Any]:
        def stfpm_loss(student: Any, batch: Any) -> Any:
            return sum(d.mean(dim=(1, 2)) for d in layer_distances(student, batch)).mean()

        return stfpm_loss

    def optimizer(self, parameters: Any, options: STFPMOptions) -> Any:
        import torch

        return torch.optim.SGD(parameters, lr=options.lr, momentum=options.momentum,
                               weight_decay=options.weight_decay)

    def from_state(self, arrays: dict[str, Any], description: dict[str, Any],
                   options: STFPMOptions, ctx: FitContext) -> STFPMModel:
        from dataclasses import replace

        spec = description["student"]
        layout = {"teacher": {"model": spec["model"], "patch_pool": spec["patch_pool"],
                              "mean": spec["mean"], "std": spec["std"]},
                  "grid": spec["grid"], "transformed": False,
                  "layers": [{"name": n, "channels": c} for n, c in spec["layers"]],
                  "input": {"channels": spec["in_channels"], "scale": spec["scale"]}}
        return super().from_state(arrays, description, options, replace(ctx, layout=layout))

    def min_references(self, options: STFPMOptions) -> int:
        return 2  # batch normalisation in training needs two maps
