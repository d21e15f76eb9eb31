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

from hdmap_ad.data.maps import read_map
from hdmap_ad.io import atomic_path, read_json
from hdmap_ad.metrics.pixel import anomaly_map
from hdmap_ad.report.figures import (
    anomaly_map_grid,
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
    score_histograms(scores, {"best": thr["best"], "deployable": thr["deployable"]}, hist,
                     f"{name}: image scores")
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


def _hypothesis_lines(path: str) -> list[str]:
    h = read_json(path)
    lines = [f"### {h['hypothesis']}: {h['verdict']}", "", h.get("description") or h["claim"], "",
             "| domain | budget | ref. seed | a | b | delta AUROC [95% CI] "
             "| delta acc (deployable) [95% CI] | verdict |", "|---|---|---|---|---|---|---|---|"]
    for domain, results in h["results"].items():
        for r in results:
            auc, acc = r["auroc"], r["accuracy_deployable"]
            acc_txt = (f"{acc['delta']:+.3f} [{acc['ci95'][0]:+.3f}, {acc['ci95'][1]:+.3f}]"
                       if acc and acc.get("delta") is not None else "-")
            lines.append(
                f"| {domain} | {r['budget'] if r['budget'] is not None else '-'} | "
                f"{r['ref_seed'] if r['ref_seed'] is not None else '-'} | {r['a']} | {r['b']} | "
                f"{auc['delta']:+.3f} [{auc['ci95'][0]:+.3f}, {auc['ci95'][1]:+.3f}] | "
                f"{acc_txt} | {r['verdict']} |"
            )
    return [*lines, ""]


def _verdict_cell(result: dict[str, Any]) -> str:
    auc = result["auroc"]
    return (f"{auc['delta']:+.3f} [{auc['ci95'][0]:+.3f}, {auc['ci95'][1]:+.3f}] "
            f"{result['verdict']}")


def methods_gate_lines(entries: list[dict[str, Any]], hypotheses: list[str]) -> list[str]:
    """Per domain, a methods x gates table of AUROC (cold / warm in brackets), plus the
    paired-bootstrap verdict of every hypothesis that compares a method's ``mixed`` arm (a)
    with a gated arm of the same method (b). Empty when the entries hold a single method and
    a single gate."""
    arms = {e["experiment"]: (e.get("method"), e.get("gate")) for e in entries}
    methods = sorted({m for m, _ in arms.values() if m})
    gates = sorted({g for _, g in arms.values() if g}, key=lambda g: (g != "mixed", g))
    if len(methods) < 2 and len(gates) < 2:
        return []
    verdicts: dict[tuple[str, str, str], str] = {}  # (domain, method, gate) -> cell
    for path in hypotheses:
        h = read_json(path)
        a, b = arms.get(h["a"]), arms.get(h["b"])
        if not a or not b or a[0] != b[0] or a[1] != "mixed" or b[1] == "mixed":
            continue
        for domain, results in h["results"].items():
            if len(results) == 1:
                verdicts[(domain, b[0], b[1])] = _verdict_cell(results[0])
    lines = ["## Methods x gates", "",
             "Image AUROC on the test maps (cold / warm AUROC in brackets). Verdict columns: "
             "delta AUROC of the gated arm minus the same method's mixed arm, paired bootstrap "
             "over test maps for one reference draw [95% CI] (hypotheses of params).", ""]
    for domain in dict.fromkeys(e["domain"] for e in entries):
        by_arm = {arms[e["experiment"]]: read_json(e["metrics"])
                  for e in entries if e["domain"] == domain}
        label = next(e["label"] for e in entries if e["domain"] == domain)
        gated = [g for g in gates if g != "mixed"]
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


def build_report(spec: dict[str, Any], out: str | Path) -> None:
    """Write the report and its figures.

    Args:
        spec: ``{"entries": [{domain, label, experiment, scores, metrics, bank_meta,
            manifest, has_conditions}], "hypotheses": [paths], "summary_md": path,
            "summary_csv": path, "figures": dir, "plots": dir}``; ROC points go to
            ``plots/<label>_<experiment>.csv``.
        out: the markdown file to write.
    """
    out = Path(out)
    figures = Path(spec["figures"])
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# hdmap-ad report", "",
             "Computed by `python -m hdmap_ad report` from the results of this run.", "",
             "## Summary", "", Path(spec["summary_md"]).read_text(), "",
             f"One row per domain x experiment x budget x seed, with macro averages over "
             f"domains: [{Path(spec['summary_csv']).name}]"
             f"({_rel(Path(spec['summary_csv']), out.parent)}).", ""]
    if spec["hypotheses"]:
        lines += ["## Hypotheses", "",
                  "Paired bootstrap over test maps (b - a); supported when the 95% interval "
                  "of delta AUROC lies above the margin, refuted when below minus it.", ""]
        for path in spec["hypotheses"]:
            lines += _hypothesis_lines(path)
    lines += methods_gate_lines(spec["entries"], spec["hypotheses"])
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
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines))
