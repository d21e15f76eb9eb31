"""``results/report.md``: summary tables, hypothesis verdicts and figures.

Figures (PNG under ``results/figures/``), per domain: ROC curves of every experiment; per
domain x experiment: score histograms split cold/warm x good/fault with the best and
deployable thresholds, the gate's p90 distributions with its fitted threshold (gated
experiments), and anomaly maps (patch scores upsampled to the map, gaussian sigma 4) of the
worst false negatives and false positives at the deployable threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hdmap_ad.config import CLAIMS  # table and plot order
from hdmap_ad.data.maps import read_map
from hdmap_ad.gating import is_per_condition
from hdmap_ad.io import atomic_path, read_json, write_text
from hdmap_ad.metrics.pixel import anomaly_map
from hdmap_ad.report.figures import (
    anomaly_map_grid,
    forest_plot,
    gate_p90_figure,
    roc_figure,
    score_histograms,
    worst_cases,
)

WORST_K = 3


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _experiment_figures(
    entry: dict[str, Any], figures: Path, manifest: pd.DataFrame
) -> tuple[list[Path], tuple[np.ndarray, np.ndarray]]:
    """Figures of one domain x experiment; returns their paths and the ROC data."""
    table = pq.read_table(entry["scores"])
    scores = table.drop_columns(["patch_scores"]).to_pandas()
    metrics = read_json(entry["metrics"])
    name = f"{entry['label']}_{entry['experiment']}"
    thr = metrics["thresholds"]
    made = []
    hist = figures / f"{name}_scores.png"
    score_histograms(scores, {"deployable": thr["deployable"],
                              "best (test-tuned)": thr["best"]}, hist, f"{name}: image scores")
    made.append(hist)
    bank = read_json(entry["bank_meta"])
    if bank["gate"]["threshold"] is not None and entry["has_conditions"]:
        test = scores[scores.role == "test"]
        groups = {
            f"{c}/{lab}": test.p90[(test.condition == c) & ((test.label == "good") == good)]
            .to_numpy()
            for c in ("cold", "warm") for lab, good in (("good", True), ("fault", False))
        }
        groups["references"] = np.array([r["p90"] for r in bank["references"]])
        gate = figures / f"{name}_gate_p90.png"
        gate_p90_figure(groups, bank["gate"]["threshold"], gate,
                        f"{name}: p90 gate ({bank['gate']['fit']})")
        made.append(gate)
    cut = thr["deployable"] if thr["deployable"] is not None else thr["best"]
    if cut is not None:
        fn, fp = worst_cases(scores, cut, WORST_K)
        ids = fn + fp
        grids = table.column("patch_scores").combine_chunks().to_numpy_ndarray()
        pos = {i: k for k, i in enumerate(scores.image_id) if scores.role[k] == "test"}
        paths = manifest.set_index("image_id").path
        maps = [read_map(paths[i]) for i in ids]
        heat = [anomaly_map(grids[pos[i]], m.shape[:2]) for i, m in zip(ids, maps, strict=True)]
        titles = [f"FN {i} ({scores.score[pos[i]]:.3g})" for i in fn] + [
            f"FP {i} ({scores.score[pos[i]]:.3g})" for i in fp]
        grid = figures / f"{name}_worst.png"
        anomaly_map_grid(maps, heat, titles, grid,
                         f"{name}: worst false negatives / positives at {cut:.3g}")
        made.append(grid)
    test = scores[scores.role == "test"]
    return made, ((test.label != "good").to_numpy().astype(int), test.score.to_numpy())


def write_roc_csv(path: Path, y: np.ndarray, s: np.ndarray) -> None:
    """ROC points (fpr, tpr, threshold) for ``dvc plots``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    frame = pd.DataFrame({"fpr": fpr.round(6), "tpr": tpr.round(6),
                          "threshold": np.where(np.isfinite(thr), thr, np.nan).round(6)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _fmt(x: float | None, ci: list[float] | None = None) -> str:
    """A delta and its interval, 4 decimals (deltas of AUROCs near 1 are small)."""
    if x is None:
        return "-"
    return f"{x:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def _budget_text(budget: Any) -> str:
    return "-" if budget is None else str(budget)


def _where(domain: str, budget: Any, budgets: list[Any]) -> str:
    return domain if len(budgets) < 2 or budget is None else f"{domain}, budget {budget}"


def _list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _references_text(protocol: dict[str, Any]) -> str:
    refs = protocol.get("references") or {}
    kind = refs.get("protocol", "?")
    sizes = []
    for size in refs.get("per_budget") or []:
        if "n_cold" in size:
            txt = f"{size['n_cold']} cold + {size['n_warm']} warm"
        elif "k" in size:
            txt = f"{size['k']} train/good maps"
        else:
            txt = "all train/good maps"
        sizes.append(txt if size.get("budget") is None else f"{txt} (budget {size['budget']})")
    pick = f", pick {refs['pick']}" if kind in ("test_good_holdout", "user_leaky") else ""
    return f"`{kind}`{pick}, {_list(sizes) if sizes else 'as the experiments set'} per draw"


def _correction_text(h: dict[str, Any]) -> str:
    if h.get("correction") == "holm":
        return f"Holm-adjusted over a family of {h.get('family_size', '?')} verdicts"
    return "no multiplicity correction"


def hypothesis_paragraph(h: dict[str, Any]) -> str:
    """One readable paragraph of a hypothesis verdict file: the hypothesis, the claim, the
    protocol (references, seeds, budgets, what was held out, the test), the verdict and its
    interval (and the single-draw interval beside it)."""
    prot = h.get("protocol") or {}
    arms = prot.get("arms") or {}

    def arm(key: str) -> str:
        a = arms.get(key) or {}
        extra = ", ".join(x for x in (f"{a['gate']} gate" if a.get("gate") else "",
                                      a.get("method", "")) if x)
        return f"`{h[key]}`" + (f" ({extra})" if extra else "")

    seeds = prot.get("seeds") or []
    budgets = prot.get("budgets") or [None]
    claim = h["claim"]
    results = h["results"]
    first = next(iter(results.values()))[0]
    description = (h.get("description") or "").strip()
    if description and not description.endswith("."):
        description += "."
    parts = [f"**{h['hypothesis']}.** {description} *Claim:* {arm('b')} beats {arm('a')} "
             f"on the {h.get('claim_text', claim)} (`claim: {claim}`; "
             f"{h.get('claim_rule', '')})."]
    budget_txt = ("one reference budget" if budgets == [None]
                  else "budgets " + ", ".join(str(b) for b in budgets))
    parts.append(
        f"*Protocol:* references {_references_text(prot)}; {prot.get('held_out', '')}; "
        f"{len(seeds)} reference seed{'s' if len(seeds) != 1 else ''} "
        f"({', '.join(str(x) for x in seeds)}): {prot.get('seed_effect', '')}; {budget_txt}; "
        f"domains {', '.join(prot.get('domains') or list(results))}; {first['n']} test maps "
        f"per draw ({first['n_good']} good, {first['n_fault']} fault) on "
        f"{next(iter(results))}.")
    boot = h.get("bootstrap") or {}
    parts.append("*Test:* crossed (pigeonhole) paired bootstrap (the reference seeds and, once "
                 "per resample, the test maps shared by every drawn seed, condition x class "
                 f"strata; {boot.get('n_boot', '?')} resamples, seed {boot.get('seed', '?')}; "
                 "Owen 2007); one-sided tests at 2.5% against a margin of "
                 f"{h.get('margin', 0):g} AUROC ({h.get('p_method', '?')} p-values), "
                 f"{_correction_text(h)}.")
    verdicts = []
    for domain, entries in results.items():
        for e in entries:
            au = e["auroc"]
            verdicts.append(f"{e['verdict']} on {_where(domain, e['budget'], budgets)} "
                            f"(delta {_fmt(au['delta'], au['ci95'])}; single draw, seed "
                            f"{au['single_draw']['ref_seed']}: "
                            f"{_fmt(au['single_draw']['delta'], au['single_draw']['ci95'])})")
    text = f"*Verdict:* **{h['verdict']}**: " + "; ".join(verdicts)
    for m in h.get("macro") or []:
        au = m["auroc"]
        text += (f"; macro average over domains {', '.join(m['domains'])}"
                 + (f" at budget {m['budget']}" if m["budget"] is not None else "")
                 + f": {_fmt(au['delta'], au['ci95'])}, **{m['verdict']}**")
    parts.append(text + ". The single-draw interval holds the references fixed; the "
                 "verdict's interval also resamples the reference draw.")
    return " ".join(parts)


def _claim_cells(claims: dict[str, Any], claim: str) -> list[str]:
    cells = []
    for c in CLAIMS:
        blk = claims[c]
        cell = f"{_fmt(blk['auroc']['delta'], blk['auroc']['ci95'])} {blk['verdict']}"
        cells.append(f"**{cell}**" if c == claim else cell)
    acc = claims[claim]["accuracy_deployable"]
    return [*cells, _fmt(acc["delta"], acc["ci95"])]


def _arm_lines(h: dict[str, Any]) -> list[str]:
    """AUROC of each arm per claim (means over seeds), the oracle arm beside them."""
    rows = []
    for domain, entries in h["results"].items():
        for e in entries:
            arms = [("a", h["a"], {c: e["claims"][c]["auroc"]["a"] for c in CLAIMS}),
                    ("b", h["b"], {c: e["claims"][c]["auroc"]["b"] for c in CLAIMS})]
            if e.get("oracle"):
                arms.append(("oracle", e["oracle"]["experiment"], e["oracle"]["auroc"]))
            for arm, name, au in arms:
                rows.append(f"| {domain} | {_budget_text(e['budget'])} | {arm}: `{name}` | "
                            + " | ".join("-" if au[c] is None else f"{au[c]:.4f}"
                                         for c in CLAIMS) + " |")
    return ["AUROC of each arm per claim, mean over the seeds"
            + (" (the oracle arm routes every map to its own condition's sub-model)"
               if any(e.get("oracle") for es in h["results"].values() for e in es) else "")
            + ":", "", "| domain | budget | arm | " + " | ".join(CLAIMS) + " |",
            "|---" * (len(CLAIMS) + 3) + "|", *rows, ""]


def _routing_lines(h: dict[str, Any]) -> list[str]:
    """The gate's routing by condition x label for each gated arm (and the oracle arm)."""
    rows = []
    for domain, entries in h["results"].items():
        for e in entries:
            for arm, r in (e.get("gate_routing") or {}).items():
                cells = []
                for group in ("cold/good", "cold/fault", "warm/good", "warm/fault"):
                    d, share = r["decisions"].get(group), r["misrouted"].get(group)
                    if d is None or share is None:
                        cells.append("-")
                        continue
                    n = d["to_cold"] + d["to_warm"]
                    wrong = d["to_warm"] if group.startswith("cold") else d["to_cold"]
                    cells.append(f"{wrong}/{n} ({100 * share:.1f}%)")
                acc = r["accuracy"]
                rows.append(f"| {domain} | {_budget_text(e['budget'])} | "
                            f"{arm}: `{r['experiment']}` ({r['gate']}) | " + " | ".join(cells)
                            + f" | {'-' if acc is None else f'{acc:.3f}'} |")
    if not rows:
        return []
    return ["Gate routing, summed over the seeds: test maps sent to the other condition's "
            "sub-model, by condition x label (for both-min / fallback, the sub-model whose "
            "score was kept).", "",
            "| domain | budget | arm | cold/good | cold/fault | warm/good | warm/fault "
            "| gate accuracy |", "|---" * 8 + "|", *rows, ""]


def forest_rows(h: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the forest plot: domains (then the macro rows) x budgets x claims."""
    budgets = (h.get("protocol") or {}).get("budgets") or [None]
    rows = []
    groups = [(d, e) for d, es in h["results"].items() for e in es]
    groups += [("macro", m) for m in h.get("macro") or []]
    for domain, e in groups:
        for c in CLAIMS:
            blk = e["claims"][c]
            rows.append({"group": _where(domain, e["budget"], budgets), "claim": c,
                         "delta": blk["auroc"]["delta"], "ci95": blk["auroc"]["ci95"],
                         "claimed": c == h["claim"], "verdict": blk["verdict"],
                         "single": (blk["auroc"].get("single_draw") or {}).get("ci95")})
    return rows


def _hypothesis_lines(path: str, figures: Path, out_dir: Path) -> list[str]:
    h = read_json(path)
    if "claims" not in next(iter(h["results"].values()))[0]:  # an older verdict file
        return [f"### {h['hypothesis']}: {h['verdict']}", "",
                "(verdict file of an older layout: re-run the hypothesis rule)", ""]
    head = f"### {h['hypothesis']}: {h['verdict']}"
    if h.get("verdict_macro"):
        head += f" (macro over domains: {h['verdict_macro']})"
    lines = [head, "", hypothesis_paragraph(h), "",
             "Delta AUROC (b - a) per claim, mean over seeds [crossed 95% interval] and "
             f"verdict; the claim (`{h['claim']}`) in bold; the last column is the claim's "
             "delta accuracy at each arm's deployable threshold.", "",
             "| domain | budget | " + " | ".join(CLAIMS) + " | delta acc (deployable) |",
             "|---" * (len(CLAIMS) + 3) + "|"]
    for domain, entries in h["results"].items():
        for e in entries:
            lines.append(f"| {domain} | {_budget_text(e['budget'])} | "
                         + " | ".join(_claim_cells(e["claims"], h["claim"])) + " |")
    for m in h.get("macro") or []:
        lines.append(f"| macro ({', '.join(m['domains'])}) | {_budget_text(m['budget'])} | "
                     + " | ".join(_claim_cells(m["claims"], h["claim"])) + " |")
    lines.append("")
    lines += _arm_lines(h) + _routing_lines(h)
    plot = figures / f"hypothesis_{h['hypothesis']}_forest.png"
    forest_plot(forest_rows(h), plot, f"{h['hypothesis']}: delta AUROC (b - a) by claim",
                margin=float(h.get("margin") or 0.0))
    lines += [f"![{plot.stem}]({_rel(plot, out_dir)})", ""]
    return lines


def _verdict_cell(result: dict[str, Any]) -> str:
    auc = result["auroc"]
    return f"{_fmt(auc['delta'], auc['ci95'])} {result['verdict']}"


def methods_gate_lines(entries: list[dict[str, Any]], hypotheses: list[str]) -> list[str]:
    """Per domain, a methods x gates table of AUROC (cold / warm in brackets), plus the
    paired-bootstrap verdict of every hypothesis that compares a method's ``mixed`` arm (a)
    with a gated arm of the same method (b). Empty when the entries hold a single method and
    a single gate."""
    arms = {e["experiment"]: (e.get("method"), e.get("gate")) for e in entries}
    methods = sorted({m for m, _ in arms.values() if m})
    # the ungated (mixed) arm first: the baseline each gated arm is compared with
    gates = sorted({g for _, g in arms.values() if g}, key=lambda g: (is_per_condition(g), g))
    if len(methods) < 2 and len(gates) < 2:
        return []
    verdicts: dict[tuple[str, str, str], str] = {}  # (domain, method, gate) -> cell
    claims = set()
    n_seeds = set()
    for path in hypotheses:
        h = read_json(path)
        a, b = arms.get(h["a"]), arms.get(h["b"])
        if not a or not b or a[0] != b[0] or is_per_condition(a[1]) \
                or not is_per_condition(b[1]):
            continue
        for domain, results in h["results"].items():
            if len(results) == 1:
                verdicts[(domain, b[0], b[1])] = _verdict_cell(results[0])
                claims.add(results[0].get("claim") or h.get("claim"))
                n_seeds.add(len(results[0].get("seeds") or [0]))
    claim = ", ".join(sorted(c for c in claims if c)) or "pooled"
    if n_seeds == {1}:  # the interval's sources of variance, as the hypotheses computed it
        over = ("on one reference draw [paired bootstrap 95% CI over the test maps only: the "
                "variance between reference draws is not covered]")
    else:
        over = ("mean over the reference seeds [crossed bootstrap 95% CI: seeds x test "
                "maps]")
    lines = ["## Methods x gates", "",
             "Image AUROC on the test maps of the first reference draw (cold / warm AUROC in "
             "brackets). Verdict columns: delta AUROC of the gated arm minus the same "
             f"method's mixed arm on the hypothesis's claim ({claim}), {over} "
             "(hypotheses of params).", ""]
    for domain in dict.fromkeys(e["domain"] for e in entries):
        by_arm = {arms[e["experiment"]]: read_json(e["metrics"])
                  for e in entries if e["domain"] == domain}
        label = next(e["label"] for e in entries if e["domain"] == domain)
        gated = [g for g in gates if is_per_condition(g)]
        head = ["method", *gates, *[f"{g} vs mixed" for g in gated]]
        lines += [f"### {label}", "", "| " + " | ".join(head) + " |",
                  "|---" * len(head) + "|"]
        for method in methods:
            cells = [method]
            for g in gates:
                m = by_arm.get((method, g))
                if m is None:
                    cells.append("-")
                    continue
                pc = m.get("per_condition") or {}
                cond = " / ".join(f"{pc[c]['auroc']:.3f}" for c in ("cold", "warm") if c in pc)
                cells.append(f"{m['metrics']['auroc']:.3f}" + (f" ({cond})" if cond else ""))
            cells += [verdicts.get((domain, method, g), "-") for g in gated]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def build_report(spec: dict[str, Any], out: str | Path,
                 inputs: list[str] | tuple[str, ...] = ()) -> None:
    """Write the report and its figures.

    Args:
        spec: ``{"entries": [{domain, label, experiment, scores, metrics, bank_meta,
            manifest, has_conditions}], "hypotheses": [paths], "summary_md": path,
            "summary_csv": path, "figures": dir, "plots": dir}``; ROC points go to
            ``plots/<label>_<experiment>.csv``.
        out: the markdown file to write.
        inputs: further files read (the spec's own file).

    Raises:
        InputError: ``out`` is an input or a folder; the figures or plots folder holds an
            input.
    """
    from hdmap_ad.outputs import FILE, INTO, check_output

    read = [*inputs, spec["summary_md"], spec["summary_csv"], *spec["hypotheses"],
            *(e[k] for e in spec["entries"] for k in ("scores", "metrics", "bank_meta",
                                                        "manifest"))]
    check_output(out, "--out", kind=FILE, inputs=read)
    for key in ("figures", "plots"):
        # the spec's folders are the pipeline's (Snakemake declares and clears them): only
        # the inputs are protected there, a folder of earlier figures is written into
        check_output(spec[key], f"--spec {key}", kind=INTO, inputs=read, force=True)
    out = Path(out)
    figures = Path(spec["figures"])
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# hdmap-ad report", "",
             "Computed by `python -m hdmap_ad report` from the results of this run. "
             "Deployable figures (a threshold fit on the references alone) come first; "
             "figures tuned on the test scores themselves are named `*_test_tuned` and "
             "marked \\* (the `best (test-tuned)` line in the score histograms too).", "",
             "## Summary", "", Path(spec["summary_md"]).read_text(), "",
             f"One row per domain x experiment x budget x seed, with macro averages over "
             f"domains: [{Path(spec['summary_csv']).name}]"
             f"({_rel(Path(spec['summary_csv']), out.parent)}).", ""]
    if spec["hypotheses"]:
        lines += ["## Hypotheses", "",
                  "Each hypothesis runs both arms over several reference draws (seeds) that "
                  "score the same test maps; a crossed (pigeonhole) paired bootstrap resamples "
                  "the seeds and, once per resample, the test maps shared by all drawn seeds "
                  "(Owen 2007). Each verdict is a one-sided test at 2.5% against the "
                  "hypothesis's margin: supported when delta AUROC (b - a) on its claim "
                  "exceeds +margin, refuted when below -margin, equivalent when both "
                  "one-sided tests put it inside (-margin, +margin) (TOST), else "
                  "inconclusive; p-values are Holm-adjusted over the hypothesis's family of "
                  "verdicts (every domain x claim x budget and the macro rows) unless its "
                  "`correction` is `none`. AUROC is threshold-free; accuracies are at the "
                  "deployable thresholds (none is test-tuned).", ""]
        for path in spec["hypotheses"]:
            lines += _hypothesis_lines(path, figures, out.parent)
    lines += methods_gate_lines(spec["entries"], spec["hypotheses"])
    if spec.get("leaderboards"):
        from hdmap_ad.report.leaderboard import report_lines

        lines += report_lines(spec["leaderboards"], out.parent)
    if spec.get("selections"):
        from hdmap_ad.report.selection import selection_lines

        lines += selection_lines(spec["selections"], figures, out.parent)
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for entry in spec["entries"]:
        by_domain.setdefault(entry["label"], []).append(entry)
    lines += ["## Figures", ""]
    for label, entries in by_domain.items():
        manifest = pd.read_parquet(entries[0]["manifest"])
        curves, made = {}, []
        for entry in entries:
            paths, curve = _experiment_figures(entry, figures, manifest)
            curves[entry["experiment"]] = curve
            made += paths
        roc = figures / f"{label}_roc.png"
        roc_figure(curves, roc, f"{label}: ROC")
        for experiment, (y, s) in curves.items():
            write_roc_csv(Path(spec["plots"]) / f"{label}_{experiment}.csv", y, s)
        lines += [f"### {label}", "", f"![{label} ROC]({_rel(roc, out.parent)})", ""]
        lines += [f"![{p.stem}]({_rel(p, out.parent)})" for p in made] + [""]
    write_text(out, "\n".join(lines))
