"""Side by side: our pipeline vs anomalib's PatchCore, same data, backbone, weights, layers, bank.

Run by ``make bench`` (which first builds ``.venv-anomalib`` with anomalib from PyPI):

    python benchmarks/vs_anomalib.py [--datasets synthetic_C mvtec_bottle] [--out-dir DIR]

For each dataset it
1. scans the maps into our manifest and writes the preprocessed network inputs of the train
   and test maps (our reader; so both sides see the same pixels) and the backbone's timm
   state dict (the offline package weights) for anomalib;
2. runs our CLI steps (``extract``, ``fit``, ``score``) as separate processes, each timed
   (wall clock) with its peak RSS (``wait4``): whole train set in one mixed bank, the same
   coreset size, no deployable-threshold folds (anomalib has none);
3. runs anomalib's ``PatchcoreModel`` on the same inputs in its own environment
   (``benchmarks/anomalib_side.py``), phase by phase;
4. writes ``results/benchmarks/vs_anomalib.json`` and ``.md``: wall time and peak RSS per phase,
   the ratios anomalib / ours, both AUROCs (same AUROC function) and the issue's targets.

Timing favours anomalib where the two differ: its side reads inputs already decoded and
resized (ours decodes the files inside ``extract``), and its times exclude process start and
imports (ours include them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from benchmarks_common import machine, run_measured, write_outputs
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hdmap_ad.config import spec_json  # noqa: E402

ANOMALIB_PY = REPO / ".venv-anomalib" / "bin" / "python"
SHARED = Path(os.environ.get("HDMAP_AD_SHARED", REPO.parent / "shared"))
CORESET_RATIO = 0.1
NUM_NEIGHBORS = 9
TARGETS = {"coreset_speedup_min": 20.0, "total_speedup_min": 5.0, "auroc_abs_diff_max": 0.005}


def _demo_backbone() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return {"key": "effnet_lite2", **params["backbones"]["effnet_lite2"]}


def datasets() -> dict[str, dict]:
    """Benchmark datasets: the synthetic demo's domain C and MVTec bottle (from ../shared)."""
    lite2 = _demo_backbone()
    return {
        "synthetic_C": {
            "root": REPO / "data" / "synthetic" / "domain_C",
            "kind": "synthetic",
            "backbone": lite2,
        },
        "mvtec_bottle": {
            "root": SHARED / "datasets" / "mvtec_bottle_256",
            "kind": "mvtec",
            "backbone": {**lite2, "input_size": 256},
        },
    }


def ensure_synthetic(root: Path) -> None:
    """Generate the demo's synthetic domain C if it is not there yet."""
    if root.is_dir():
        return
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _run_ours(["synth", "--domain", "C", "--spec", json.dumps(params["dataset"]["synthetic"]),
               "--out", str(root)])


def _run_ours(args: list[str]) -> dict[str, float]:
    """Run ``python -m hdmap_ad ARGS``; wall seconds and the process's own peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return run_measured([sys.executable, "-m", "hdmap_ad", *args], env=env)


def prepare_inputs(manifest: pd.DataFrame, backbone: dict, work: Path) -> dict[str, str]:
    """Preprocessed train/test inputs (.npy) and the timm state dict for anomalib's side."""
    import torch

    from hdmap_ad.config import BackboneConfig
    from hdmap_ad.features.extract import preprocess_maps, read_batch
    from hdmap_ad.features.preprocess import norm_stats
    from hdmap_ad.features.weights import load_backbone

    spec = dict(backbone)
    cfg = BackboneConfig.from_dict(spec.pop("key"), spec)
    model, _ = load_backbone(cfg)
    mean, std = norm_stats(cfg, model)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, work / "weights.pt")
    out = {"weights": str(work / "weights.pt")}
    for split in ("train", "test"):
        rows = manifest[manifest.split == split]
        arr = None
        for s in range(0, len(rows), 64):
            chunk = rows.iloc[s : s + 64]
            maps, _ = read_batch(list(zip(chunk.image_id, chunk.path, strict=True)), None)
            x = preprocess_maps(maps, cfg, mean, std).numpy()
            if arr is None:
                arr = np.lib.format.open_memmap(work / f"{split}.npy", mode="w+",
                                                dtype=np.float32, shape=(len(rows), *x.shape[1:]))
            arr[s : s + len(x)] = x
        assert arr is not None
        arr.flush()
        out[split] = str(work / f"{split}.npy")
    return out


def run_ours(work: Path, manifest_path: Path, backbone: dict) -> dict:
    """Our CLI steps; returns phases, bank size and test scores keyed by image id."""
    feats = [str(work / "features" / f"{layer}.parquet") for layer in backbone["layers"]]
    exp = spec_json({
        "key": "bench", "backbone": backbone["key"], "layers": backbone["layers"],
        "references": {"protocol": "full"}, "gate": "mixed", "seed": 0, "deploy_folds": 0,
        "method": {"name": "patchcore", "coreset_ratio": CORESET_RATIO,
                   "num_neighbors": NUM_NEIGHBORS},
    })
    bank, meta, scores = work / "model", work / "model.json", work / "scores.parquet"
    phases = {
        "extract": _run_ours(["extract", "--manifest", str(manifest_path), "--spec",
                              spec_json(backbone), "--out-dir", str(work / "features"),
                              "--quiet"]),
        "coreset": _run_ours(["fit", "--manifest", str(manifest_path), "--features", *feats,
                              "--spec", exp, "--out", str(bank), "--meta", str(meta)]),
        "scoring": _run_ours(["score", "--manifest", str(manifest_path), "--features", *feats,
                              "--spec", exp, "--model", str(bank), "--meta", str(meta),
                              "--out", str(scores)]),
    }
    table = pq.read_table(scores, columns=["image_id", "role", "score"]).to_pandas()
    test = table[table.role == "test"]
    return {
        "phases": phases,
        "bank_size": json.loads(meta.read_text())["sub_banks"]["mixed"]["kept"],
        "scores": dict(zip(test.image_id, test.score, strict=True)),
    }


def run_anomalib(work: Path, inputs: dict[str, str], backbone: dict, bank_size: int,
                 n_patches: int) -> dict:
    """anomalib's side in its own environment, asked for the same bank size as ours."""
    if not ANOMALIB_PY.exists():
        raise SystemExit(f"{ANOMALIB_PY} missing: run `make bench` (it builds .venv-anomalib)")
    spec = {
        **inputs, "model": backbone["model"], "layers": backbone["layers"],
        # anomalib keeps int(N * ratio) points; this ratio gives exactly our bank size
        "coreset_ratio": (bank_size + 0.5) / n_patches,
        "num_neighbors": NUM_NEIGHBORS, "batch_size": backbone.get("batch_size", 32), "seed": 0,
    }
    (work / "anomalib_spec.json").write_text(json.dumps(spec))
    out = work / "anomalib_out.json"
    subprocess.run([str(ANOMALIB_PY), str(REPO / "benchmarks" / "anomalib_side.py"),
                    str(work / "anomalib_spec.json"), str(out)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.read_text())


def _reusable(previous: dict | None, ds: dict, data: dict, bank_size: int) -> dict | None:
    """A previous run's anomalib side for the same data, backbone and bank size, if any."""
    if not previous:
        return None
    def content(d: dict | None) -> dict:  # the same maps in another clone's folder match
        return {k: v for k, v in (d or {}).items() if k != "root"}

    same = ("maps_sha256" in data and content(previous.get("data")) == content(data)
            and previous.get("backbone") == ds["backbone"]
            and previous.get("bank_size", {}).get("anomalib") == bank_size)
    return previous if same else None


def compare(name: str, ds: dict, work: Path, previous: dict | None = None) -> dict:
    """Both sides on one dataset, and the comparison.

    ``previous``: this dataset's entry of an earlier ``vs_anomalib.json``; when its data,
    backbone and bank size match, its anomalib measurements are reused instead of re-run
    (anomalib's side takes about an hour on bottle; only ours is re-measured).
    """
    from hdmap_ad.data.manifest import read_manifest

    manifest_path = work / "manifest.parquet"
    manifest_step = _run_ours(["manifest", "--domain-root", str(ds["root"]), "--kind",
                               ds["kind"], "--out", str(manifest_path)])
    manifest = read_manifest(manifest_path)
    test = manifest[manifest.split == "test"].reset_index(drop=True)
    inputs = prepare_inputs(manifest, ds["backbone"], work)
    print(f"[{name}] ours ...", flush=True)
    ours = run_ours(work, manifest_path, ds["backbone"])
    ours["phases"]["manifest"] = manifest_step
    grid = np.load(inputs["train"], mmap_mode="r").shape
    n_patches = _n_patches(work, ds["backbone"], grid[0])
    data = {"root": str(ds["root"]), "kind": ds["kind"],
            "n_train": int((manifest.split == "train").sum()), "n_test": len(test),
            "train_patches": n_patches,
            "maps_sha256": hashlib.sha256(
                "\n".join(manifest.sort_values("image_id").sha256).encode()).hexdigest()}
    y = (test.label != "good").to_numpy(int)
    s_ours = np.array([ours["scores"][i] for i in test.image_id])
    auroc = {"ours": float(roc_auc_score(y, s_ours))}
    reuse = _reusable(previous, ds, data, ours["bank_size"])
    if reuse is None:
        print(f"[{name}] anomalib ...", flush=True)
        ano = run_anomalib(work, inputs, ds["backbone"], ours["bank_size"], n_patches)
        auroc["anomalib"] = float(roc_auc_score(y, np.asarray(ano["scores"])))
    else:
        print(f"[{name}] anomalib: reusing the earlier measurement", flush=True)
        auroc["anomalib"] = reuse["auroc"]["anomalib"]
    auroc["abs_diff"] = abs(auroc["ours"] - auroc["anomalib"])

    op = ours["phases"]
    ours_t = {
        "extraction": op["extract"], "coreset": op["coreset"], "scoring": op["scoring"],
        "total": {"wall_s": sum(p["wall_s"] for p in op.values()),
                  "peak_rss_mb": max(p["peak_rss_mb"] for p in op.values())},
    }
    if reuse is None:
        ano_t, ano_bank = _anomalib_phases(ano), ano["bank_size"]
        ano_env = {k: ano[k] for k in ("anomalib_version", "torch_version", "threads")}
    else:
        ano_t, ano_bank = reuse["anomalib"], reuse["bank_size"]["anomalib"]
        ano_env = {**reuse["anomalib_env"], "reused": True}
    ratios = {
        phase: {"wall": ano_t[phase]["wall_s"] / ours_t[phase]["wall_s"],
                "peak_rss": ano_t[phase]["peak_rss_mb"] / ours_t[phase]["peak_rss_mb"]}
        for phase in ours_t
    }
    return {
        "data": data,
        "backbone": ds["backbone"],
        "coreset_ratio": CORESET_RATIO,
        "num_neighbors": NUM_NEIGHBORS,
        "bank_size": {"ours": ours["bank_size"], "anomalib": ano_bank},
        "ours": ours_t,
        "anomalib": ano_t,
        "anomalib_env": ano_env,
        "ratio_anomalib_over_ours": ratios,
        "auroc": auroc,
        "targets_met": {
            "coreset_speedup": ratios["coreset"]["wall"] >= TARGETS["coreset_speedup_min"],
            "total_speedup": ratios["total"]["wall"] >= TARGETS["total_speedup_min"],
            "auroc_agree": auroc["abs_diff"] <= TARGETS["auroc_abs_diff_max"],
            "same_bank_size": ours["bank_size"] == ano_bank,
        },
    }


def _anomalib_phases(ano: dict) -> dict:
    """anomalib's phases in the comparison's terms (extraction = train + test forward)."""
    ap = ano["phases"]
    return {
        "extraction": {"wall_s": ap["extract_train"]["wall_s"] + ap["extract_test"]["wall_s"],
                       "peak_rss_mb": max(ap["extract_train"]["peak_rss_mb"],
                                          ap["extract_test"]["peak_rss_mb"])},
        "coreset": ap["coreset"], "scoring": ap["scoring"],
        "total": {"wall_s": ano["total_wall_s"],
                  "peak_rss_mb": max(p["peak_rss_mb"] for p in ap.values())},
    }


def _n_patches(work: Path, backbone: dict, n_train: int) -> int:
    """Train patches in our bank input: maps x finest grid."""
    from hdmap_ad.features.cache import read_metadata

    grids = [read_metadata(work / "features" / f"{layer}.parquet")["feature_shape"]
             for layer in backbone["layers"]]
    h, w = max((g[0], g[1]) for g in grids)
    return n_train * h * w


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['memory_gib']} GiB; CPU only.", ""]
    for name, r in result["datasets"].items():
        lines += [
            f"#### {name}: {r['data']['n_train']} train maps ({r['data']['train_patches']} "
            f"patches), {r['data']['n_test']} test maps, bank {r['bank_size']['ours']} "
            f"(ours) / {r['bank_size']['anomalib']} (anomalib)", "",
            "| phase | ours s | anomalib s | speed-up | ours peak RSS MB | anomalib peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for phase in ("extraction", "coreset", "scoring", "total"):
            o, a = r["ours"][phase], r["anomalib"][phase]
            lines.append(
                f"| {phase} | {o['wall_s']:.1f} | {a['wall_s']:.1f} | "
                f"{r['ratio_anomalib_over_ours'][phase]['wall']:.1f}x | "
                f"{o['peak_rss_mb']:.0f} | {a['peak_rss_mb']:.0f} |"
            )
        au = r["auroc"]
        lines += ["", f"AUROC: ours {au['ours']:.4f}, anomalib {au['anomalib']:.4f} "
                  f"(|diff| {au['abs_diff']:.4f}); targets met: "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets_met"].items()),
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(datasets()))
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--reuse-anomalib", metavar="JSON",
                    help="an earlier vs_anomalib.json: reuse its anomalib measurements where "
                         "data, backbone and bank size match (re-measures only our side)")
    args = ap.parse_args(argv)
    all_ds = datasets()
    previous = {}
    if args.reuse_anomalib:
        previous = json.loads(Path(args.reuse_anomalib).read_text())["datasets"]
    result = {"machine": machine(), "targets": TARGETS, "datasets": {}}
    for name in args.datasets:
        ds = all_ds[name]
        if name == "synthetic_C":
            ensure_synthetic(ds["root"])
        if not Path(ds["root"]).is_dir():
            print(f"[{name}] skipped: {ds['root']} not present", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
            result["datasets"][name] = compare(name, ds, Path(tmp), previous.get(name))
        print(json.dumps({k: result["datasets"][name][k] for k in
                          ("auroc", "ratio_anomalib_over_ours", "targets_met")}, indent=1),
              flush=True)
    write_outputs(args.out_dir, "vs_anomalib", result, markdown(result))
    return 0 if all(all(r["targets_met"].values()) for r in result["datasets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
