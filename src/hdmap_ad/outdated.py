"""Results that a re-run is about to replace are marked outdated before the re-run starts.

A step that re-runs because its inputs, params or code changed (manifest, extraction, fit,
score) first renames the results that depend on it, ``results/domainC_gated.json`` ->
``results/domainC_gated.json.outdated``. If the re-run succeeds, Snakemake writes the new
results; if it fails, no old number is left looking current.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

SUFFIX = ".outdated"


def mark_outdated(patterns: list[str], step: str) -> list[Path]:
    """Rename each existing file matching ``patterns`` (paths or globs) to
    ``<path>.outdated``; returns the renamed paths."""
    moved = []
    paths = sorted({p for pat in patterns for p in glob.glob(pat)})
    for p in map(Path, paths):
        if p.is_file():
            os.replace(p, p.with_name(p.name + SUFFIX))
            moved.append(p)
    if moved:
        print(f"hdmap_ad {step}: marked {len(moved)} result(s) outdated until this re-run "
              f"finishes: {', '.join(str(m) for m in moved[:5])}"
              + (" ..." if len(moved) > 5 else ""), file=sys.stderr)
    return moved
