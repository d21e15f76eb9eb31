"""Coverage of the hypothesis verdicts' 95% interval on simulated data with a known truth.

    python benchmarks/verdict_coverage.py [--replicates 2000] [--n-boot 400] [--quick]

The generator and the coverage count are ``hdmap_ad.report.coverage`` (the test suite runs a
few cells of this grid at fewer replicates). Grid: reference seeds S in {1, 3, 5, 10}; the
seed effect sigma_r in multiples of one seed's map-level standard error of delta AUROC
(0, 0.5, 1, 2); the map effect shared by the seeds sigma_t in {0.2, 0.8} (score units); the
seed x map interaction fixed at 0.4. Each cell: the share of simulated data sets whose
interval holds the true delta, with its exact binomial 95% interval, and the mean width.
With one seed the truth is the delta conditional on that draw. A percentile bootstrap over 3
seeds cannot put an interval wider than their spread: the large-sigma_r rows show its
shortfall. Writes ``results/benchmarks/verdict_coverage.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks_common import machine_line, write_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hdmap_ad.report.coverage import (  # noqa: E402
    Design,
    coverage,
    map_level_se,
    seed_effect_sd,
)

SEEDS = (1, 3, 5, 10)
SEED_EFFECT = (0.0, 0.5, 1.0, 2.0)  # sigma_r's AUROC effect in map-level standard errors
SIGMA_T = (0.2, 0.8)


def sigma_r_for(design: Design, ratio: float) -> float:
    """The sigma_r (score units) whose seed effect on arm B's AUROC is ``ratio`` map-level
    standard errors (bisection on :func:`seed_effect_sd`)."""
    if ratio == 0:
        return 0.0
    target = ratio * map_level_se(design)
    lo, hi = 0.0, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if seed_effect_sd(Design(**{**design.__dict__, "sigma_r": mid})) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=400)
    ap.add_argument("--per-stratum", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="200 replicates (a smoke run)")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    args = ap.parse_args(argv)
    reps = 200 if args.quick else args.replicates
    rows = []
    cells = [(t, k, s) for t in SIGMA_T for k in SEED_EFFECT for s in SEEDS if s > 1 or k == 0]
    for i, (sigma_t, ratio, seeds) in enumerate(cells):
        base = Design(seeds=seeds, per_stratum=args.per_stratum, sigma_t=sigma_t)
        design = Design(**{**base.__dict__, "sigma_r": sigma_r_for(base, ratio)})
        t0 = time.perf_counter()
        out = coverage(design, reps, args.n_boot, seed=1000 + i)
        rows.append({"seeds": seeds, "seed_effect_in_se": ratio, "sigma_r": design.sigma_r,
                     "sigma_t": sigma_t, "sigma_e": design.sigma_e, **out,
                     "seconds": time.perf_counter() - t0})
        print(f"[{i + 1}/{len(cells)}] S={seeds} sigma_r={ratio:g} SE sigma_t={sigma_t}: "
              f"coverage {out['coverage']:.3f} [{out['lower']:.3f}, {out['upper']:.3f}] "
              f"width {out['mean_width']:.4f}", flush=True)
    result = {"machine": machine_line(), "replicates": reps, "n_boot": args.n_boot,
              "per_stratum": args.per_stratum, "rows": rows}
    lines = [f"Machine: {result['machine']}; {reps} simulated data sets per cell, "
             f"{args.n_boot} resamples, {4 * args.per_stratum} test maps "
             f"({args.per_stratum} per condition x class). Nominal coverage 0.95.", "",
             "| seeds | seed effect (x map SE) | sigma_t | coverage | exact 95% CI | "
             "mean width |", "|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['seeds']} | {r['seed_effect_in_se']:g} | {r['sigma_t']:g} | "
              f"{r['coverage']:.3f} | [{r['lower']:.3f}, {r['upper']:.3f}] | "
              f"{r['mean_width']:.4f} |" for r in rows]
    write_outputs(args.out_dir, "verdict_coverage", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
