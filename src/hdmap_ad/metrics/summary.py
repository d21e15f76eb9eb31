"""Collect per-target metrics JSONs into one compact table (DVC metrics file + markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hdmap_ad.metrics.image import round_floats

#: Columns of the compact table, in order: (name, path into a metrics JSON). Threshold-free
#: and deployable (reference-fit) figures first; figures tuned on the test scores themselves
#: last, named ``*_test_tuned`` (F1-max and the best-threshold accuracy pick their threshold
#: on the test maps).
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("auroc", ("metrics", "auroc")),
    ("auroc_cold", ("per_condition", "cold", "auroc")),
    ("auroc_warm", ("per_condition", "warm", "auroc")),
    ("aupr", ("metrics", "aupr")),
    ("accuracy_deployable", ("metrics", "accuracy_deployable")),
    ("gate_accuracy", ("gate", "accuracy")),
    ("f1_max_test_tuned", ("metrics", "f1_max")),
    ("accuracy_best_threshold_test_tuned", ("metrics", "accuracy_best_threshold")),
)


#: Column headers that get a footnote mark: figures tuned on the test set.
TEST_TUNED_LABEL = {c: f"{c}\\*" for c, _ in COLUMNS if c.endswith("_test_tuned")}
#: The footnote of those marks (summary.md, the report, README tables).
TEST_TUNED_FOOTNOTE = (
    "\\* tuned on the test scores themselves (`*_test_tuned`: the threshold is picked on the "
    "test maps): an upper bound for comparison, not a deployable figure "
    "(`accuracy_deployable` uses a threshold fit on the references only).")


def _get(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def compact(metrics_by_target: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{target: {"method": name, column: value ...}}`` for every target, sorted by name."""
    return round_floats(
        {t: {"method": m.get("method"), **{c: _get(m, p) for c, p in COLUMNS}}
         for t, m in sorted(metrics_by_target.items())}
    )


def markdown(table: dict[str, dict[str, Any]]) -> str:
    """The compact table as markdown (values to 3 decimals; ``-`` where not applicable)."""
    names = [c for c, _ in COLUMNS]
    header = [TEST_TUNED_LABEL.get(c, c) for c in names]
    lines = ["| target | method | " + " | ".join(header) + " |",
             "|---" * (len(names) + 2) + "|"]
    for target, row in table.items():
        cells = ["-" if row[c] is None else f"{row[c]:.3f}" for c in names]
        lines.append(f"| {target} | {row.get('method') or '-'} | " + " | ".join(cells) + " |")
    lines += ["", TEST_TUNED_FOOTNOTE]
    return "\n".join(lines) + "\n"


def target_name(path: str | Path) -> str:
    return Path(path).stem


def summary_rows(
    entries: list[dict[str, Any]], metrics_by_target: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Rows of ``summary.csv``: one per domain x experiment x budget x seed, then one macro
    average per experiment variant over domains (``domain == "macro"``: the mean of the
    per-domain metrics, never pooled scores).

    Args:
        entries: ``[{"target", "domain", "experiment", "variant", "budget", "seed"}]``.
        metrics_by_target: target name -> its metrics JSON.
    """
    names = [c for c, _ in COLUMNS]
    rows = []
    for e in entries:
        m = metrics_by_target[e["target"]]
        rows.append({**{k: e.get(k) for k in ("domain", "experiment", "method", "gate",
                                               "variant", "budget", "seed")},
                     **{c: _get(m, p) for c, p in COLUMNS}})
    macro = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        avg = {}
        for c in names:
            vals = [r[c] for r in group if r[c] is not None]
            avg[c] = sum(vals) / len(vals) if len(vals) == len(group) else None
        macro.append({**{k: group[0][k] for k in ("experiment", "method", "gate", "variant",
                                                  "budget", "seed")},
                      "domain": "macro", **avg})
    return round_floats(rows + macro)


def aggregate_step(inputs: list[str], out: str | Path, markdown_out: str | Path | None = None,
                   csv_out: str | Path | None = None,
                   entries: list[dict[str, Any]] | None = None) -> None:
    """The ``aggregate`` step: every target's metrics JSON -> one compact table (``out``),
    optionally as markdown and as ``summary.csv`` (rows of :func:`summary_rows` over
    ``entries``); each file written atomically."""
    import csv
    import io

    from hdmap_ad.io import read_json, write_json, write_text

    by_target = {target_name(p): read_json(p) for p in inputs}
    table = compact(by_target)
    write_json(out, table)
    if markdown_out:
        write_text(markdown_out, markdown(table))
    if csv_out:
        rows = summary_rows(entries or [], by_target)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(csv_out, buf.getvalue())
