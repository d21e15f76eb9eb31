"""Results that a re-run is about to replace are marked outdated before the re-run starts.

A step that re-runs because its inputs, params or code changed (manifest, extraction, fit,
score) first renames the results that depend on it, ``results/domainC_gated.json`` ->
``results/domainC_gated.json.outdated``. If the re-run succeeds, Snakemake writes the new
results; if it fails, no old number is left looking current.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

SUFFIX = ".outdated"


def built_on_other_backbones(path: Path, backbone: str) -> bool:
    """Whether result ``path`` records features of backbones other than ``backbone`` only
    (its ``provenance.features`` entries each name their ``backbone``). Anything else, a
    result without that record (sweep summaries, aggregates) or an unreadable one, counts as
    built on it."""
    try:
        features = json.loads(path.read_text()).get("provenance", {}).get("features")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(features, dict) or not features:
        return False
    names = {f.get("backbone") if isinstance(f, dict) else None for f in features.values()}
    return None not in names and backbone not in names


def mark_outdated(patterns: list[str], step: str, backbone: str | None = None) -> list[Path]:
    """Rename each existing file matching ``patterns`` (paths or globs) to
    ``<path>.outdated``; returns the renamed paths.

    ``backbone``: the re-running step extracts this backbone's features, so a result built on
    other backbones only is left alone (two backbones of one domain extract in the same run:
    the second must not outdate what the first's experiments just wrote)."""
    moved = []
    paths = sorted({p for pat in patterns for p in glob.glob(pat)})
    for p in map(Path, paths):
        if backbone is not None and built_on_other_backbones(p, backbone):
            continue
        if p.is_file():
            os.replace(p, p.with_name(p.name + SUFFIX))
            moved.append(p)
    if moved:
        print(f"hdmap_ad {step}: marked {len(moved)} result(s) outdated until this re-run "
              f"finishes: {', '.join(str(m) for m in moved[:5])}"
              + (" ..." if len(moved) > 5 else ""), file=sys.stderr)
    return moved
