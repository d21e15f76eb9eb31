"""The run layout (hdmap_ad.layout) is the one place that spells paths under work/ and results/."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from hdmap_ad.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
#: A string literal (not a triple-quoted docstring) that starts a work/ or results/ path,
#: or an f-string built on the work folder.
SPELLED_PATH = re.compile(r"""(?<!["'])[fr]?["'](?:results|work)/|\{WORK\}""")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    return [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1)
            if not line.lstrip().startswith("#")]


def test_rules_spell_no_run_paths():
    assert len(RULE_FILES) >= 9
    spelled = [f"{p.name}:{i}: {line.strip()}" for p in RULE_FILES for i, line in _code_lines(p)
               if SPELLED_PATH.search(line)]
    assert spelled == []
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    # the one place the rules' layout is made
    assert sum("RunLayout(" in p.read_text() for p in RULE_FILES) == 1
    assert "LAYOUT = RunLayout(work=WORK" in common


def test_pattern_catches_a_spelled_path():
    assert SPELLED_PATH.search('        f"{WORK}/scores/domain_{{domain}}/{{e}}.parquet",')
    assert SPELLED_PATH.search('        "results/metrics.json",')
    assert not SPELLED_PATH.search('    """results/report.md: tables"""')


def test_default_paths_are_the_pipeline_targets():
    lay = RunLayout()
    assert lay.manifest("C") == "work/manifests/domain_C.parquet"
    assert lay.features("C", "lite2", "blocks.3") == "work/features/domain_C/lite2/blocks.3.parquet"
    assert lay.model_dir("C", "gated") == "work/models/domain_C/gated"
    assert lay.model_meta("C", "gated") == "work/models/domain_C/gated.json"
    assert lay.scores("C", "gated") == "work/scores/domain_C/gated.parquet"
    assert lay.metrics("C", "gated") == "results/C_gated.json"
    assert lay.metrics("{domain}", "{experiment}") == "results/{domain}_{experiment}.json"
    assert lay.hypothesis("h1") == "results/hypotheses/h1.json"
    assert lay.leaderboard("lb")["figure"] == "results/leaderboards/lb_critical_difference.png"
    assert lay.report() == "results/report.md"
    assert lay.figures() == "results/figures"
    assert lay.roc_plot("C", "gated") == "results/plots/roc/C_gated.csv"
    assert lay.exported_model("C", "gated") == "results/models/C_gated"
    assert lay.log("aggregate") == "work/logs/aggregate.log"
    assert lay.log("fit", "C_gated") == "work/logs/fit/C_gated.log"
    pre = RunLayout(result_prefix="mvtec_")
    assert pre.metrics("bottle", "gated") == "results/mvtec_bottle_gated.json"
    assert pre.selected("bottle", "sel") == "results/mvtec_bottle_sel_selected.json"
    assert pre.domain_results("bottle") == "results/mvtec_bottle_*.json"


def _every_path(lay: RunLayout) -> dict[str, str]:
    out = {}
    for name, fn in inspect.getmembers(lay, inspect.ismethod):
        if name.startswith("_") or name in ("target", "label"):
            continue
        n_args = len(inspect.signature(fn).parameters)
        value = fn(*[f"a{i}" for i in range(n_args)])
        for key, path in (value.items() if isinstance(value, dict) else [("", value)]):
            out[f"{name}{key}"] = path
    return out


@pytest.mark.parametrize("root", ["/runs/r1", "proj/run2"])
def test_another_root_puts_every_path_under_it(root):
    paths = _every_path(RunLayout(root))
    assert len(paths) >= 25
    for name, path in paths.items():
        assert path.startswith(f"{root}/work/") or path.startswith(f"{root}/results/") \
            or path in (f"{root}/results/plots/roc", f"{root}/results/figures"), name
    # the same names as the default layout, one root further down
    default = _every_path(RunLayout())
    assert {k: f"{root}/{v}" for k, v in default.items()} == paths


def test_an_absolute_work_folder_ignores_the_root():
    lay = RunLayout("/runs/r1", work="/scratch/w")
    assert lay.scores("A", "e") == "/scratch/w/scores/domain_A/e.parquet"
    assert lay.metrics("A", "e") == "/runs/r1/results/A_e.json"


def test_the_library_joins_no_run_paths_itself():
    """export, the bundle, the app and the CLI ask the layout: no module but layout.py joins
    a path from the run's folder names (help texts and messages may still name them)."""
    joined = re.compile(r"""/ ?["'](?:results|work|models|scores|manifests|hypotheses|"""
                        r"""leaderboards)["']|["']domain_\{""")
    src = REPO / "src" / "hdmap_ad"
    found = [f"{p.relative_to(src)}:{i}" for p in sorted(src.rglob("*.py"))
             if p.name != "layout.py" for i, line in _code_lines(p) if joined.search(line)]
    assert found == []
