"""Does selection by synthetic anomalies pick what the test labels would (issue #28 item 3)?

    python benchmarks/selection.py            # the demo's 4 domains (about 20-40 min, 2 cores)
    python benchmarks/selection.py --quick    # one tiny domain: checks the harness (~2 min)

Runs the pipeline itself (Snakemake, in a project folder under ``work/bench-selection``) on
the demo's data and backbone with the demo's gated setup (16 cold + 16 warm test/good
references, p90 gate): per method a ``select:`` grid (:data:`GRIDS`) scored on one validation
set per recipe (``noise_band``, ``cutpaste``, ``perlin``, each over a wide strength range).
Identical grid points are one fit, whatever the recipe. Then, per method x recipe x strength
bin (the anomalies whose drawn strength lies in the low, middle or high third of the range,
against every held-out reference; ``all``: the whole set, what the selected JSON used):

- Kendall's tau (tau-b) between the grid's validation AUROCs and its test AUROCs;
- regret: test AUROC of the grid's best point on test minus that of the point the
  validation AUROC selects (ties as the ``select`` step breaks them);
- the same regret for the default point (the method's default options).

Each is computed per domain, then averaged over the domains. Before the grids, the full run
times what the demo's selected experiment (``gated_select``) adds to ``make demo`` on this
machine: its jobs after the demo's own (same features). Writes
``results/benchmarks/selection.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchmarks_common import machine, machine_line, write_outputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

RECIPES = ("noise_band", "cutpaste", "perlin")
STRENGTH = [0.1, 1.5]
BINS = ("low", "mid", "high")
#: Each method's grid; its defaults (the first block of each method) are one of the points.
GRIDS = {
    "patchcore": {"coreset_ratio": [0.01, 0.1], "layers": [["blocks.2"], ["blocks.2", "blocks.4"]]},
    "padim": {"n_features": [50, 100, 200]},
    "dfm": {"pca_level": [0.9, 0.97, 0.99]},
}
QUICK_GRIDS = {
    "patchcore": {"coreset_ratio": [0.1, 0.5]},
    "dfm": {"pca_level": [0.9, 0.99]},
}


def bench_params(quick: bool) -> dict:
    """The benchmark's params: the demo's data, backbone and gated setup + the grids."""
    from hdmap_ad.config import read_params_yaml

    demo = read_params_yaml(REPO / "params.yaml")
    grids = QUICK_GRIDS if quick else GRIDS
    gated = copy.deepcopy(demo["experiments"]["gated"])
    params = {
        "dataset": copy.deepcopy(demo["dataset"]),
        "domains": list(demo["domains"]),
        "device": "cpu",
        "backbones": {"effnet_lite2": copy.deepcopy(demo["backbones"]["effnet_lite2"])},
        "validation": {r: {"recipe": r, "strength": STRENGTH, "per_reference": 2, "seed": 0}
                       for r in RECIPES},
        "experiments": {},
        "targets": {"experiments": []},
    }
    if quick:
        params["dataset"]["synthetic"] = {"seed": 7, "n_train": 6, "n_test_good": 24,
                                          "n_test_fault": 24}
        params["domains"] = ["C"]
        params["backbones"]["effnet_lite2"].update(input_size=96, batch_size=16)
        gated["references"].update(n_cold=4, n_warm=4)
        gated["layers"] = ["blocks.2"]
        for v in params["validation"].values():
            v["per_reference"] = 3
    else:
        # the demo's own selection, timed before the grids (what it adds to make demo)
        params["validation"].update(copy.deepcopy(demo.get("validation") or {}))
        params["experiments"]["gated"] = copy.deepcopy(demo["experiments"]["gated"])
        params["experiments"]["gated_select"] = copy.deepcopy(demo["experiments"]["gated_select"])
    for method, grid in grids.items():
        for recipe in RECIPES:
            params["experiments"][f"{method}_{recipe}"] = {
                **copy.deepcopy(gated), "method": {"name": method},
                "select": {"validation": recipe, **copy.deepcopy(grid)}}
    return params


def lay_project(root: Path, params: dict) -> None:
    """The pipeline's Snakefile, rules, profiles and code in ``root`` (a snapshot of this
    checkout: an edit made here while the benchmark runs re-runs nothing there)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "src"):
        src, dst = REPO / name, root / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def snakemake(root: Path, cores: int, targets: list[str]) -> float:
    """Run Snakemake on ``targets`` in ``root`` (its progress lines echoed); wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(root / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(["snakemake", "--cores", str(cores), "--profile",
                             "profiles/default", *targets], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        if "steps (" in line or line.startswith(("rule ", "localrule ")):
            print("  " + line.rstrip(), file=sys.stderr, flush=True)
    if proc.wait() != 0:
        raise SystemExit("snakemake failed:\n" + "".join(tail))
    return time.perf_counter() - t0


def bin_of(strength: float) -> str:
    lo, hi = STRENGTH
    k = min(int((strength - lo) / (hi - lo) * len(BINS)), len(BINS) - 1)
    return BINS[max(k, 0)]


def bin_auroc(validation: dict, which: str) -> float | None:
    """Validation AUROC with only the anomalies of strength bin ``which`` (``all``: every)."""
    from hdmap_ad.validation.score import auroc

    normal = np.array([r["score"] for r in validation["normal"]])
    anomalies = np.array([r["score"] for r in validation["anomalies"]
                          if which == "all" or bin_of(r["strength"]) == which])
    return auroc(normal, anomalies)


def grid_figures(val: list[float], test: list[float], sizes: list[int], default: int | None
                 ) -> dict:
    """Kendall's tau, and the regret of the validation-selected and the default point."""
    from scipy.stats import kendalltau

    from hdmap_ad.selection.choose import choose_point

    chosen, _ = choose_point(val, sizes)
    best = max(test)
    tau = kendalltau(val, test).statistic if len(set(val)) > 1 and len(set(test)) > 1 else None
    return {"tau": None if tau is None or not np.isfinite(tau) else float(tau),
            "regret": best - test[chosen],
            "regret_default": None if default is None else best - test[default],
            "chosen": chosen}


def collect(root: Path, params: dict) -> list[dict]:
    """One row per domain x method x recipe x strength bin, from the selected JSONs (the
    grid, its test AUROCs, the validation set's id) and the validation scores they name."""
    from hdmap_ad.config import parse_params
    from hdmap_ad.layout import RunLayout

    p = parse_params(params)
    at = RunLayout(root=str(root), result_prefix=p.dataset.result_prefix)
    rows = []
    for key in p.selections:
        if "_" not in key or key.split("_", 1)[1] not in RECIPES:
            continue  # the demo's own selection
        method, recipe = key.split("_", 1)
        for d in p.domains:
            sel = json.loads(Path(at.selected(d, key)).read_text())
            names = [g["experiment"] for g in sel["grid"]]
            test = [g["test"]["auroc"] for g in sel["grid"]]
            sizes = [g["model_bytes"] for g in sel["grid"]]
            default = names.index(sel["default"]["experiment"]) if sel["default"] else None
            set_id = sel["validation_set"]["id"]
            vals = [json.loads(Path(at.validation_scores(d, set_id, n)).read_text())
                    for n in names]
            for which in ("all", *BINS):
                val = [bin_auroc(v, which) for v in vals]
                if any(v is None for v in val):
                    continue
                fig = grid_figures(val, test, sizes, default)
                rows.append({"domain": d, "method": method, "recipe": recipe,
                             "strength": which, "validation_auroc": val, "test_auroc": test,
                             "points": [g["point"] for g in sel["grid"]],
                             "default": default, **fig})
    return rows


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over domains per method x recipe x strength bin."""
    out = []
    keys = dict.fromkeys((r["method"], r["recipe"], r["strength"]) for r in rows)
    for method, recipe, which in keys:
        group = [r for r in rows if (r["method"], r["recipe"], r["strength"]) == (method,
                                                                                 recipe, which)]
        out.append({"method": method, "recipe": recipe, "strength": which,
                    "domains": len(group), "tau": _mean([r["tau"] for r in group]),
                    "tau_domains": sum(r["tau"] is not None for r in group),
                    "test_spread": _mean([max(r["test_auroc"]) - min(r["test_auroc"])
                                          for r in group]),
                    "validation_saturated": sum(len(set(r["validation_auroc"])) == 1
                                                for r in group),
                    "regret": _mean([r["regret"] for r in group]),
                    "regret_default": _mean([r["regret_default"] for r in group]),
                    "selected_is_test_best": sum(r["regret"] == 0 for r in group)})
    return out


def markdown(result: dict) -> str:
    def f(x, sign=False):
        return "-" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")

    lines = [f"# Selection by synthetic anomalies ({result['mode']})", "",
             f"{result['machine']}; {result['date']}; {result['wall_s']:.0f} s in all.", "",
             f"Domains {', '.join(result['domains'])}; grids: "
             + "; ".join(f"{m} {g}" for m, g in result["grids"].items()) + f"; strength "
             f"{STRENGTH} (bins: thirds of the range).", "",
             "Mean over domains: Kendall's tau (validation vs test AUROC over the grid; over "
             "the domains where both vary, their count in brackets), regret (test AUROC: grid "
             "best on test minus the validation-selected point; 0 = it picked the test-best "
             "point), the default point's regret, the grid's test AUROC spread (max - min: "
             "the most any choice can lose), in how many domains the selected point was the "
             "test-best, and in how many every point had the same validation AUROC "
             "(saturated: the tie rule, not the anomalies, chose).", "",
             "| method | recipe | strength | tau | regret | default regret | test spread "
             "| picked test-best | saturated |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['method']} | {s['recipe']} | {s['strength']} | {f(s['tau'], True)} "
                     f"({s['tau_domains']}) | {f(s['regret'])} | {f(s['regret_default'])} | "
                     f"{f(s['test_spread'])} | {s['selected_is_test_best']}/{s['domains']} | "
                     f"{s['validation_saturated']}/{s['domains']} |")
    domains = result["domains"]
    lines += ["", "Per domain, the whole validation set (strength `all`): regret of the "
              "validation-selected point / of the default point.", "",
              "| method | recipe | " + " | ".join(domains) + " |",
              "|---|---|" + "---|" * len(domains)]
    for s in result["summary"]:
        if s["strength"] != "all":
            continue
        cells = []
        for d in domains:
            r = next((r for r in result["rows"] if (r["method"], r["recipe"], r["strength"],
                                                     r["domain"]) == (s["method"], s["recipe"],
                                                                      "all", d)), None)
            cells.append("-" if r is None else f"{f(r['regret'])} / {f(r['regret_default'])}")
        lines.append(f"| {s['method']} | {s['recipe']} | " + " | ".join(cells) + " |")
    if result.get("demo_added_s") is not None:
        lines += ["", f"The demo's selected experiment (`gated_select`, 4 domains) added "
                  f"{result['demo_added_s']:.0f} s after the demo's own jobs "
                  f"({result['demo_base_s']:.0f} s for its `gated` runs on the same "
                  "features)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import datetime as dt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny domain (harness check)")
    ap.add_argument("--project", default=str(REPO / "work" / "bench-selection"),
                    help="the benchmark's project folder (its data, work and results)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--collect-only", action="store_true",
                    help="tabulate the project's finished run again (no Snakemake; its own "
                         "params.yaml and timings.json)")
    args = ap.parse_args(argv)

    import yaml

    from hdmap_ad.config import parse_params
    from hdmap_ad.layout import RunLayout

    root = Path(args.project)
    timings_path = root / "timings.json"
    if args.collect_only:
        params = yaml.safe_load((root / "params.yaml").read_text())
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    else:
        params = bench_params(args.quick)
        lay_project(root, params)
        timings = {"date": dt.date.today().isoformat(), "quick": args.quick}
    p = parse_params(params)
    at = RunLayout(result_prefix=p.dataset.result_prefix)  # targets, relative to the project

    def phase(name: str, text: str, targets: list[str]) -> None:
        # each phase's wall time is kept in the project, so a later --collect-only has it
        print(text, file=sys.stderr)
        timings[name] = snakemake(root, args.cores, targets)
        timings_path.write_text(json.dumps(timings, indent=2))

    if not args.collect_only:
        if not args.quick:
            phase("features_s", "features of every domain (shared with the demo)",
                  [at.features(d, "effnet_lite2", la) for d in p.domains
                   for la in ("blocks.2", "blocks.4")])
            phase("demo_base_s", "the demo's gated runs",
                  [at.metrics(d, "gated") for d in p.domains])
            phase("demo_added_s", "what the demo's selected experiment adds",
                  [at.selected(d, "gated_select") for d in p.domains])
        phase("grids_s", "the grids",
              [at.selected(d, s) for s in p.selections for d in p.domains])
    rows = collect(root, params)
    quick = bool(timings.get("quick", args.quick))
    result = {
        "mode": "quick" if quick else "full",
        "date": timings.get("date", dt.date.today().isoformat()),
        "machine": machine_line(), "machine_detail": machine(),
        "wall_s": sum(v for k, v in timings.items() if k.endswith("_s")),
        "timings_s": {k: v for k, v in timings.items() if k.endswith("_s")},
        "timings_note": timings.get("note"),
        "domains": list(p.domains),
        "grids": QUICK_GRIDS if quick else GRIDS,
        "strength": STRENGTH,
        "demo_base_s": timings.get("demo_base_s"), "demo_added_s": timings.get("demo_added_s"),
        "summary": summarize(rows),
        "rows": rows,
    }
    write_outputs(args.out_dir, "selection", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
