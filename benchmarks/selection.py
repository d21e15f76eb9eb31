"""Does selection by synthetic anomalies pick what the test labels would (issue #28 item 3)?

    python benchmarks/selection.py            # the demo's 4 domains (about 20-40 min, 2 cores),
                                              # then MVTec bottle where present
    python benchmarks/selection.py --quick    # a tiny part of each: checks the harness (~4 min)
    python benchmarks/selection.py --no-real  # the synthetic domains only

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
machine: its jobs after the demo's own (same features).

Real data, where present: with ``../shared/datasets/mvtec_bottle_256`` (MVTec AD bottle at
256 px, see its README) the same grids and recipes run on it with the ``mvtec`` dataset kind,
in a second project folder (``<project>-real``, default ``work/bench-selection-real``): the
backbone at the images' own 256 px, a few-shot budget of 16 train/good references (random,
seed 0; 4 reference folds, so 4 held out per fold and 32 anomalies per recipe), gate
``mixed`` (MVTec has no cold/warm condition), scored on all of test (20 good, 63 defects).
Its rows are the ``mvtec_bottle`` dataset beside ``synthetic`` (the mean over the demo's
domains). Everything decent scores about 1.0 AUROC there, so ties are expected: tau-b is
undefined when either side is the same at every grid point (reported as n/a), and a regret
of 0 over tied test AUROCs says nothing (the ``test tied`` count). ``--quick`` runs a tiny
real part too (PatchCore's 2-point quick grid, 4 references, 128 px, ``blocks.2``). Without
the folder, or with ``--no-real``, one line says the part was skipped and why.

Writes ``results/benchmarks/selection.json`` and ``.md`` and prints the table.
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

#: The real data: MVTec AD bottle at 256 px, a domain (category) of the ``mvtec`` kind's root.
REAL_ROOT = REPO.parent / "shared" / "datasets"
REAL_DOMAIN = "mvtec_bottle_256"
#: The real rows' ``dataset``; the synthetic rows' is ``synthetic`` (mean over the domains).
REAL_DATASET = "mvtec_bottle"
#: Few-shot references from train/good (no conditions, so gate ``mixed``); the quick mode
#: draws 4 (1 held out per fold).
REAL_REFERENCES = {"protocol": "train", "k": 16, "pick": "random", "seed": 0}
REAL_INPUT_SIZE = 256  # the images' own size
QUICK_REAL_GRIDS = {"patchcore": {"coreset_ratio": [0.1, 0.5]}}
QUICK_REAL_K = 4
QUICK_REAL_INPUT_SIZE = 128


def validation_sets(per_reference: int) -> dict:
    """One validation set per recipe over the whole strength range."""
    return {r: {"recipe": r, "strength": list(STRENGTH), "per_reference": per_reference,
                "seed": 0} for r in RECIPES}


def grid_experiments(base: dict, grids: dict) -> dict:
    """``<method>_<recipe>``: ``base`` with the method's ``select:`` grid on that recipe."""
    return {f"{method}_{recipe}": {**copy.deepcopy(base), "method": {"name": method},
                                   "select": {"validation": recipe, **copy.deepcopy(grid)}}
            for method, grid in grids.items() for recipe in RECIPES}


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
        "validation": validation_sets(2),
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
    params["experiments"].update(grid_experiments(gated, grids))
    return params


def real_params(quick: bool, root: Path = REAL_ROOT) -> dict:
    """The real part's params: MVTec bottle (``mvtec`` kind, domain :data:`REAL_DOMAIN`
    under ``root``), the demo's backbone at the images' 256 px, the demo's gated experiment
    with few-shot train/good references (:data:`REAL_REFERENCES`) and gate ``mixed``, and
    the same grids and validation recipes as the synthetic part (quick: one method, a
    2-point grid, 4 references, 128 px)."""
    from hdmap_ad.config import read_params_yaml

    demo = read_params_yaml(REPO / "params.yaml")
    backbone = copy.deepcopy(demo["backbones"]["effnet_lite2"])
    base = copy.deepcopy(demo["experiments"]["gated"])
    base.update(gate="mixed", references=dict(REAL_REFERENCES))
    per_reference = 2
    if quick:
        backbone.update(input_size=QUICK_REAL_INPUT_SIZE, batch_size=16)
        base["references"]["k"] = QUICK_REAL_K
        base["layers"] = ["blocks.2"]
        per_reference = 3
    else:
        backbone["input_size"] = REAL_INPUT_SIZE
    return {
        "dataset": {"kind": "mvtec", "root": str(root)},
        "domains": [REAL_DOMAIN],
        "device": "cpu",
        "backbones": {"effnet_lite2": backbone},
        "validation": validation_sets(per_reference),
        "experiments": grid_experiments(base, QUICK_REAL_GRIDS if quick else GRIDS),
        "targets": {"experiments": []},
    }


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


def kendall_tau_b(val: list[float], test: list[float]) -> tuple[float | None, str | None]:
    """Kendall's tau-b between a grid's validation and test AUROCs, and why it is undefined.

    Tau-b divides by the square root of each side's untied pairs: a side that is the same at
    every grid point (e.g. every point at 1.0 AUROC) has none, so there is no tau (``None``
    and the reason, printed ``n/a``), never a 0 that would read as "no agreement". Ties
    within a side that still varies are what tau-b is for.

    >>> kendall_tau_b([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    (1.0, None)
    >>> kendall_tau_b([0.9, 0.8], [1.0, 1.0])
    (None, 'test AUROC the same at every point')
    """
    from scipy.stats import kendalltau

    constant = [name for name, xs in (("validation", val), ("test", test)) if len(set(xs)) < 2]
    if constant:
        return None, f"{' and '.join(constant)} AUROC the same at every point"
    tau = kendalltau(val, test).statistic
    if not np.isfinite(tau):
        return None, "not finite"
    return float(tau), None


def grid_figures(val: list[float], test: list[float], sizes: list[int], default: int | None
                 ) -> dict:
    """Kendall's tau (and why it is undefined), and the regret of the validation-selected
    and the default point."""
    from hdmap_ad.selection.choose import choose_point

    chosen, _ = choose_point(val, sizes)
    best = max(test)
    tau, why = kendall_tau_b(val, test)
    return {"tau": tau, "tau_undefined": why,
            "regret": best - test[chosen],
            "regret_default": None if default is None else best - test[default],
            "chosen": chosen}


def collect(root: Path, params: dict, dataset: str = "synthetic") -> list[dict]:
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
                rows.append({"dataset": dataset, "domain": d, "method": method,
                             "recipe": recipe, "strength": which, "validation_auroc": val,
                             "test_auroc": test, "points": [g["point"] for g in sel["grid"]],
                             "default": default, **fig})
    return rows


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[dict]) -> list[dict]:
    """Mean over domains per dataset x method x recipe x strength bin."""
    out = []
    keys = dict.fromkeys((r.get("dataset", "synthetic"), r["method"], r["recipe"],
                          r["strength"]) for r in rows)
    for key in keys:
        group = [r for r in rows if (r.get("dataset", "synthetic"), r["method"], r["recipe"],
                                     r["strength"]) == key]
        why = sorted({r.get("tau_undefined") for r in group if r["tau"] is None} - {None})
        out.append({"dataset": key[0], "method": key[1], "recipe": key[2], "strength": key[3],
                    "domains": len(group), "tau": _mean([r["tau"] for r in group]),
                    "tau_domains": sum(r["tau"] is not None for r in group),
                    "tau_undefined": why,
                    "test_spread": _mean([max(r["test_auroc"]) - min(r["test_auroc"])
                                          for r in group]),
                    "validation_saturated": sum(len(set(r["validation_auroc"])) == 1
                                                for r in group),
                    "test_tied": sum(len(set(r["test_auroc"])) == 1 for r in group),
                    "regret": _mean([r["regret"] for r in group]),
                    "regret_default": _mean([r["regret_default"] for r in group]),
                    "selected_is_test_best": sum(r["regret"] == 0 for r in group)})
    return out


def grids_of(params: dict) -> dict:
    """Each method's ``select:`` grid in a benchmark's params (the demo's own left out)."""
    return {e["method"]["name"]: {k: v for k, v in e["select"].items() if k != "validation"}
            for key, e in params["experiments"].items()
            if "select" in e and key.split("_", 1)[-1] in RECIPES}


def describe_real(real: dict) -> str:
    """One sentence: what the real part ran on, or why it has no rows."""
    if real["status"] != "ran":
        return f"{real['dataset']}: {real['status']} ({real['reason'].splitlines()[0]})."
    refs = real["references"]
    return (f"{real['dataset']} (`{real['domain']}` of {real['root']}, mvtec kind; "
            f"{real['mode']}): {refs['k']} train/good references ({refs['pick']}, seed "
            f"{refs['seed']}) in {real['deploy_folds']} reference folds, gate "
            f"{real['gate']}, layers {real['layers']}, input {real['input_size']} px, "
            f"{real['per_reference']} anomalies per held-out reference; scored on all of "
            f"test; grids: " + "; ".join(f"{m} {g}" for m, g in real["grids"].items())
            + f"; {real['wall_s']:.0f} s.")


def markdown(result: dict) -> str:
    def f(x, sign=False):
        return "-" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")

    real = result.get("real") or {"dataset": REAL_DATASET, "status": "skipped",
                                  "reason": "not run"}
    lines = [f"# Selection by synthetic anomalies ({result['mode']})", "",
             f"{result['machine']}; {result['date']}; {result['wall_s']:.0f} s for the "
             "synthetic part.", "",
             f"synthetic: domains {', '.join(result['domains'])}; grids: "
             + "; ".join(f"{m} {g}" for m, g in result["grids"].items()) + f"; strength "
             f"{STRENGTH} (bins: thirds of the range).", "",
             describe_real(real), "",
             "Mean over domains (`synthetic`: the demo's domains; `mvtec_bottle`: one): "
             "Kendall's tau (validation vs test AUROC over the grid; over "
             "the domains where both vary, their count in brackets), regret (test AUROC: grid "
             "best on test minus the validation-selected point; 0 = it picked the test-best "
             "point), the default point's regret, the grid's test AUROC spread (max - min: "
             "the most any choice can lose), in how many domains the selected point was the "
             "test-best, in how many every point had the same validation AUROC "
             "(saturated: the tie rule, not the anomalies, chose), and in how many every "
             "point had the same test AUROC (test tied: any choice is the test-best, so "
             "its regret 0 says nothing).", "",
             "Tau n/a: tau-b is undefined where the validation or the test AUROCs are the "
             "same at every grid point (a constant side has no ranking; common at 1.0 "
             "AUROC), and n/a (0) means no domain had one (why: below the table).", "",
             "| dataset | method | recipe | strength | tau | regret | default regret "
             "| test spread | picked test-best | saturated | test tied |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        tau = "n/a" if s["tau"] is None else f(s["tau"], True)
        lines.append(f"| {s.get('dataset', 'synthetic')} | {s['method']} | {s['recipe']} | "
                     f"{s['strength']} | {tau} ({s['tau_domains']}) | {f(s['regret'])} | "
                     f"{f(s['regret_default'])} | {f(s['test_spread'])} | "
                     f"{s['selected_is_test_best']}/{s['domains']} | "
                     f"{s['validation_saturated']}/{s['domains']} | "
                     f"{s.get('test_tied', 0)}/{s['domains']} |")
    # why tau is n/a, one line per reason: the bins of each dataset x method x recipe
    why: dict[str, dict[str, list[str]]] = {}
    for s in result["summary"]:
        if s["tau"] is None:
            reason = ", ".join(s.get("tau_undefined") or []) or "no domain"
            grid = f"{s.get('dataset', 'synthetic')} {s['method']} {s['recipe']}"
            why.setdefault(reason, {}).setdefault(grid, []).append(s["strength"])
    if why:
        lines += ["", "Why tau is n/a:", ""] + [
            f"- {reason}: " + "; ".join(f"{g} ({', '.join(bins)})" for g, bins in grids.items())
            for reason, grids in why.items()]
    # the per-domain table: the synthetic domains, then the real one under its dataset name
    columns = [(d, d) for d in result["domains"]]
    if real["status"] == "ran":
        columns.append((real["domain"], real["dataset"]))
    lines += ["", "Per domain, the whole validation set (strength `all`): regret of the "
              "validation-selected point / of the default point.", "",
              "| method | recipe | " + " | ".join(name for _, name in columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for method, recipe in dict.fromkeys((s["method"], s["recipe"]) for s in result["summary"]
                                        if s["strength"] == "all"):
        cells = []
        for d, _ in columns:
            r = next((r for r in result["rows"] if (r["method"], r["recipe"], r["strength"],
                                                     r["domain"]) == (method, recipe, "all",
                                                                      d)), None)
            cells.append("-" if r is None else f"{f(r['regret'])} / {f(r['regret_default'])}")
        lines.append(f"| {method} | {recipe} | " + " | ".join(cells) + " |")
    if result.get("demo_added_s") is not None:
        lines += ["", f"The demo's selected experiment (`gated_select`, 4 domains) added "
                  f"{result['demo_added_s']:.0f} s after the demo's own jobs "
                  f"({result['demo_base_s']:.0f} s for its `gated` runs on the same "
                  "features)."]
    return "\n".join(lines) + "\n"


def run_phase(root: Path, cores: int, timings: dict, name: str, text: str,
              targets: list[str]) -> None:
    """Run one phase's targets; its wall time is kept in the project's ``timings.json``, so
    a later ``--collect-only`` has it."""
    print(text, file=sys.stderr)
    timings[name] = snakemake(root, cores, targets)
    (root / "timings.json").write_text(json.dumps(timings, indent=2))


def real_part(args: argparse.Namespace, quick: bool) -> tuple[list[dict], dict]:
    """The real-data rows (:data:`REAL_DATASET`) and what made them; no rows, and why,
    when the part is skipped or fails (the synthetic rows are written either way)."""
    import datetime as dt

    import yaml

    from hdmap_ad.config import parse_params
    from hdmap_ad.layout import RunLayout

    data = REAL_ROOT / REAL_DOMAIN
    root = Path(args.real_project or f"{args.project}-real")
    info: dict = {"dataset": REAL_DATASET, "data": str(data), "project": str(root)}

    def no_rows(status: str, why: str) -> tuple[list[dict], dict]:
        print(f"real data ({REAL_DATASET}): {status}: {why}", file=sys.stderr)
        return [], {**info, "status": status, "reason": why}

    if args.no_real:
        return no_rows("skipped", "--no-real given")
    timings_path = root / "timings.json"
    if args.collect_only:
        if not (root / "params.yaml").is_file():
            return no_rows("skipped", f"no real-data project to tabulate in {root}")
        params = yaml.safe_load((root / "params.yaml").read_text())
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    else:
        if not (data / "train" / "good").is_dir():
            return no_rows("skipped", f"{data} not found (MVTec AD bottle at 256 px; it ships "
                                      "in ../shared/datasets)")
        params = real_params(quick)
        lay_project(root, params)
        timings = {"date": dt.date.today().isoformat(), "quick": quick}
        p = parse_params(params)
        at = RunLayout(result_prefix=p.dataset.result_prefix)
        try:
            if not quick:
                run_phase(root, args.cores, timings, "features_s",
                          f"real data ({REAL_DATASET}): features",
                          [at.features(d, "effnet_lite2", la) for d in p.domains
                           for la in p.backbones["effnet_lite2"].layers])
            run_phase(root, args.cores, timings, "grids_s",
                      f"real data ({REAL_DATASET}): the grids",
                      [at.selected(d, s) for s in p.selections for d in p.domains])
        except SystemExit as exc:  # keep the synthetic part's rows
            return no_rows("failed", str(exc)[-3000:])
    p = parse_params(params)
    plan = next(iter(p.selections.values()))
    exp = p.experiments[plan.points[0].key]
    vset = p.validation[plan.validation]
    info.update(
        status="ran", reason=None, mode="quick" if timings.get("quick") else "full",
        date=timings.get("date"), root=p.dataset.root, domain=p.domains[0],
        references={"k": exp.references.k, "pick": exp.references.pick,
                    "seed": exp.references.seed, "protocol": exp.references.protocol},
        deploy_folds=exp.deploy_folds, gate=exp.gate, layers=list(exp.layers),
        input_size=p.backbones[exp.backbone].input_size, per_reference=vset.per_reference,
        grids=grids_of(params),
        timings_s={k: v for k, v in timings.items() if k.endswith("_s")},
        wall_s=sum(v for k, v in timings.items() if k.endswith("_s")))
    return collect(root, params, REAL_DATASET), info


def main(argv: list[str] | None = None) -> int:
    import datetime as dt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="one tiny domain, and a tiny real part (harness check)")
    ap.add_argument("--project", default=str(REPO / "work" / "bench-selection"),
                    help="the benchmark's project folder (its data, work and results)")
    ap.add_argument("--real-project", default=None,
                    help="the real-data part's project folder (default: <project>-real)")
    ap.add_argument("--no-real", action="store_true",
                    help=f"skip the real-data part ({REAL_DATASET}) even where its data is")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out-dir", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--collect-only", action="store_true",
                    help="tabulate the projects' finished runs again (no Snakemake; their own "
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
        run_phase(root, args.cores, timings, name, text, targets)

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
    real_rows, real = real_part(args, quick)
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
        "real": real,
        "summary": summarize(rows + real_rows),
        "rows": rows + real_rows,
    }
    write_outputs(args.out_dir, "selection", result, markdown(result))
    return 1 if real["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
