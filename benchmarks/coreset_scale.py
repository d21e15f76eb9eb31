"""Greedy k-center coreset at scale: ours vs anomalib's ``KCenterGreedy``.

    python benchmarks/coreset_scale.py [--sizes 50000 200000 1000000] [--dim 1536]
                                       [--ratio 0.01] [--anomalib-seconds 300]

For each size N it makes N patch-like feature vectors (a seeded mixture of clusters on a
32-d latent space, mapped to ``dim`` channels through a random ReLU layer, as CNN features
are: non-negative, low intrinsic dimension), then times both samplers at the same coreset
size and reports peak RSS of ours, anomalib's per-point rate (its full selection is
extrapolated from that rate when it would exceed ``--anomalib-seconds``; the JSON says so),
and the coverage radius (max distance from a patch to its nearest selected patch, original
space) of both where both finished. Above 200k patches the radius is taken over a random
50k-patch sample (a lower bound; stated in the output). Writes
``results/benchmarks/coreset_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks_common import machine_line, write_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hdmap_ad.components.coreset import coreset_size, coverage_radius, greedy_coreset  # noqa: E402

ANOMALIB_PY = REPO / ".venv-anomalib" / "bin" / "python"
RADIUS_SAMPLE = 50_000


def patch_like(n: int, dim: int, seed: int = 0, chunk: int = 100_000,
               sample_seed: int | None = None) -> np.ndarray:
    """``(n, dim)`` float32 non-negative features with low intrinsic dimension.

    ``seed`` fixes the distribution (cluster centres, the ReLU layer); ``sample_seed`` (default
    ``seed``) draws the points, so two samples of one distribution differ only there.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, 32)).astype(np.float32) * 2.0
    w = rng.standard_normal((32, dim)).astype(np.float32) / np.float32(np.sqrt(32))
    if sample_seed is not None:
        rng = np.random.default_rng([seed, sample_seed])
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centres[rng.integers(64, size=m)] + rng.standard_normal((m, 32)).astype(np.float32)
        np.maximum(z @ w, 0.0, out=out[s : s + m])
    return out


def radius(x: np.ndarray, sel: np.ndarray, seed: int = 0) -> tuple[float, bool]:
    """Coverage radius, over a random sample when ``x`` is large (second value True)."""
    if len(x) <= 200_000:
        return coverage_radius(x, sel), False
    rows = np.random.default_rng(seed).choice(len(x), RADIUS_SAMPLE, replace=False)
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x[sel]))
    d2, _ = index.search(np.ascontiguousarray(x[np.sort(rows)]), 1)
    return float(np.sqrt(max(float(d2.max()), 0.0))), True


def one_size(n: int, dim: int, ratio: float, budget: float, tmp: Path) -> dict:
    x = patch_like(n, dim)
    k = coreset_size(n, ratio)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    ours_sel = greedy_coreset(x, ratio, seed=0)
    ours_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ours_r, sampled = radius(x, ours_sel)
    row = {
        "n": n, "dim": dim, "k": k, "input_gib": round(x.nbytes / 2**30, 2),
        "ours": {"seconds": ours_s, "points_per_s": (k - 1) / ours_s,
                 "peak_rss_mb": max(rss0, rss1), "coverage_radius": ours_r},
        "radius_sampled": sampled,
    }
    print(f"[{n}] ours {ours_s:.1f}s ({(k - 1) / ours_s:.0f} pts/s), radius {ours_r:.3f}",
          flush=True)
    if not ANOMALIB_PY.exists():
        row["anomalib"] = None
        return row
    path = tmp / "x.npy"
    np.save(path, x)
    del x
    out = tmp / "a.json"
    subprocess.run([str(ANOMALIB_PY), str(REPO / "benchmarks" / "anomalib_coreset.py"),
                    str(path), str(k), str(budget), str(out)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    a = json.loads(out.read_text())
    x = np.load(path, mmap_mode="r")
    a_r = radius(np.asarray(x), np.asarray(a.pop("indices")))[0] if a["finished"] else None
    a["coverage_radius"] = a_r
    a["seconds"] = a["projection_s"] + a["selection_s"]
    row["anomalib"] = a
    row["speedup"] = a["seconds"] / ours_s
    print(f"[{n}] anomalib {a['seconds']:.0f}s{' (extrapolated)' if not a['finished'] else ''}"
          f" ({a['points_per_s']:.1f} pts/s), radius {a_r}", flush=True)
    path.unlink()
    return row


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; ratio {result['ratio']}, dim {result['dim']}; "
             f"anomalib's selection timed for up to {result['anomalib_budget_s']:.0f} s.", "",
             "| patches | k | ours s | ours pts/s | ours peak RSS MB | anomalib s | "
             "anomalib pts/s | speed-up | radius ours | radius anomalib |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["sizes"]:
        a = r.get("anomalib") or {}
        est = " (extrapolated)" if a.get("selection_extrapolated") else ""
        ra = a.get("coverage_radius")
        lines.append(
            f"| {r['n']:,} | {r['k']:,} | {r['ours']['seconds']:.1f} | "
            f"{r['ours']['points_per_s']:.0f} | {r['ours']['peak_rss_mb']:.0f} | "
            f"{a.get('seconds', float('nan')):.0f}{est} | {a.get('points_per_s', float('nan')):.1f}"
            f" | {r.get('speedup', float('nan')):.0f}x | {r['ours']['coverage_radius']:.3f}"
            f"{' (sampled)' if r['radius_sampled'] else ''} | "
            f"{'-' if ra is None else f'{ra:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--anomalib-seconds", type=float, default=300.0)
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    result = {"machine": machine_line(), "ratio": args.ratio, "dim": args.dim,
              "anomalib_budget_s": args.anomalib_seconds, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench_coreset_") as tmp:
        for n in args.sizes:
            result["sizes"].append(one_size(n, args.dim, args.ratio, args.anomalib_seconds,
                                            Path(tmp)))
    write_outputs(args.out_dir, "coreset_scale", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
