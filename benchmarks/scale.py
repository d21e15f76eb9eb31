"""How long will the study take: every step of the user's full-size study, timed here.

    python benchmarks/scale.py            # the issue's grid (about 10 min on 2 idle cores)
    python benchmarks/scale.py --quick    # small bank sizes, 4 maps: checks the harness (~1 min)

The study (``STUDY``): 4 domains x (1000 train + 2000 test) maps of 31 x 95 floats, DINOv2
ViT-S/14 at 518 px (37 x 37 = 1369 patches per map), layers blocks.8 + blocks.11 (768-d
descriptors), one full-train PatchCore bank per domain (1.37 M patches, coreset 1% or 10%),
exact faiss search of every test patch, then image and pixel metrics.

Every step runs the package's own code in a child process (wall time; peak RSS by ``wait4``):

- extraction: ``extract_to_cache`` (read, preprocess, forward, pool, Parquet cache) on
  synthetic 31 x 95 TIFF maps with a **random-init** ViT-S/14 (``weights: random``): the same
  shapes and FLOPs as the pretrained model, which is all a timing needs;
- bank: the PatchCore bank step on patch-like 768-d features (``coreset_scale.patch_like``)
  at 0.2 M, 0.8 M and 1.4 M patches x 1% and 10%, with the passes over the descriptor matrix
  per selected point and peak RSS against the input's size (target: under 3x), plus the
  target row 779,264 x 168-d at 10% (target: 180 s);
- scoring: ``score_routed`` streaming the extracted descriptors from their Parquet cache
  against a PatchCore bank of the study's size (exact ``IndexFlatL2``, the default);
- metrics: image metrics and pixel metrics (PNG masks on half the maps) on 2000 test maps.

Per-domain figures are measured, or extrapolated from the measured sample (the table says
which). The GPU column is an **estimate**: FLOP counts (ViT forward, flat search) and bytes
read (the GPU coreset loop) over an assumed sustained throughput of a named GPU (``GPU``),
plus the CPU-side work as measured here. Writes ``results/benchmarks/scale.json`` and
``.md``; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks_common import _LAUNCHER, machine, machine_line, write_outputs

REPO = Path(__file__).resolve().parents[1]

STUDY = {
    "domains": 4, "train_maps": 1000, "test_maps": 2000, "map_shape": [31, 95],
    "model": "vit_small_patch14_dinov2.lvd142m", "input_size": 518,
    "layers": ["blocks.8", "blocks.11"], "patch_pool": 3, "batch_size": 8,
    "ratios": [0.01, 0.1], "num_neighbors": 9,
}
BANK_SIZES = [200_000, 800_000, 1_400_000]
BANK_DIM = 768
TARGET_ROW = {"n": 779_264, "dim": 168, "ratio": 0.1, "seconds": 180.0}
RSS_LIMIT = 3.0  # bank step peak RSS / its input descriptors' bytes

# The GPU column: assumptions, not measurements (no GPU on the benchmark machine).
GPU = {
    "name": "NVIDIA A100 80GB SXM",
    "vit_tflops": 50.0,
    "vit_note": "ViT forward under bf16 autocast, sustained (dense bf16 peak 312)",
    "search_tflops": 15.0,
    "search_note": "faiss-gpu IndexFlatL2 (fp32 GEMM), sustained (fp32 peak 19.5); needs a "
                   "faiss build with GPU support (faiss-cpu searches on the CPU)",
    "memory_tb_s": 1.5,
    "memory_note": "sustained HBM reads of the coreset's GPU loop, one matrix-vector product "
                   "over all projected patches per pick (peak 2.0)",
    "per_pick_overhead_s": 30e-6,
}


# ---------------------------------------------------------------------------- children


def _child_extract(p: dict) -> dict:
    """``extract_to_cache`` on ``n_maps`` synthetic maps; load / forward / rest timed apart."""
    import tifffile
    import torch

    import hdmap_ad.features.extract as ex
    from hdmap_ad.specs import BackboneConfig

    rng = np.random.default_rng(0)
    work = Path(p["work"])
    items = []
    for i in range(p["n_maps"]):
        path = work / "maps" / f"{i:04d}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, rng.random(tuple(p["map_shape"]), dtype=np.float32))
        items.append((f"m{i:04d}", str(path)))
    cfg = BackboneConfig.from_dict("vits14_random", {
        "model": p["model"], "weights": {"source": "random", "seed": 0},
        "input_size": p["input_size"], "resize": "bilinear", "layers": p["layers"],
        "patch_pool": p["patch_pool"], "batch_size": p["batch_size"]})
    out_paths = {layer: str(work / "features" / f"{layer}.parquet") for layer in cfg.layers}
    timed = {"load": 0.0, "batches": []}
    held: dict = {}
    load_backbone, extract_batch = ex.load_backbone, ex.extract_batch

    def timed_load(*args, **kwargs):
        t0 = time.perf_counter()
        out = load_backbone(*args, **kwargs)
        timed["load"] += time.perf_counter() - t0
        held["model"] = out[0]
        return out

    def timed_batch(model, x, *args, **kwargs):
        held.setdefault("x", x[:1].clone())
        t0 = time.perf_counter()
        out = extract_batch(model, x, *args, **kwargs)
        timed["batches"].append((len(x), time.perf_counter() - t0))
        return out

    ex.load_backbone, ex.extract_batch = timed_load, timed_batch
    t0 = time.perf_counter()
    ex.extract_to_cache(items, cfg, out_paths, progress=True)
    total = time.perf_counter() - t0
    ex.load_backbone, ex.extract_batch = load_backbone, extract_batch

    model = held["model"]
    wanted = sorted(set(ex.layer_indices(model, cfg.layers)))
    flops = vit_flops(model, held["x"], wanted)
    forward = sum(s for _, s in timed["batches"])
    # the first batch carries one-off kernel set-up; later batches give the steady rate
    steady = timed["batches"][1:] or timed["batches"]
    per_map_forward = sum(s for _, s in steady) / sum(n for n, _ in steady)
    n = p["n_maps"]
    rest = max(0.0, total - timed["load"] - forward)
    grid = tuple(int(x) for x in model.patch_embed.grid_size)
    cache_bytes = sum(Path(q).stat().st_size for q in out_paths.values())
    return {
        "maps": n, "batch_size": cfg.batch_size, "seconds": total, "load_s": timed["load"],
        "forward_s": forward, "rest_s": rest, "batch_seconds": [s for _, s in timed["batches"]],
        "per_map_forward_s": per_map_forward, "per_map_rest_s": rest / n,
        "per_map_s": per_map_forward + rest / n, "flops_per_map": flops,
        "grid": list(grid), "dim": int(sum(int(model.feature_info[i]["num_chs"])
                                          for i in ex.layer_indices(model, cfg.layers))),
        "cache_bytes_per_map": cache_bytes / n, "threads": torch.get_num_threads(),
        "feature_paths": list(out_paths.values()), "image_ids": [i for i, _ in items],
    }


def vit_flops(model, x, indices: list[int]) -> float:
    """FLOPs of one ``forward_intermediates`` call on ``x`` (one map).

    torch's ``FlopCounterMode`` counts the linear layers and the patch embedding; the CPU
    attention kernel is not counted, so each run block's attention (QK^T and AV:
    ``4 x tokens^2 x width``) is added where the counter has no attention entry.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.forward_intermediates(x, indices=indices, intermediates_only=True,
                                    stop_early=True)
    total = float(counter.get_total_flops())
    if not any("attention" in str(op) for op in counter.get_flop_counts().get("Global", {})):
        tokens = int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1))
        total += (max(indices) + 1) * 4.0 * tokens**2 * int(model.embed_dim) * len(x)
    return total / len(x)


def _child_bank(p: dict) -> dict:
    """The PatchCore bank step's selection on ``patch_like`` features (fallback harness).

    ``passes``: full reads of the (projected) descriptor matrix by the selection, i.e. the
    points its distance blocks were computed against over ``N`` (``blocks`` where the
    selection does not report the points).
    """
    import inspect

    from coreset_scale import patch_like

    from hdmap_ad.components import coreset as cs

    x = patch_like(p["n"], p["dim"])
    n, k = len(x), cs.coreset_size(len(x), p["ratio"])
    counts: dict = {}
    t0 = time.perf_counter()
    if "counts" in inspect.signature(cs.greedy_coreset).parameters:
        cs.greedy_coreset(x, p["ratio"], p["seed"], proj_dim=p["proj_dim"], counts=counts,
                          progress=True)
    else:  # greedy_coreset's own steps, with the counts of its selection loop
        aug = cs._augmented(cs.random_projection(x, p["proj_dim"], p["seed"]))
        start = int(np.random.default_rng(p["seed"]).integers(n))
        cs._select_numpy(aug, k, start, counts=counts, progress=True)
        del aug
    seconds = time.perf_counter() - t0
    passes = counts.get("points_read", counts["passes"] * n) / n
    return {"seconds": seconds, "input_bytes": int(x.nbytes), "picks": k,
            "blocks": counts["passes"], "passes": passes, "passes_per_pick": passes / k,
            "selection_dim": min(p["dim"], p["proj_dim"] or p["dim"])}


def _child_score(p: dict) -> dict:
    """``score_routed`` over the extracted caches against a bank of ``bank_rows`` patches."""
    from coreset_scale import patch_like

    from hdmap_ad.features.descriptors import DescriptorSource
    from hdmap_ad.methods.patchcore import PatchCoreModel, PatchCoreOptions
    from hdmap_ad.scoring.score import score_routed

    bank = patch_like(p["bank_rows"], p["dim"], seed=1)
    t0 = time.perf_counter()
    model = PatchCoreModel(bank, np.zeros((len(bank), 2), np.int64),
                           PatchCoreOptions(coreset_ratio=p["ratio"],
                                            num_neighbors=p["num_neighbors"]))
    model.index  # noqa: B018  (builds the faiss index, as the score step's first batch does)
    index_s = time.perf_counter() - t0
    source = DescriptorSource(p["feature_paths"], p["image_ids"], stream=True)
    read = {"s": 0.0}

    def desc_of(sel):
        t = time.perf_counter()
        out = source(sel)
        read["s"] += time.perf_counter() - t
        return out

    n = len(p["image_ids"])
    t0 = time.perf_counter()
    score_routed(desc_of, np.full(n, "mixed", dtype=object), {"mixed": model}, progress=True)
    seconds = time.perf_counter() - t0
    return {"maps": n, "bank_rows": len(bank), "dim": p["dim"], "index_s": index_s,
            "seconds": seconds, "read_s": read["s"], "search_s": seconds - read["s"],
            "per_map_s": seconds / n, "per_map_read_s": read["s"] / n}


def _child_metrics(p: dict) -> dict:
    """Image metrics (as ``build_metrics`` runs them) and ``masked_pixel_metrics``."""
    from PIL import Image

    from hdmap_ad.metrics.image import best_accuracy, detection_metrics
    from hdmap_ad.metrics.pixel import masked_pixel_metrics

    rng = np.random.default_rng(0)
    n, (h, w), grid = p["n_maps"], p["map_shape"], p["grid"]
    good = np.arange(n) % 2 == 0
    paths = []
    for i in range(n):
        if good[i]:
            paths.append("")
            continue
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, max(1, h - 6)), rng.integers(0, max(1, w - 12))
        mask[y : y + 6, x : x + 12] = 255
        paths.append(str(Path(p["work"]) / f"mask_{i:04d}.png"))
        Image.fromarray(mask).save(paths[-1])
    patch_scores = rng.random((n, *grid), dtype=np.float32)
    scores = patch_scores.reshape(n, -1).max(axis=1).astype(np.float64)
    y = (~good).astype(np.int64)
    t0 = time.perf_counter()
    _, best = best_accuracy(y, scores)
    for part in (slice(None), slice(0, n // 2), slice(n // 2, None)):  # overall, 2 conditions
        detection_metrics(y[part], scores[part], best, float(np.median(scores)))
    image_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    masked_pixel_metrics(patch_scores, paths, good, (h, w), progress=True)
    pixel_s = time.perf_counter() - t0
    return {"maps": n, "pixels": n * h * w, "image_s": image_s, "pixel_s": pixel_s,
            "seconds": image_s + pixel_s}


CHILDREN = {"extract": _child_extract, "bank": _child_bank, "score": _child_score,
            "metrics": _child_metrics}


def run_child(step: str, params: dict, tmp: Path) -> dict:
    """Run ``CHILDREN[step]`` in its own process; its result plus ``peak_rss_bytes``.

    The launcher (``benchmarks_common``) measures the child's own peak RSS; the child's
    progress bars go to this process's stderr.
    """
    spec, out, rss = tmp / f"{step}_in.json", tmp / f"{step}_out.json", tmp / f"{step}_rss.json"
    spec.write_text(json.dumps(params))
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss), sys.executable,
                           str(Path(__file__).resolve()), "--child", step, str(spec), str(out)],
                          cwd=REPO)
    measured = json.loads(rss.read_text() or "{}")
    if proc.returncode != 0 or measured.get("returncode") != 0 or not out.exists():
        raise SystemExit(f"scale.py: the {step} child failed (see its messages above)")
    result = json.loads(out.read_text())
    result["peak_rss_bytes"] = int(measured["peak_rss_mb"] * 2**20)
    result["wall_s"] = measured["wall_s"]
    return result


def bank_step(n: int, dim: int, ratio: float, tmp: Path, proj_dim: int | None) -> dict:
    """One bank-step measurement: ``benchmarks/bank_step.py`` where present, else our child."""
    try:
        from bank_step import bank_step_benchmark
    except ImportError:
        bank_step_benchmark = None
    if bank_step_benchmark is not None:
        import inspect

        params = inspect.signature(bank_step_benchmark).parameters
        extra = {"proj_dim": proj_dim, "progress": True}
        row = dict(bank_step_benchmark(n, dim, ratio,
                                       **{k: v for k, v in extra.items() if k in params}))
        row.setdefault("harness", "bank_step.bank_step_benchmark")
    else:
        row = run_child("bank", {"n": n, "dim": dim, "ratio": ratio, "seed": 0,
                                 "proj_dim": proj_dim}, tmp)
        row["harness"] = "scale.py (greedy_coreset's steps)"
    row.update(n=n, dim=dim, ratio=ratio)
    row.setdefault("selection_dim", min(dim, proj_dim or dim))
    row.setdefault("passes_per_pick", row["passes"] / row["picks"])
    row["rss_over_input"] = row["peak_rss_bytes"] / row["input_bytes"]
    row["rss_ok"] = row["rss_over_input"] < RSS_LIMIT
    return row


# ------------------------------------------------------------------- extrapolation


def cpu_sgemm_gflops() -> float:
    """This machine's sustained float32 GEMM rate (numpy BLAS, 2048^3, best of 3)."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def power_law(rows: list[dict], n: float, key: str) -> tuple[float, str]:
    """``key`` at ``n`` from measured rows: a power law through the two enclosing sizes
    (below the smallest: the two smallest); above the largest size, as ``n^2`` from it (picks
    and the length of a pass both grow with n; small sizes are dominated by fixed costs, so
    their slope would understate the growth)."""
    pts = sorted((r["n"], r[key]) for r in rows)
    ns = [q[0] for q in pts]
    if n in ns:
        return pts[ns.index(n)][1], "measured"
    if len(pts) == 1 or n > ns[-1]:
        n0, t0 = pts[-1]
        return t0 * (n / n0) ** 2, f"extrapolated from {n0:,} as n^2"
    i = max(bisect.bisect_left(ns, n), 1)
    (n1, t1), (n2, t2) = pts[i - 1], pts[i]
    slope = math.log(t2 / t1) / math.log(n2 / n1)
    how = "interpolated" if n1 <= n <= n2 else "extrapolated"
    return t1 * (n / n1) ** slope, f"{how} from {n1:,} and {n2:,} (n^{slope:.2f})"


def study_estimate(ext: dict, scores: dict, metrics: dict, bank_rows: list[dict],
                   study: dict, cpu_gflops: float) -> dict:
    """Per-domain and whole-study seconds per step, CPU (this machine) and GPU (estimate).

    The totals assume ``deploy_folds: 0``; ``reference_cv`` adds what the default 4 folds
    cost: 4 more fits on 3/4 of the train patches, and the 1000 references scored once each
    against a bank 3/4 the size (search time taken as proportional to the bank).
    """
    maps = study["train_maps"] + study["test_maps"]
    patches = int(np.prod(ext["grid"]))
    n_train = study["train_maps"] * patches
    d = ext["dim"]
    steps = [{
        "step": "extraction", "ratio": None, "detail": f"{maps:,} maps",
        "cpu_s": ext["load_s"] + maps * ext["per_map_s"],
        "basis": f"extrapolated from {ext['maps']} maps (per map x {maps:,})",
        "peak_rss_bytes": ext["peak_rss_bytes"],
        "gpu_s": ext["load_s"] + maps * (ext["flops_per_map"] / (GPU["vit_tflops"] * 1e12)
                                         + ext["per_map_rest_s"]),
        "flops": maps * ext["flops_per_map"],
    }]
    for ratio in study["ratios"]:
        rows = [r for r in bank_rows if r["ratio"] == ratio and r["dim"] == BANK_DIM]
        if rows:
            cpu, basis = power_law(rows, n_train, "seconds")
            rss = min(rows, key=lambda r: abs(r["n"] - n_train))
            k = math.ceil(ratio * n_train)
            p = min(d, rss["selection_dim"])
            gpu = (2.0 * n_train * d * p / (cpu_gflops * 1e9)  # projection: numpy, on the CPU
                   + k * n_train * (p + 4) * 4 / (GPU["memory_tb_s"] * 1e12)
                   + k * GPU["per_pick_overhead_s"])
            steps.append({
                "step": "bank", "ratio": ratio, "detail": f"{n_train:,} patches -> {k:,}",
                "cpu_s": cpu, "basis": basis,
                "peak_rss_bytes": rss["peak_rss_bytes"] * n_train / rss["n"],
                "gpu_s": gpu, "passes_per_pick": power_law(rows, n_train, "passes_per_pick")[0],
            })
        sc = scores.get(str(ratio))
        if sc:
            q = study["test_maps"] * patches
            search_flops = 2.0 * q * sc["bank_rows"] * d
            steps.append({
                "step": "scoring", "ratio": ratio,
                "detail": f"{study['test_maps']:,} maps vs {sc['bank_rows']:,} bank patches",
                "cpu_s": sc["index_s"] + study["test_maps"] * sc["per_map_s"],
                "basis": f"extrapolated from {sc['maps']} maps (per map x "
                         f"{study['test_maps']:,})",
                "peak_rss_bytes": sc["peak_rss_bytes"],
                "gpu_s": sc["index_s"] + search_flops / (GPU["search_tflops"] * 1e12)
                + study["test_maps"] * sc["per_map_read_s"],
                "flops": search_flops,
            })
    scale = study["test_maps"] / metrics["maps"]
    steps.append({
        "step": "metrics", "ratio": None, "detail": f"{study['test_maps']:,} maps, pixel masks",
        "cpu_s": metrics["seconds"] * scale,
        "basis": "measured" if scale == 1 else f"scaled from {metrics['maps']} maps",
        "peak_rss_bytes": metrics["peak_rss_bytes"], "gpu_s": metrics["seconds"] * scale,
    })
    totals = {}
    for ratio in study["ratios"]:
        part = [s for s in steps if s["ratio"] in (None, ratio)]
        if len(part) == 4:  # extraction, bank, scoring, metrics
            totals[str(ratio)] = {
                "domain_cpu_s": sum(s["cpu_s"] for s in part),
                "study_cpu_s": study["domains"] * sum(s["cpu_s"] for s in part),
                "domain_gpu_s": sum(s["gpu_s"] for s in part),
                "study_gpu_s": study["domains"] * sum(s["gpu_s"] for s in part),
                "peak_rss_bytes": max(s["peak_rss_bytes"] for s in part),
            }
    reference_cv = {}
    for ratio in study["ratios"]:
        bank = next((s for s in steps if s["step"] == "bank" and s["ratio"] == ratio), None)
        score = next((s for s in steps if s["step"] == "scoring" and s["ratio"] == ratio), None)
        rows = [r for r in bank_rows if r["ratio"] == ratio and r["dim"] == BANK_DIM]
        if bank and score:
            fold_fit = power_law(rows, 0.75 * n_train, "seconds")[0]
            per_map = (score["cpu_s"] - scores[str(ratio)]["index_s"]) / study["test_maps"]
            cpu = 4 * fold_fit + 0.75 * study["train_maps"] * per_map
            reference_cv[str(ratio)] = {"domain_cpu_s": cpu, "study_cpu_s": study["domains"] * cpu}
    for s in steps:
        s["study_cpu_s"] = study["domains"] * s["cpu_s"]
        s["study_gpu_s"] = study["domains"] * s["gpu_s"]
    return {"steps": steps, "totals": totals, "reference_cv": reference_cv,
            "patches_per_map": patches, "train_patches": n_train, "descriptor_dim": d}


# ------------------------------------------------------------------------- report


def dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def pct(r: float) -> str:
    return f"{r * 100:g}%"


def markdown(res: dict) -> str:
    st, est = res["study"], res["estimate"]
    e = res["extraction"]
    how = "python benchmarks/scale.py" + (" --quick" if res["quick"] else "")
    lines = [
        f"Measured {res['date']} by `{how}` on {res['machine']} (numpy float32 GEMM "
        f"{res['cpu_sgemm_gflops']:.0f} GFLOP/s).",
        "",
        f"Study: {st['domains']} domains x ({st['train_maps']:,} train + {st['test_maps']:,} "
        f"test) maps of {st['map_shape'][0]} x {st['map_shape'][1]}; ViT-S/14 "
        f"(`{st['model']}`, **random init**: same shapes and FLOPs, timing only) at "
        f"{st['input_size']} px, {' + '.join(st['layers'])} ({est['patches_per_map']:,} "
        f"patches x {est['descriptor_dim']}-d per map); full-train bank of "
        f"{est['train_patches']:,} patches per domain; exact flat search; `deploy_folds: 0`.",
        "",
        "| step | coreset | per domain | CPU, per domain | CPU, whole study | "
        "peak RSS GiB | GPU estimate, whole study | CPU figure is |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for s in est["steps"]:
        ratio = pct(s["ratio"]) if s["ratio"] is not None else ""
        lines.append(
            f"| {s['step']} | {ratio} | {s['detail']} | {dur(s['cpu_s'])} | "
            f"{dur(s['study_cpu_s'])} | {gib(s['peak_rss_bytes'])} | "
            f"~{dur(s['study_gpu_s'])} | {s['basis']} |")
    for ratio, t in est["totals"].items():
        lines.append(
            f"| **study total** | {pct(float(ratio))} | | {dur(t['domain_cpu_s'])} | "
            f"**{dur(t['study_cpu_s'])}** | {gib(t['peak_rss_bytes'])} | "
            f"**~{dur(t['study_gpu_s'])}** (estimate) | measured + extrapolated |")
    for ratio, t in est["reference_cv"].items():
        lines.append(
            f"| + reference CV (`deploy_folds: 4`, the default) | {pct(float(ratio))} | 4 fits "
            f"on 3/4, {st['train_maps']:,} maps scored | {dur(t['domain_cpu_s'])} | "
            f"{dur(t['study_cpu_s'])} | | | extrapolated |")
    g = res["gpu_assumptions"]
    lines += [
        "",
        f"GPU column: an **estimate**, not a measurement, for one {g['name']}: ViT FLOPs "
        f"({e['flops_per_map'] / 1e9:.1f} GFLOP per map) at {g['vit_tflops']:.0f} TFLOP/s "
        f"({g['vit_note']}); search FLOPs (2 x queries x bank x dim) at "
        f"{g['search_tflops']:.0f} TFLOP/s ({g['search_note']}); the coreset's GPU loop at "
        f"{g['memory_tb_s']} TB/s ({g['memory_note']}) + {g['per_pick_overhead_s'] * 1e6:.0f} "
        "us per pick; map reading, preprocessing, cache writing and reading, the projection "
        "and the metrics as measured on this CPU.",
        "",
        f"Extraction, measured on {e['maps']} maps (batch {e['batch_size']}): "
        f"{e['per_map_forward_s']:.2f} s/map forward, {e['per_map_rest_s']:.3f} s/map the rest "
        f"(read, preprocess, cache write), model load {e['load_s']:.1f} s; feature cache "
        f"{e['cache_bytes_per_map'] / 2**20:.1f} MiB per map "
        f"({e['cache_bytes_per_map'] * (st['train_maps'] + st['test_maps']) / 2**30:.1f} GiB "
        "per domain).",
    ]
    for ratio, sc in res["scoring"].items():
        lines.append(f"Scoring at {pct(float(ratio))} ({sc['bank_rows']:,} bank patches), "
                     f"measured on {sc['maps']} maps: {sc['per_map_s']:.2f} s/map "
                     f"({sc['per_map_read_s']:.3f} s/map reading the cache), index "
                     f"{sc['index_s']:.1f} s.")
    m = res["metrics"]
    lines.append(f"Metrics on {m['maps']:,} maps: image {m['image_s']:.2f} s, pixel "
                 f"{m['pixel_s']:.2f} s.")
    lines += [
        "",
        f"Bank step (patch-like descriptors; selection on a {res['proj_dim']}-d projection where "
        "wider, `coreset_proj_dim`). Passes: how many times the selection reads the whole "
        "(projected) descriptor matrix, in full reads' worth (the projection reads the input "
        f"once more). Target: peak RSS under {RSS_LIMIT:g}x the input descriptors.",
        "",
        "| patches | dim | coreset | picks | s | passes | passes per pick | input GiB | "
        f"peak RSS GiB | RSS / input | < {RSS_LIMIT:g}x |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = res["bank"] + ([res["target_row"]] if res["target_row"] else [])
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {pct(r['ratio'])} | {r['picks']:,} | "
            f"{r['seconds']:.1f} | {r['passes']:.1f} | {r['passes_per_pick']:.4f} | "
            f"{gib(r['input_bytes'])} | {gib(r['peak_rss_bytes'])} | "
            f"{r['rss_over_input']:.2f} | {'yes' if r['rss_ok'] else 'NO'} |")
    t = res["target_row"]
    lines.append("")
    if t:
        lines.append(f"Target row {t['n']:,} x {t['dim']}-d at {pct(t['ratio'])}: "
                     f"{t['seconds']:.1f} s (target {TARGET_ROW['seconds']:.0f} s): "
                     f"{'met' if t['time_ok'] else 'MISSED'}.")
    else:
        lines.append("Target row not run (--target-n 0).")
    met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in res["targets"].items()
                    if v is not None)
    lines.append(f"Targets: {met}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("STEP", "PARAMS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="small bank sizes, 4 maps, no target row (checks the harness)")
    ap.add_argument("--sizes", type=int, nargs="+", help=f"bank-step patches (default "
                    f"{' '.join(map(str, BANK_SIZES))}; --quick: 20000 80000)")
    ap.add_argument("--ratios", type=float, nargs="+", help="coreset ratios (default 0.01 0.1)")
    ap.add_argument("--target-n", type=int, help=f"patches of the target row (default "
                    f"{TARGET_ROW['n']}; 0 skips it; --quick: 0)")
    ap.add_argument("--target-dim", type=int, default=TARGET_ROW["dim"])
    ap.add_argument("--extract-maps", type=int,
                    help="maps timed through the backbone and scored (default 16; --quick: 4)")
    ap.add_argument("--input-size", type=int, default=STUDY["input_size"],
                    help="backbone input side in px (518 is the study's)")
    ap.add_argument("--metric-maps", type=int, default=STUDY["test_maps"],
                    help="maps the metrics are timed on")
    ap.add_argument("--proj-dim", type=int, default=256, help="coreset_proj_dim of the bank step")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    if args.child:
        step, spec, out = args.child
        result = CHILDREN[step](json.loads(Path(spec).read_text()))
        Path(out).write_text(json.dumps(result))
        return 0

    quick = args.quick
    sizes = args.sizes or ([20_000, 80_000] if quick else BANK_SIZES)
    ratios = args.ratios or STUDY["ratios"]
    target_n = args.target_n if args.target_n is not None else (0 if quick else TARGET_ROW["n"])
    n_maps = args.extract_maps or (4 if quick else 16)
    study = {**STUDY, "ratios": ratios, "input_size": args.input_size}
    result: dict = {"date": dt.date.today().isoformat(), "machine": machine_line(),
                    "machine_detail": machine(), "quick": quick, "study": study,
                    "proj_dim": args.proj_dim, "gpu_assumptions": GPU}

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp_name:
        tmp = Path(tmp_name)
        result["cpu_sgemm_gflops"] = cpu_sgemm_gflops()
        print(f"[scale] {result['machine']}; float32 GEMM {result['cpu_sgemm_gflops']:.0f} "
              "GFLOP/s", flush=True)

        print(f"[extraction] {n_maps} maps through random-init ViT-S/14 at {args.input_size} px",
              flush=True)
        ext = run_child("extract", {
            "work": str(tmp / "extract"), "n_maps": n_maps, "map_shape": study["map_shape"],
            "model": study["model"], "input_size": args.input_size, "layers": study["layers"],
            "patch_pool": study["patch_pool"],
            "batch_size": min(study["batch_size"], max(1, n_maps // 2))}, tmp)
        print(f"[extraction] {ext['per_map_s']:.2f} s/map, {ext['flops_per_map'] / 1e9:.1f} "
              f"GFLOP/map, peak RSS {gib(ext['peak_rss_bytes'])} GiB", flush=True)
        result["extraction"] = {k: v for k, v in ext.items()
                                if k not in ("feature_paths", "image_ids")}

        patches = int(np.prod(ext["grid"]))
        result["scoring"] = {}
        for ratio in ratios:
            rows = math.ceil(ratio * study["train_maps"] * patches)
            print(f"[scoring] {n_maps} maps vs a {pct(ratio)} bank of {rows:,} x {ext['dim']}",
                  flush=True)
            sc = run_child("score", {
                "feature_paths": ext["feature_paths"], "image_ids": ext["image_ids"],
                "bank_rows": rows, "dim": ext["dim"], "ratio": ratio,
                "num_neighbors": study["num_neighbors"]}, tmp)
            print(f"[scoring] {sc['per_map_s']:.2f} s/map", flush=True)
            result["scoring"][str(ratio)] = sc

        print(f"[metrics] image + pixel metrics on {args.metric_maps} maps", flush=True)
        (tmp / "metrics").mkdir()
        result["metrics"] = run_child("metrics", {
            "work": str(tmp / "metrics"), "n_maps": args.metric_maps,
            "map_shape": study["map_shape"], "grid": ext["grid"]}, tmp)
        print(f"[metrics] {result['metrics']['seconds']:.1f} s", flush=True)

        result["bank"] = []
        for n in sizes:
            for ratio in ratios:
                print(f"[bank] {n:,} x {BANK_DIM} at {pct(ratio)}", flush=True)
                row = bank_step(n, BANK_DIM, ratio, tmp, args.proj_dim)
                print(f"[bank] {row['seconds']:.1f} s, {row['passes_per_pick']:.4f} passes/pick"
                      f", RSS {row['rss_over_input']:.2f}x input", flush=True)
                result["bank"].append(row)
        result["target_row"] = None
        if target_n:
            print(f"[bank target] {target_n:,} x {args.target_dim} at "
                  f"{pct(TARGET_ROW['ratio'])}, target {TARGET_ROW['seconds']:.0f} s", flush=True)
            row = bank_step(target_n, args.target_dim, TARGET_ROW["ratio"], tmp, args.proj_dim)
            row["time_ok"] = row["seconds"] <= TARGET_ROW["seconds"]
            print(f"[bank target] {row['seconds']:.1f} s", flush=True)
            result["target_row"] = row

    result["estimate"] = study_estimate(ext, result["scoring"], result["metrics"],
                                        result["bank"], study, result["cpu_sgemm_gflops"])
    bank_all = result["bank"] + ([result["target_row"]] if result["target_row"] else [])
    result["targets"] = {
        f"bank peak RSS < {RSS_LIMIT:g}x input": all(r["rss_ok"] for r in bank_all),
        f"{target_n:,} x {args.target_dim} at 10% <= {TARGET_ROW['seconds']:.0f} s":
            result["target_row"]["time_ok"] if result["target_row"] else None,
    }
    write_outputs(args.out_dir, "scale", result, markdown(result))
    return 0 if all(v is not False for v in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
