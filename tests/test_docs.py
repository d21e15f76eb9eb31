"""The guide builds (``mkdocs build --strict``), its generated reference follows the code, and
the README stays a short quickstart."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 400


def test_readme_is_a_short_quickstart():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference "
        "material into a page under docs/")


def _generator() -> dict:
    return runpy.run_path(str(ROOT / "docs" / "gen_reference.py"), run_name="gen_reference")


def test_params_reference_lists_every_gate_and_method_from_the_code():
    from hdmap_ad.config import params_schema
    from hdmap_ad.gating import gate_names
    from hdmap_ad.methods import METHODS

    page = _generator()["params_markdown"](params_schema())
    gate_row = next(line for line in page.splitlines()
                    if line.startswith("| `experiments.<key>.gate` |"))
    assert all(f"`{g}`" in gate_row for g in gate_names())
    for name in METHODS:
        assert f"`name: {name}`" in page or f"`{name}`" in page
    # a conditional requirement is stated with its condition, not as always required
    assert "| `backbones.<key>.weights` | object |  | if not (model: raw) |" in page


def test_cli_reference_lists_every_step_and_option():
    from hdmap_ad.cli import build_parser

    page = _generator()["cli_markdown"](build_parser())
    for step in ("validate", "manifest", "extract", "fit", "score", "predict", "report"):
        assert f"## `{step}` {{#{step}}}" in page
    assert "Also called `bank`." in page  # fit's alias, listed once under fit
    assert page.count("## `fit`") == 1
    assert "| `--spec` | value | yes |" in page


def test_site_builds_strict(tmp_path):
    for module, what in (("mkdocs", "mkdocs"), ("material", "mkdocs-material"),
                         ("mkdocs_gen_files", "mkdocs-gen-files")):
        pytest.importorskip(module, reason=f"{what} is not installed (the `docs` extra: "
                                           "pip install -e '.[docs]')")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (site / "index.html").is_file()
    for page in ("reference/params", "reference/cli", "tutorial/hdmap"):
        assert (site / page / "index.html").is_file()
    tutorial = (site / "tutorial" / "hdmap" / "index.html").read_text()
    assert "domainC_gated_oracle" in tutorial  # the README's results, included at build time
