"""Leaderboards: experiments ranked over domains with the statistics of Demšar (2006).

J. Demšar, "Statistical comparisons of classifiers over multiple data sets", JMLR 7:1-30.
From a ``(N domains x k experiments)`` table of one metric:

- average ranks (rank 1 = best on a domain, ties share the mean of their ranks);
- the Friedman statistic chi2_F from the average ranks (section 3.2.2, without a correction
  for ties, as the paper computes it: conservative when ranks tie) and the Iman-Davenport
  F_F derived from it (the paper's recommendation: chi2_F is too conservative for few
  domains);
- Nemenyi's critical difference CD = q_alpha sqrt(k (k + 1) / (6 N)) with q_alpha the
  studentized range quantile at infinite degrees of freedom divided by sqrt(2)
  (``scipy.stats.studentized_range``), and each pair's Nemenyi p-value from
  ``scikit_posthocs.posthoc_nemenyi_friedman`` (the same distribution: a pair whose average
  ranks differ by more than CD has p < alpha);
- every pair's two-sided Wilcoxon signed-rank test over the domains
  (``scipy.stats.wilcoxon``; exact for up to 50 domains; zero differences dropped, Wilcoxon's
  own rule), Holm-corrected over all k (k - 1) / 2 pairs
  (``statsmodels.stats.multitest.multipletests``). With n non-zero differences the exact
  two-sided p cannot fall below 2 / 2^n: below 6 domains (p >= 0.0625) no pair can reach
  0.05. Such a pair is marked ``untestable`` and its smallest attainable p is reported;
- the critical-difference diagram (``scikit_posthocs.critical_difference_diagram``): average
  ranks on an axis, the CD drawn above it, experiments Nemenyi cannot tell apart joined by a
  bar.

The statistics are pure functions of the table (:func:`leaderboard`); :func:`leaderboard_step`
reads the per-domain metrics JSONs and writes the JSON, markdown and PNG (atomically).
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hdmap_ad.errors import InputError
from hdmap_ad.metrics.image import round_floats

#: Wilcoxon p-values are exact up to this many non-zero differences (scipy's own limit).
EXACT_MAX = 50
#: Differences are rounded to this many decimals before ranking |d| (the metrics JSON holds 6;
#: float noise in a - b must not break a tie between two equal differences).
DIFF_DECIMALS = 10


def rank_matrix(table: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks of the experiments on each domain.

    Args:
        table: ``(N, k)`` metric values, a row per domain, a column per experiment.
        higher_is_better: whether the largest value ranks first.

    Returns:
        ``(N, k)`` ranks, 1 = best on the row; tied values share the mean of their ranks.
    """
    from scipy.stats import rankdata

    table = np.asarray(table, dtype=np.float64)
    return rankdata(-table if higher_is_better else table, axis=1, method="average")


def friedman(average_ranks: np.ndarray, n: int) -> dict[str, Any]:
    """Friedman's chi2_F and the Iman-Davenport F_F from average ranks (Demšar, 3.2.2).

    Args:
        average_ranks: ``(k,)`` average rank of each experiment over the ``n`` domains.
        n: number of domains (N).

    Returns:
        ``{"chi2", "df", "p", "iman_davenport": {"F", "df1", "df2", "p"}}``; F is None
        (infinite) when every domain ranks the experiments identically, its p then 0.
    """
    from scipy.stats import chi2 as chi2_dist
    from scipy.stats import f as f_dist

    r = np.asarray(average_ranks, dtype=np.float64)
    k = len(r)
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(r**2)) - k * (k + 1) ** 2 / 4.0)
    chi2 = max(chi2, 0.0)  # float error around a perfect tie
    df1, df2 = k - 1, (k - 1) * (n - 1)
    room = n * (k - 1) - chi2  # 0 when every domain ranks the experiments the same way
    if room <= 1e-9 * n * k:
        f_value, f_p = None, 0.0
    else:
        f_value = (n - 1) * chi2 / room
        f_p = float(f_dist.sf(f_value, df1, df2))
    return {"chi2": chi2, "df": df1, "p": float(chi2_dist.sf(chi2, df1)),
            "iman_davenport": {"F": f_value, "df1": df1, "df2": df2, "p": f_p}}


def critical_difference(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Nemenyi's ``(q_alpha, CD)`` for ``k`` experiments over ``n`` domains (Demšar, 3.2.2).

    ``q_alpha`` is the studentized range quantile (k groups, infinite degrees of freedom)
    divided by sqrt(2) (Demšar's Table 5: 2.569 for k = 4 at alpha 0.05).
    """
    from scipy.stats import studentized_range

    q = float(studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q, q * math.sqrt(k * (k + 1) / (6.0 * n))


def min_attainable_p(n_nonzero: int) -> float:
    """Smallest two-sided Wilcoxon signed-rank p with ``n_nonzero`` non-zero differences (all
    of one sign): 2 / 2^n exactly (scipy's exact distribution); 1 with none."""
    from scipy.stats import wilcoxon

    if n_nonzero == 0:
        return 1.0
    if n_nonzero > EXACT_MAX:
        n_nonzero = EXACT_MAX  # far below any alpha; the normal approximation takes over
    return float(wilcoxon(np.arange(1.0, n_nonzero + 1), method="exact").pvalue)


def wilcoxon_pair(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float, int]:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` over the domains.

    Args:
        a, b: ``(N,)`` metric values of two experiments on the same domains.

    Returns:
        ``(statistic min(R+, R-) or None, p, number of non-zero differences)``; with no
        non-zero difference, ``(None, 1.0, 0)``.
    """
    from scipy.stats import wilcoxon

    d = np.round(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64),
                 DIFF_DECIMALS)
    n_nonzero = int(np.count_nonzero(d))
    if n_nonzero == 0:
        return None, 1.0, 0
    with warnings.catch_warnings():
        # scipy notes that its exact null ignores tied |d|; with few domains no better exists
        warnings.simplefilter("ignore", UserWarning)
        res = wilcoxon(d, zero_method="wilcox",
                       method="exact" if n_nonzero <= EXACT_MAX else "approx")
    return float(res.statistic), float(res.pvalue), n_nonzero


def leaderboard(
    table: np.ndarray, experiments: list[str], domains: list[str], *, alpha: float = 0.05,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Every statistic of a leaderboard, as a JSON-ready dict (floats unrounded).

    Args:
        table: ``(N, k)`` metric values, a row per domain (``domains``), a column per
            experiment (``experiments``); N >= 2, k >= 2, all finite.
        experiments: the k column names.
        domains: the N row names.
        alpha: level of every test and of the critical difference.
        higher_is_better: whether the largest value ranks first.

    Returns:
        ``{"experiments", "domains", "alpha", "higher_is_better", "table", "ranks",
        "ranking", "friedman", "iman_davenport", "nemenyi", "pairwise"}``: ``ranking`` is
        best average rank first (ties by name); ``pairwise`` one row per pair in the
        experiments' order with the rank difference, Nemenyi p, Wilcoxon raw and
        Holm-adjusted p, the smallest attainable p and the ``untestable`` flag.
    """
    import pandas as pd
    import scikit_posthocs as sp
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(table, dtype=np.float64)
    n, k = values.shape
    if n != len(domains) or k != len(experiments):
        raise ValueError(f"table is {values.shape}, names are {len(domains)} x {len(experiments)}")
    if n < 2 or k < 2:
        raise InputError(f"a leaderboard needs at least 2 domains and 2 experiments, got "
                         f"{n} x {k}")
    if not np.isfinite(values).all():
        raise InputError("leaderboard table: non-finite metric value")
    ranks = rank_matrix(values, higher_is_better)
    avg = ranks.mean(axis=0)
    stats = friedman(avg, n)
    q_alpha, cd = critical_difference(k, n, alpha)
    nemenyi = sp.posthoc_nemenyi_friedman(pd.DataFrame(values, columns=list(experiments)))

    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    tests = [wilcoxon_pair(values[:, i], values[:, j]) for i, j in pairs]
    raw_p = np.array([p for _, p, _ in tests])
    holm = multipletests(raw_p, alpha=alpha, method="holm")[1]
    pairwise = []
    for (i, j), (stat, p, n_nonzero), p_holm in zip(pairs, tests, holm, strict=True):
        a, b = experiments[i], experiments[j]
        p_min = min_attainable_p(n_nonzero)
        untestable = p_min > alpha
        better = None if avg[i] == avg[j] else (a if avg[i] < avg[j] else b)
        rank_diff = float(abs(avg[i] - avg[j]))
        pairwise.append({
            "a": a, "b": b,
            "better": better,
            "mean_difference": float(np.mean(values[:, i] - values[:, j])),
            "rank_difference": rank_diff,
            "nemenyi_p": float(nemenyi.loc[a, b]),
            "nemenyi_significant": bool(rank_diff > cd),
            "wilcoxon_statistic": stat,
            "n_nonzero": n_nonzero,
            "wilcoxon_p": p,
            "wilcoxon_p_holm": float(p_holm),
            "min_attainable_p": p_min,
            "untestable": bool(untestable),
            "wilcoxon_significant": bool(p_holm < alpha and not untestable),
        })
    best = ranks == ranks.min(axis=1, keepdims=True)
    order = sorted(range(k), key=lambda c: (avg[c], experiments[c]))
    ranking = [{"position": pos + 1, "experiment": experiments[c],
                "average_rank": float(avg[c]), "mean": float(values[:, c].mean()),
                "best_on_domains": int(best[:, c].sum())}
               for pos, c in enumerate(order)]
    return {
        "experiments": list(experiments),
        "domains": list(domains),
        "alpha": alpha,
        "higher_is_better": higher_is_better,
        "table": {d: dict(zip(experiments, map(float, values[r]), strict=True))
                  for r, d in enumerate(domains)},
        "ranks": {d: dict(zip(experiments, map(float, ranks[r]), strict=True))
                  for r, d in enumerate(domains)},
        "ranking": ranking,
        "friedman": {key: stats[key] for key in ("chi2", "df", "p")},
        "iman_davenport": stats["iman_davenport"],
        "nemenyi": {"q_alpha": q_alpha, "critical_difference": cd},
        "pairwise": pairwise,
    }


# -- presentation ---------------------------------------------------------------------------
def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def _pair_verdict(row: dict[str, Any]) -> str:
    if row["untestable"]:
        return f"untestable (p >= {_p(row['min_attainable_p'])})"
    if row["wilcoxon_significant"]:
        return f"{row['better']} better"
    return "no significant difference"


def summary_lines(result: dict[str, Any], figure: str | None = None) -> list[str]:
    """The ranking table, the omnibus tests and CD, and the diagram (``figure``: its path
    relative to the markdown); no pairwise table (see :func:`markdown`)."""
    domains, n, k = result["domains"], len(result["domains"]), len(result["experiments"])
    order = "highest" if result["higher_is_better"] else "lowest"
    head = ["#", "experiment", "average rank", "mean", *domains]
    lines = [f"`{result['metric']}` over {n} domains ({', '.join(domains)}), {order} value "
             f"ranks 1 on a domain; ties share their mean rank.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in result["ranking"]:
        e = row["experiment"]
        cells = [str(row["position"]), f"`{e}`", f"{row['average_rank']:.3f}",
                 f"{row['mean']:.4f}",
                 *(f"{result['table'][d][e]:.4f} ({result['ranks'][d][e]:g})" for d in domains)]
        lines.append("| " + " | ".join(cells) + " |")
    fr, iman, nem = result["friedman"], result["iman_davenport"], result["nemenyi"]
    f_text = "infinite" if iman["F"] is None else f"{iman['F']:.3f}"
    lines += ["", f"Friedman chi2_F = {fr['chi2']:.3f} (df {fr['df']}), p = {_p(fr['p'])}; "
              f"Iman-Davenport F_F = {f_text} (df {iman['df1']}, {iman['df2']}), "
              f"p = {_p(iman['p'])}. Nemenyi critical difference at alpha {result['alpha']:g}: "
              f"CD = {nem['critical_difference']:.3f} (q_alpha {nem['q_alpha']:.3f}, k = {k}, "
              f"N = {n}): two experiments whose average ranks differ by more are different "
              "(Demšar 2006)."]
    untestable = sum(r["untestable"] for r in result["pairwise"])
    if untestable:
        lines.append("")
        lines.append(f"{untestable} of {len(result['pairwise'])} pairs are untestable with a "
                     f"two-sided Wilcoxon test: with {n} domains its exact p cannot fall below "
                     f"{_p(min(r['min_attainable_p'] for r in result['pairwise']))} "
                     f"(> alpha {result['alpha']:g}; 6 domains are needed for 0.05).")
    if figure:
        lines += ["", f"![critical difference diagram: {result.get('leaderboard', '')}]({figure})"]
    return lines + [""]


def markdown(result: dict[str, Any], figure: str | None = None) -> str:
    """The leaderboard as markdown: :func:`summary_lines` and the pairwise table."""
    lines = [f"# Leaderboard `{result['leaderboard']}`", "", *summary_lines(result, figure),
             "## Pairwise", "",
             "Two-sided Wilcoxon signed-rank test over the domains, Holm-corrected over all "
             f"{len(result['pairwise'])} pairs; Nemenyi p from the average ranks.", "",
             "| a | b | rank difference | Nemenyi p | Wilcoxon p | Holm p | verdict |",
             "|---" * 7 + "|"]
    for r in result["pairwise"]:
        lines.append(f"| `{r['a']}` | `{r['b']}` | {r['rank_difference']:.3f} | "
                     f"{_p(r['nemenyi_p'])} | {_p(r['wilcoxon_p'])} | "
                     f"{_p(r['wilcoxon_p_holm'])} | {_pair_verdict(r)} |")
    return "\n".join(lines) + "\n"


def cd_diagram(result: dict[str, Any], path: str | Path) -> None:
    """The critical-difference diagram (scikit-posthocs), written as PNG atomically.

    Average ranks on the axis (1 = best, left), Nemenyi's CD drawn above it, experiments
    whose Nemenyi p is >= alpha joined by a bar.
    """
    import pandas as pd
    import scikit_posthocs as sp

    from hdmap_ad.report.figures import plt, save_figure  # Agg backend, deterministic PNG

    names = result["experiments"]
    k = len(names)
    sig = pd.DataFrame(np.ones((k, k)), index=names, columns=names)
    for r in result["pairwise"]:
        sig.loc[r["a"], r["b"]] = sig.loc[r["b"], r["a"]] = r["nemenyi_p"]
    ranks = {r["experiment"]: r["average_rank"] for r in result["ranking"]}
    cd = result["nemenyi"]["critical_difference"]
    fig, ax = plt.subplots(figsize=(8.0, 2.0 + 0.3 * math.ceil(k / 2)))
    sp.critical_difference_diagram(ranks, sig, ax=ax, alpha=result["alpha"],
                                   label_fmt_left="{label} ({rank:.2f})",
                                   label_fmt_right="({rank:.2f}) {label}",
                                   label_props={"fontsize": 8})
    # the whole rank range, as Demšar draws it; the CD bar above the tick labels, from rank 1
    ax.set_xlim(1, k)
    ax.set_xticks(range(1, k + 1, max(1, math.ceil(k / 12))))
    bottom = ax.get_ylim()[0]
    ax.set_ylim(bottom, 2.4)
    ax.plot([1, 1 + cd], [1.6, 1.6], color="k", lw=1.5, clip_on=False)
    for x in (1, 1 + cd):
        ax.plot([x, x], [1.4, 1.8], color="k", lw=1.5, clip_on=False)
    ax.text(1 + cd / 2, 1.95, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(f"{result.get('leaderboard', '')}: average rank of "
                 f"{result.get('metric', 'the metric')} over {len(result['domains'])} domains "
                 f"(Nemenyi, alpha {result['alpha']:g})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# -- the step -------------------------------------------------------------------------------
def metric_value(metrics: dict[str, Any], metric: str, where: str) -> float:
    """The value at dotted path ``metric`` of one metrics JSON; errors name ``where``."""
    value: Any = metrics
    for part in metric.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InputError(f"{where}: no key {metric!r} (missing {part!r})")
        value = value[part]
    if value is None:
        raise InputError(f"{where}: {metric} is null (not defined for this run, e.g. a single "
                         "class or no masks); rank by another metric")
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise InputError(f"{where}: {metric} is {value!r}, not a finite number")
    return float(value)


def read_table(results: dict[str, dict[str, str]], domains: list[str],
               experiments: list[str], metric: str) -> np.ndarray:
    """``(N, k)`` values of ``metric`` from ``results[domain][experiment]`` (metrics JSON
    paths); a missing, unreadable or foreign file is an :class:`InputError` naming it."""
    import json

    table = np.empty((len(domains), len(experiments)))
    for r, d in enumerate(domains):
        for c, e in enumerate(experiments):
            path = (results.get(d) or {}).get(e)
            if path is None:
                raise InputError(f"leaderboard spec: results.{d}.{e}: no metrics JSON given")
            try:
                metrics = json.loads(Path(path).read_text())
            except FileNotFoundError:
                raise InputError(f"{path}: metrics JSON not found") from None
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: not a readable metrics JSON ({exc})") from None
            if not isinstance(metrics, dict):
                raise InputError(f"{path}: expected a JSON object")
            if metrics.get("experiment", e) != e:
                raise InputError(f"{path}: holds experiment {metrics['experiment']!r}, "
                                 f"expected {e!r}")
            table[r, c] = metric_value(metrics, metric, str(path))
    return table


def leaderboard_report(spec: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard JSON of a step spec: ``{key, experiments, domains, metric,
    higher_is_better, alpha, results: {domain: {experiment: metrics JSON path}}}``."""
    experiments, domains = list(spec["experiments"]), list(spec["domains"])
    table = read_table(spec["results"], domains, experiments, spec["metric"])
    result = leaderboard(table, experiments, domains, alpha=float(spec["alpha"]),
                         higher_is_better=bool(spec["higher_is_better"]))
    head = {"leaderboard": spec["key"], "metric": spec["metric"],
            "method": "Demšar (2006): average ranks, Friedman chi2_F (no tie correction) and "
                      "Iman-Davenport F_F, Nemenyi critical difference; pairwise two-sided "
                      "Wilcoxon signed-rank tests (exact, zero differences dropped), "
                      "Holm-corrected over all pairs; a pair is untestable when its smallest "
                      "attainable p exceeds alpha"}
    return round_floats({**head, **result})


def leaderboard_step(spec: dict[str, Any], out_json: str | Path, out_md: str | Path,
                     out_figure: str | Path) -> None:
    """The ``leaderboard`` step: compute everything, then write the diagram, the markdown
    and the JSON (each atomically; the JSON last, so it exists only beside the others)."""
    from hdmap_ad.io import write_json, write_text

    out_md = Path(out_md)
    outs = {"--out": Path(out_json), "--markdown": out_md, "--figure": Path(out_figure)}
    inputs = {Path(p).resolve() for per in spec["results"].values() for p in per.values()}
    for flag, path in outs.items():
        if path.resolve() in inputs:
            raise InputError(f"{flag} {path}: is one of the metrics JSONs ranked; write the "
                             "leaderboard elsewhere")
    if len({p.resolve() for p in outs.values()}) < len(outs):
        raise InputError("--out, --markdown, --figure: must name three different files")
    result = leaderboard_report(spec)
    print(f"leaderboard {spec['key']}: {len(result['experiments'])} experiments x "
          f"{len(result['domains'])} domains by {spec['metric']}", file=sys.stderr)
    cd_diagram(result, out_figure)
    figure = Path(out_figure)
    rel = figure.name if figure.parent.resolve() == out_md.parent.resolve() else str(figure)
    write_text(out_md, markdown(result, rel))
    write_json(out_json, result)


def report_lines(leaderboards: list[dict[str, str]], out_dir: str | Path) -> list[str]:
    """The report's "Leaderboards" section: per leaderboard its ranking, tests, CD diagram
    and a link to its full pairwise table.

    Args:
        leaderboards: ``[{"json", "md", "figure"}]`` paths of each leaderboard's outputs.
        out_dir: the report's folder (links are relative to it).
    """
    import os

    from hdmap_ad.io import read_json

    def rel(path: str) -> str:
        return Path(os.path.relpath(path, out_dir)).as_posix()

    lines = ["## Leaderboards", "",
             "Experiments ranked over domains (Demšar 2006): average ranks, the Friedman and "
             "Iman-Davenport tests, Nemenyi's critical difference (CD diagram: experiments "
             "joined by a bar are not significantly different), and in each leaderboard's "
             "own table every pair's Holm-corrected Wilcoxon signed-rank test.", ""]
    for paths in leaderboards:
        result = read_json(paths["json"])
        lines += [f"### {result['leaderboard']}", "",
                  *summary_lines(result, rel(paths["figure"])),
                  f"Every pair: [{Path(paths['md']).name}]({rel(paths['md'])}).", ""]
    return lines


def leaderboard_cli(spec: dict[str, Any], out: str | Path, out_md: str | Path | None = None,
                    out_figure: str | Path | None = None) -> None:
    """``python -m hdmap_ad leaderboard``: one leaderboards entry (with its ``key``) and
    ``results: {domain: {experiment: metrics JSON}}``; the markdown and the diagram default
    to ``out`` with ``.md`` and ``<out>_critical_difference.png``."""
    from hdmap_ad.config import LeaderboardConfig

    spec = dict(spec)
    results = spec.pop("results", None)
    if not isinstance(results, dict):
        raise InputError("--spec: expected results: {domain: {experiment: metrics JSON}}")
    cfg = LeaderboardConfig.from_dict(str(spec.pop("key", "leaderboard")), spec)
    if not cfg.domains:
        raise InputError(f"leaderboards.{cfg.key}.domains: the step needs them listed")
    out = Path(out)
    leaderboard_step({**cfg.to_dict(), "results": results}, out,
                     out_md or out.with_suffix(".md"),
                     out_figure or out.with_name(f"{out.stem}_critical_difference.png"))
