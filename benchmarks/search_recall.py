"""Approximate bank search (IVF, HNSW) against exact ``IndexFlatL2``: recall@1 and speed.

    python benchmarks/search_recall.py [--bank 200000] [--queries 20000] [--dim 168]

Bank and queries are patch-like features (see ``coreset_scale.patch_like``; 168 channels is
the demo backbone's width); queries are other draws from the bank's distribution.
Indexes are built by ``hdmap_ad.components.knn.build_index`` exactly as scoring builds them.
recall@1: share of queries whose approximate nearest item is the exact one; also the mean
relative error of the nearest distance (what the patch score sees). Writes
``results/benchmarks/search_recall.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from benchmarks_common import machine_line, write_outputs
from coreset_scale import patch_like

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hdmap_ad.components.knn import SearchConfig, build_index  # noqa: E402

CONFIGS = {
    "flat": SearchConfig(),
    "ivf nprobe 8": SearchConfig(index="ivf", nlist=1024, nprobe=8),
    "ivf nprobe 32": SearchConfig(index="ivf", nlist=1024, nprobe=32),
    "hnsw ef 64": SearchConfig(index="hnsw", hnsw_m=32, ef_search=64),
    "hnsw ef 128": SearchConfig(index="hnsw", hnsw_m=32, ef_search=128),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=168)
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    bank = patch_like(args.bank, args.dim, seed=0)
    queries = patch_like(args.queries, args.dim, seed=0, sample_seed=1)
    rows, exact_d, exact_i = [], None, None
    for name, cfg in CONFIGS.items():
        t0 = time.perf_counter()
        index = build_index(bank, cfg)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        d2, ids = index.search(queries, 1)
        searched = time.perf_counter() - t0
        d = np.sqrt(np.maximum(d2[:, 0], 0))
        if exact_i is None:
            exact_d, exact_i = d, ids[:, 0]
        rows.append({
            "index": name, "config": cfg.to_dict(), "build_s": built, "search_s": searched,
            "queries_per_s": args.queries / searched,
            "recall_at_1": float(np.mean(ids[:, 0] == exact_i)),
            "mean_rel_distance_error": float(np.mean((d - exact_d) / np.maximum(exact_d, 1e-12))),
        })
        print(f"{name}: build {built:.1f}s, {args.queries / searched:.0f} q/s, "
              f"recall@1 {rows[-1]['recall_at_1']:.3f}", flush=True)
    result = {"machine": machine_line(), "bank": args.bank, "queries": args.queries,
              "dim": args.dim, "rows": rows}
    lines = [f"Machine: {result['machine']}; bank {args.bank:,} x {args.dim}, "
             f"{args.queries:,} queries.", "",
             "| index | build s | queries/s | recall@1 | mean rel. distance error |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['index']} | {r['build_s']:.1f} | {r['queries_per_s']:.0f} | "
              f"{r['recall_at_1']:.3f} | {r['mean_rel_distance_error']:.4f} |" for r in rows]
    write_outputs(args.out_dir, "search_recall", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
