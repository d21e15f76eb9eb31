"""Caching proof: a bank-only param change re-runs no feature extraction, and what it saves.

    python benchmarks/caching.py [--domains C] [--experiments ungated gated]

Copies the project (code and workflow, the demo's params restricted to the given domains and
experiments) to a temp dir, then
1. cold run: ``snakemake all`` from nothing (synthetic data, manifests, features, banks, ...);
2. edits one experiment's ``method.coreset_ratio`` (0.1 -> 0.05) and asks Snakemake (dry run) which
   jobs of each rule it would run, then runs them.
Reports the jobs per rule of both runs, the extraction jobs of the second (must be 0) and
the wall time saved. Writes ``results/benchmarks/caching.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchmarks_common import machine_line, write_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.test_pipeline import _copy_project, _env, _jobs  # noqa: E402


def _snakemake(project: Path, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(["snakemake", "--cores", "all", "--profile", "profiles/default",
                           *args], cwd=project, env=_env(project), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", nargs="+", default=["C"])
    ap.add_argument("--experiments", nargs="+", default=["ungated", "gated"])
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["domains"] = args.domains
    params["experiments"] = {k: params["experiments"][k] for k in args.experiments}
    params["targets"] = {"experiments": list(args.experiments), "hypotheses": []}
    params["hypotheses"] = {}
    changed = args.experiments[-1]
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        project = Path(tmp)
        _copy_project(project)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        cold_jobs = _jobs(_snakemake(project, "-n", "all")[0])
        _, cold_s = _snakemake(project, "all")
        params["experiments"][changed]["method"]["coreset_ratio"] = 0.05
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        warm_jobs = _jobs(_snakemake(project, "-n", "all")[0])
        _, warm_s = _snakemake(project, "all")
    extraction = sum(n for rule, n in warm_jobs.items() if rule.startswith("extract"))
    result = {
        "machine": machine_line(), "domains": args.domains, "experiments": args.experiments,
        "change": f"experiments.{changed}.method.coreset_ratio 0.1 -> 0.05",
        "cold": {"wall_s": cold_s, "jobs": cold_jobs},
        "after_change": {"wall_s": warm_s, "jobs": warm_jobs},
        "feature_jobs_after_change": extraction,
        "saved_s": cold_s - warm_s,
    }
    rules = sorted(set(cold_jobs) | set(warm_jobs))
    lines = [f"Machine: {result['machine']}. Change: {result['change']}.", "",
             "| rule | cold run jobs | after the change |", "|---|---:|---:|"]
    lines += [f"| {r} | {cold_jobs.get(r, 0)} | {warm_jobs.get(r, 0)} |" for r in rules]
    lines += [f"| **wall time** | {cold_s:.0f} s | {warm_s:.0f} s |", "",
              f"Feature-extraction jobs after the change: {extraction}; "
              f"saved {cold_s - warm_s:.0f} s ({100 * (1 - warm_s / cold_s):.0f}%)."]
    write_outputs(args.out_dir, "caching", result, "\n".join(lines) + "\n")
    return 0 if extraction == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
