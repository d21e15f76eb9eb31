"""The report's section on selection grids: what each chose without test labels, its test
AUROC as the headline beside the grid's best on test (an upper bound), and examples of each
validation recipe's synthetic anomalies beside real faults of the same domain."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Example maps per row of the recipe figure.
EXAMPLES = 4


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _point(point: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in point.items())


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def read_mask(path: str) -> np.ndarray | None:
    """A mask file as ``(H, W)`` bool (TIFF or an image; any non-zero pixel), or None."""
    if not path:
        return None
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        from PIL import Image

        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    return arr.reshape(arr.shape[0], arr.shape[1], -1).max(axis=-1) > 0


def _spread(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """``k`` rows evenly spread over ``frame`` (its order), all of them when fewer."""
    if len(frame) <= k:
        return frame
    return frame.iloc[np.unique(np.linspace(0, len(frame) - 1, k).round().astype(int))]


def examples_figure(domain_entries: list[dict[str, Any]], path: Path, title: str) -> None:
    """One row per validation set of a domain (examples spread over its strength range),
    then a row of the domain's real faults (cold to warm)."""
    from hdmap_ad.data.maps import read_map
    from hdmap_ad.io import read_json
    from hdmap_ad.report.figures import example_maps_figure

    rows = []
    for set_dir in dict.fromkeys(e["set"] for e in domain_entries):
        frame = pd.read_parquet(Path(set_dir) / "manifest.parquet").sort_values(
            ["strength", "index"], kind="stable")
        spec = read_json(Path(set_dir) / "spec.json")["validation"]
        shown = _spread(frame, EXAMPLES)
        rows.append({"name": f"{spec['recipe']} ({spec['key']})",
                     "maps": [read_map(p) for p in shown.path],
                     "masks": [read_mask(p) for p in shown.mask_path],
                     "captions": [f"{c}, strength {s:.2f}" for c, s in
                                  zip(shown.condition, shown.strength, strict=True)]})
    manifest = pd.read_parquet(domain_entries[0]["manifest"])
    faults = manifest[(manifest.split == "test") & (manifest.label != "good")].sort_values(
        ["condition", "index"], kind="stable")
    shown = _spread(faults, EXAMPLES)
    rows.append({"name": "real faults", "maps": [read_map(p) for p in shown.path],
                 "masks": [read_mask(p) for p in shown.mask_path],
                 "captions": [f"{c} {i}" for c, i in zip(shown.condition, shown.image_id,
                                                          strict=True)]})
    example_maps_figure(rows, path, title)


def selection_lines(entries: list[dict[str, Any]], figures: Path, out_dir: Path) -> list[str]:
    """Markdown of the selections (``entries``: domain x selection, with ``selected`` (its
    JSON), ``set`` (its validation set folder), ``manifest`` and ``label``); figures are
    written into ``figures``."""
    from hdmap_ad.io import read_json

    if not entries:
        return []
    lines = ["## Selected options (no test labels)", "",
             "Each selection grid's points are scored on synthetic anomalies made from the "
             "held-out references of each reference fold, by that fold's models (validation "
             "AUROC: anomalies vs the held-out references; no test map or label). The point "
             "with the best validation AUROC is chosen and its **test AUROC is the "
             "headline**. *Grid best on test* is the point a look at the test labels would "
             "pick: an upper bound on what any selection could reach on this grid, never the "
             "headline; regret is its test AUROC minus the chosen point's.", "",
             "| domain | selection | chosen | validation AUROC | **test AUROC** | default "
             "point's test AUROC | grid best on test (upper bound) | regret |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        s = read_json(e["selected"])
        default = s.get("default")
        best = s["grid_best_on_test"]
        lines.append(
            f"| {e['label']} | `{e['selection']}` | {_point(s['chosen']['point'])} "
            f"(`{s['chosen']['experiment']}`) | {_f(s['validation']['auroc'])} | "
            f"**{_f(s['test']['auroc'])}** | "
            + ("-" if default is None else f"{_f(default['test']['auroc'])} "
               f"({_point(default['point'])})")
            + f" | {_f(best['test']['auroc'])} ({_point(best['point'])}) | "
            f"{_f(s['regret']['chosen'])} |")
    lines.append("")
    for label in dict.fromkeys(e["label"] for e in entries):
        mine = [e for e in entries if e["label"] == label]
        path = figures / f"{label}_validation_examples.png"
        examples_figure(mine, path, f"{label}: synthetic validation anomalies (red: their "
                                    "masks) beside real faults")
        lines += [f"![{path.stem}]({_rel(path, out_dir)})", ""]
    return lines
