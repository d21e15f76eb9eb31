"""Peak RSS of the scoring step does not grow with the number of test maps.

    python benchmarks/scoring_memory.py [--n-test 800] [--factor 4]

Builds two domains that differ only in test size (``n-test`` and ``factor x n-test`` maps;
the demo's 16 + 16 hold-out references), with feature caches of the demo backbone's shape
(33 x 33 grid, 168 channels: 0.7 MB per map) filled with seeded random values, then runs the
real ``bank`` and ``score`` CLI steps on each and records wall time and peak RSS (``wait4``).
Writes ``results/benchmarks/scoring_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from benchmarks_common import machine_line, run_measured, write_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hdmap_ad.data.manifest import read_manifest  # noqa: E402
from hdmap_ad.features.cache import open_feature_writer  # noqa: E402

GRID = (33, 33, 168)
EXPERIMENT = {
    "key": "mem", "backbone": "bb", "layers": ["blocks.2"],
    "references": {"protocol": "test_good_holdout", "n_cold": 16, "n_warm": 16,
                   "pick": "random", "seed": 0},
    "gate": "p90", "seed": 0,
    "method": {"name": "patchcore", "coreset_ratio": 0.1, "num_neighbors": 9},
}


def _hdmap(argv: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return run_measured([sys.executable, "-m", "hdmap_ad", *argv], env=env)


def build(root: Path, n_test: int) -> tuple[Path, Path]:
    """A domain of ``n_test`` test maps (half good, half fault) and its random feature cache."""
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 4), ("test/good", n_test // 2), ("test/fault", n_test // 2)):
        d = root / "domain" / sub
        d.mkdir(parents=True)
        for i in range(n):
            warm = sub != "train/good" and i >= n // 2
            tifffile.imwrite(d / f"{i:06d}.tiff",
                             (rng.random((31, 95)) * (1.3 if warm else 1.0)).astype(np.float32))
    manifest = root / "manifest.parquet"
    _hdmap(["manifest", "--domain-root", str(root / "domain"), "--out", str(manifest)])
    ids = read_manifest(manifest).image_id.tolist()
    cache = root / "blocks.2.parquet"
    with open_feature_writer(cache, GRID, {"layer": "blocks.2", "note": "random"}) as w:
        for s in range(0, len(ids), 32):
            batch = ids[s : s + 32]
            w.write(batch, rng.random((len(batch), *GRID), dtype=np.float32))
    return manifest, cache


def measure(root: Path, n_test: int) -> dict:
    manifest, cache = build(root, n_test)
    spec = json.dumps(EXPERIMENT)
    common = ["--manifest", str(manifest), "--features", str(cache), "--spec", spec,
              "--meta", str(root / "bank.json")]
    bank = _hdmap(["fit", *common, "--out", str(root / "model")])
    score = _hdmap(["score", *common, "--model", str(root / "model"),
                    "--out", str(root / "scores.parquet")])
    return {"n_test": n_test, "feature_cache_mb": cache.stat().st_size / 2**20,
            "bank": bank, "score": score}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    runs = []
    for n in (args.n_test, args.factor * args.n_test):
        with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
            runs.append(measure(Path(tmp), n))
        print(f"{n} test maps: score peak RSS {runs[-1]['score']['peak_rss_mb']:.0f} MB, "
              f"{runs[-1]['score']['wall_s']:.1f} s", flush=True)
    growth = runs[1]["score"]["peak_rss_mb"] / runs[0]["score"]["peak_rss_mb"]
    result = {"machine": machine_line(), "grid": list(GRID), "runs": runs,
              "score_peak_rss_ratio": growth, "test_size_ratio": args.factor}
    lines = [f"Machine: {result['machine']}.", "",
             "| test maps | feature cache MB | score s | score peak RSS MB |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['n_test']} | {r['feature_cache_mb']:.0f} | {r['score']['wall_s']:.1f} | "
              f"{r['score']['peak_rss_mb']:.0f} |" for r in runs]
    lines += ["", f"Peak RSS ratio {growth:.2f} for {args.factor}x the test maps."]
    write_outputs(args.out_dir, "scoring_memory", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
