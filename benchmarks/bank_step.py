"""The PatchCore bank step at scale: seconds, peak RSS and how often the selection reads the data.

    python benchmarks/bank_step.py [--n 779264] [--dim 168] [--ratio 0.1] [--threads 2]
                                   [--proj-dim 256] [--pythonpath OTHER_CHECKOUT/src]

Runs :func:`bank_step_benchmark` once and writes ``results/benchmarks/bank_step.json`` and
``.md``. ``--pythonpath`` runs another checkout's package instead (e.g. an older commit's
``src``, unpacked with ``git archive``), to compare with it on the same machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = (16, 16)  # patches per map in the benchmark's descriptors (when they divide n)
RSS_LIMIT = 3.0  # target: peak RSS under this many times the input descriptors' bytes


def bank_step_benchmark(n: int, dim: int, ratio: float, seed: int = 0,
                        proj_dim: int | None = 256, threads: int | None = None,
                        progress: bool = False, pythonpath: str | None = None) -> dict:
    """Time the fit step's bank code path on ``n x dim`` patch-like features, in a child.

    The child makes ``patch_like(n, dim)`` features (``benchmarks/coreset_scale.py``), shaped
    as maps of 16 x 16 patches where that divides ``n`` (else ``(n, 1, 1, dim)``), and runs
    what ``hdmap_ad fit`` runs on its descriptors for an ungated PatchCore experiment:
    ``build_bank`` (``PatchCore.fit``: checks, greedy coreset, bank), ``bank_metadata`` and
    ``save_models`` into a temporary folder. Being its own process (started through a small
    launcher), its peak RSS is its own.

    Args:
        n, dim: patches and channels of the input descriptors (float32).
        ratio: ``coreset_ratio``; ``proj_dim``: ``coreset_proj_dim``; ``seed``: the
            experiment seed (coreset start), also the features' seed.
        threads: BLAS / OpenMP threads of the child (``OMP_NUM_THREADS`` and the like);
            None: as this process's environment says.
        progress: the selection's progress bar on stderr.
        pythonpath: the ``hdmap_ad`` package to run (another checkout's ``src``); None: ours.

    Returns:
        dict with ``seconds`` (bank step, excluding making the features), ``select_s`` (the
        coreset selection alone), ``peak_rss_bytes`` (the child's peak), ``input_rss_bytes``
        (its peak once the features existed, before the step), ``input_bytes`` (the
        descriptors), ``rss_over_input`` and ``rss_ok`` (below ``RSS_LIMIT``), ``picks``,
        ``blocks`` (distance passes of the selection: the times it computed distances for
        a block of picks or candidates), ``passes`` (full reads of the descriptor matrix's
        worth: points read over ``n``; ``blocks`` where the selection does not count points),
        ``passes_per_pick``, ``distance_passes`` (point-centre distances computed over ``n``;
        the textbook loop computes ``picks - 1``), ``counts`` (the selection's own) and
        ``selection_dim``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [pythonpath or str(REPO / "src"), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    from benchmarks_common import _LAUNCHER

    params = {"n": n, "dim": dim, "ratio": ratio, "seed": seed, "proj_dim": proj_dim,
              "progress": progress}
    with tempfile.TemporaryDirectory(prefix="bench_bank_") as tmp:
        spec, out, rss = (Path(tmp) / name for name in ("in.json", "out.json", "rss.json"))
        spec.write_text(json.dumps(params))
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss), sys.executable,
                               str(Path(__file__).resolve()), "--child", str(spec), str(out)],
                              env=env, cwd=REPO)
        measured = json.loads(rss.read_text() or "{}")
        if proc.returncode != 0 or measured.get("returncode") != 0 or not out.exists():
            raise RuntimeError("bank_step_benchmark: the child failed (see its stderr)")
        row = json.loads(out.read_text())
    row["peak_rss_bytes"] = int(measured["peak_rss_mb"] * 2**20)
    row["rss_over_input"] = row["peak_rss_bytes"] / row["input_bytes"]
    row["rss_ok"] = row["rss_over_input"] < RSS_LIMIT
    row["threads"] = threads
    return row


def _child(spec: Path, out: Path) -> None:
    """The measured process: features, then the bank step (see :func:`bank_step_benchmark`)."""
    import importlib

    import pandas as pd

    from hdmap_ad.banks import bank
    from hdmap_ad.components import coreset
    from hdmap_ad.config import ExperimentConfig

    # after hdmap_ad: coreset_scale puts our own src first on the path
    patch_like = importlib.import_module("coreset_scale").patch_like

    p = json.loads(spec.read_text())
    n, dim = p["n"], p["dim"]
    per_map = GRID[0] * GRID[1]
    shape = (n // per_map, *GRID, dim) if n % per_map == 0 else (n, 1, 1, dim)
    desc = patch_like(n, dim, seed=p["seed"]).reshape(shape)
    input_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    refs = pd.DataFrame({"image_id": [f"m{i}" for i in range(shape[0])],
                         "condition": "good", "p90": 0.0})
    exp = ExperimentConfig.from_dict("bench", {
        "backbone": "b", "layers": ["x"], "gate": "mixed", "seed": p["seed"],
        "references": {"protocol": "test_good_holdout"},
        "method": {"name": "patchcore", "coreset_ratio": p["ratio"],
                   "coreset_proj_dim": p["proj_dim"]}})

    # the selection's counts, whichever version of greedy_coreset this package has
    counts: dict = {}
    select = {"s": 0.0}
    original = coreset.greedy_coreset

    def counted(*args, **kwargs):
        t = time.perf_counter()
        if "counts" in inspect.signature(original).parameters:
            got = original(*args, counts=counts, **kwargs)
        else:
            inner = coreset._select_numpy

            def loop(*a, **kw):
                return inner(*a, **{**kw, "counts": counts})

            coreset._select_numpy = loop
            try:
                got = original(*args, **kwargs)
            finally:
                coreset._select_numpy = inner
        select["s"] += time.perf_counter() - t
        return got

    coreset.greedy_coreset = counted
    with tempfile.TemporaryDirectory(prefix="bank_") as folder:
        t0 = time.perf_counter()
        models, fit, assignment = bank.build_bank(refs, desc, exp, progress=p["progress"])
        meta = bank.bank_metadata(exp, refs, assignment, fit, models, desc.shape[1:4])
        bank.save_models(Path(folder) / "model", models, exp)
        bank.write_bank_metadata(Path(folder) / "model.json", meta)
        seconds = time.perf_counter() - t0
    picks = int(models["mixed"].counts()["kept"])
    passes = counts.get("points_read", counts.get("passes", 0) * n) / n
    row = {"n": n, "dim": dim, "ratio": p["ratio"], "seconds": seconds, "select_s": select["s"],
           "input_bytes": int(desc.nbytes), "input_rss_bytes": int(input_rss), "picks": picks,
           "blocks": counts.get("passes"), "passes": passes, "passes_per_pick": passes / picks,
           "distance_passes": counts["distances"] / n if "distances" in counts else None,
           "counts": counts, "selection_dim": min(dim, p["proj_dim"] or dim)}
    out.write_text(json.dumps(row))


def markdown(row: dict, machine: str) -> str:
    dist = row["distance_passes"]
    return (f"Machine: {machine}; threads {row['threads'] or 'default'}.\n\n"
            "| patches | dim | ratio | picks | seconds | selection s | blocks | passes "
            "(points read / N) | passes per pick | distances / N | peak RSS MB | "
            "RSS / input |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {row['n']:,} | {row['dim']} | {row['ratio']} | {row['picks']:,} | "
            f"{row['seconds']:.1f} | {row['select_s']:.1f} | {row['blocks']} | "
            f"{row['passes']:.1f} | {row['passes_per_pick']:.5f} | "
            f"{'-' if dist is None else f'{dist:,.0f}'} | "
            f"{row['peak_rss_bytes'] / 2**20:.0f} | {row['rss_over_input']:.2f} |\n")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        _child(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=779_264)
    ap.add_argument("--dim", type=int, default=168)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--proj-dim", type=int, default=256)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--pythonpath")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    from benchmarks_common import machine_line, write_outputs

    row = bank_step_benchmark(args.n, args.dim, args.ratio, proj_dim=args.proj_dim,
                              threads=args.threads, progress=True, pythonpath=args.pythonpath)
    write_outputs(args.out_dir, "bank_step", row, markdown(row, machine_line()))
    return 0 if row["rss_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
