"""Command line: ``python -m hdmap_ad <step> ...``; every Snakemake rule calls one step.

Each step gets the JSON of exactly the config block it uses (``--spec``), so it is usable
without Snakemake and Snakemake's params trigger re-runs only what a change touches.
Bad input exits with code 2 and one line naming the file or key; no output is left behind.

The parser is generated from :data:`STEPS`, one :class:`Step` row per step (name, help,
options, function); a ``cmd_*`` turns the parsed flags into one call of the module that holds
the step.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdmap_ad.errors import InputError
from hdmap_ad.layout import WORK


def _spec(text: str) -> dict[str, Any]:
    """Parse ``--spec``: inline JSON, or ``@file.json``."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--spec: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError("--spec: expected a JSON object")
    return value


def cmd_validate(args: argparse.Namespace) -> None:
    from hdmap_ad.config import load_params

    params = load_params(args.params)
    print(
        f"{args.params}: ok ({len(params.domains)} domains, {len(params.backbones)} backbones, "
        f"{len(params.experiments)} experiments)"
    )


def cmd_methods(args: argparse.Namespace) -> None:
    from hdmap_ad.methods import methods_markdown

    print(methods_markdown(), end="")


def cmd_synth(args: argparse.Namespace) -> None:
    from hdmap_ad.config import SynthConfig
    from hdmap_ad.data.synth import write_domain

    write_domain(args.domain, SynthConfig.from_dict(_spec(args.spec)), args.out, args.force)


def cmd_manifest(args: argparse.Namespace) -> None:
    from hdmap_ad.data.manifest import scan_domain, write_manifest

    write_manifest(scan_domain(args.domain_root, args.kind, _spec(args.spec)), args.out)


def cmd_extract(args: argparse.Namespace) -> None:
    # The one step whose glue stays here: its home, features/, sits below provenance
    # (data_hash), and a new module among the extract rule's code inputs would re-extract
    # every run's features.
    from hdmap_ad.config import BackboneConfig
    from hdmap_ad.data.manifest import read_manifest
    from hdmap_ad.features.extract import extract_to_cache
    from hdmap_ad.provenance import data_hash

    spec = _spec(args.spec)
    cfg = BackboneConfig.from_dict(spec.pop("key"), spec)
    manifest = read_manifest(args.manifest)
    out_dir = Path(args.out_dir)
    out_paths = {layer: str(out_dir / f"{layer}.parquet") for layer in cfg.layers}
    items = list(zip(manifest.image_id, manifest.path, strict=True))
    extract_to_cache(items, cfg, out_paths, device=_device(args.device), progress=not args.quiet,
                     provenance={"data_sha256": data_hash(manifest)})


def _device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a missing GPU is an error.
    ``cpu`` imports no torch: a training-free step on the CPU never needs it (seconds per job)."""
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda requested but no CUDA device is available (use cpu|auto)")
    return name


def _experiment(args: argparse.Namespace):
    from hdmap_ad.config import ExperimentConfig

    spec = _spec(args.spec)
    return ExperimentConfig.from_dict(spec.pop("key"), spec)


def cmd_fit(args: argparse.Namespace) -> None:
    from hdmap_ad.banks.bank import fit_experiment

    fit_experiment(_experiment(args), args.manifest, args.features, args.domain, args.out,
                   args.meta, _device(args.device))


def cmd_score(args: argparse.Namespace) -> None:
    from hdmap_ad.scoring.score import score_experiment

    score_experiment(_experiment(args), args.manifest, args.features, args.model, args.meta,
                     args.out, _device(args.device), progress=not args.quiet)


def cmd_metrics(args: argparse.Namespace) -> None:
    from hdmap_ad.metrics.experiment import metrics_step

    metrics_step(args.scores, args.meta, args.manifest, args.features, args.domain, args.out)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from hdmap_ad.metrics.summary import aggregate_step

    aggregate_step(args.inputs, args.out, args.markdown, args.csv,
                   _spec(args.entries)["entries"] if args.csv else None)


def cmd_sweep(args: argparse.Namespace) -> None:
    from hdmap_ad.metrics.sweep import sweep_step

    sweep_step(_spec(args.spec), args.inputs, args.out)


def cmd_hypothesis(args: argparse.Namespace) -> None:
    from hdmap_ad.io import write_json
    from hdmap_ad.report.hypothesis import hypothesis_report

    write_json(args.out, hypothesis_report(_spec(args.spec)))


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from hdmap_ad.report.leaderboard import leaderboard_cli

    leaderboard_cli(_spec(args.spec), args.out, args.markdown, args.figure)


def cmd_validation_set(args: argparse.Namespace) -> None:
    from hdmap_ad.validation.build import build_validation_set

    build_validation_set(_spec(args.spec), args.manifest, args.out, progress=not args.quiet)


def cmd_validation_score(args: argparse.Namespace) -> None:
    from hdmap_ad.validation.score import validate_experiment

    validate_experiment(_experiment(args), args.set, args.set_features, args.manifest,
                        args.features, args.model, args.meta, args.out, _device(args.device))


def cmd_select(args: argparse.Namespace) -> None:
    from hdmap_ad.selection.choose import select_step

    select_step(_spec(args.spec), args.out)


def cmd_report(args: argparse.Namespace) -> None:
    from hdmap_ad.report.build import build_report

    build_report(_spec(args.spec), args.out,
                 inputs=[args.spec[1:]] if args.spec.startswith("@") else [])


def cmd_export(args: argparse.Namespace) -> None:
    from hdmap_ad.deploy.export import export_cli

    export_cli(args, _spec(args.backbone_spec) if args.backbone_spec else None)


def cmd_predict(args: argparse.Namespace) -> int:
    from hdmap_ad.deploy.predict import predict_step

    return predict_step(args, _device(args.device))


def cmd_app(args: argparse.Namespace) -> int:
    from hdmap_ad.app.launch import run_app

    return run_app(args.root, args.port, args.address, allow_stale=args.allow_stale)


@dataclass(frozen=True)
class Option:
    """One argparse argument of a step: its flags and ``add_argument`` keywords. A callable
    ``choices`` is called when the parser is built (a registry read at that time)."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs = dict(self.kwargs)
        if callable(kwargs.get("choices")):
            kwargs["choices"] = kwargs["choices"]()
        parser.add_argument(*self.flags, **kwargs)


def opt(*flags: str, **kwargs: Any) -> Option:
    return Option(flags, kwargs)


@dataclass(frozen=True)
class Step:
    """A row of the step table: ``python -m hdmap_ad <name>`` runs ``run(args)`` with the
    arguments its ``options`` declare; ``defaults`` are set on the namespace as they are."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)


OUTDATES = opt("--outdates", nargs="*", default=[], metavar="RESULT",
               help="results this run replaces: renamed to <result>.outdated first")
QUIET = opt("--quiet", action="store_true", help="no progress bar")


def _force(what: str) -> Option:
    return opt("--force", action="store_true", help=f"{what} (never an input itself, "
               "nor the model folder: hdmap_ad.outputs)")


def _kind_names() -> list[str]:
    from hdmap_ad.data.kinds import kind_names

    return kind_names()


def _fit_score_options(name: str) -> tuple[Option, ...]:
    # ``bank`` / ``--bank``: the names of these before methods other than PatchCore
    return (
        opt("--manifest", required=True),
        opt("--features", nargs="+", required=True, help="per-layer caches"),
        opt("--spec", required=True, help="JSON of one experiments entry (with key)"),
        opt("--meta", required=True, help="model metadata JSON"),
        opt("--domain", default="", help="domain name recorded in provenance"),
        *((opt("--model", "--bank", dest="model", required=True,
               help="model folder written by the fit step"), QUIET) if name == "score" else ()),
        opt("--device", default="cpu", help=(
            "cpu | cuda | auto: where the fit runs (PatchCore: the coreset selection)"
            if name == "fit" else
            "cpu | cuda | auto: exact test-set search on a GPU when faiss has GPU support "
            "(faiss-cpu: always the CPU)")),
        opt("--out", required=True,
            help="model folder to write" if name == "fit" else "scores Parquet"),
        OUTDATES,
    )


#: Every step, in the order of ``--help``: the parser is built from this table.
STEPS: tuple[Step, ...] = (
    Step("validate", "validate params.yaml against the schema", cmd_validate,
         (opt("--params", default="params.yaml"),)),
    Step("methods", "the registered methods and their options (markdown)", cmd_methods),
    Step("synth", "write one synthetic HDMAP domain", cmd_synth, (
        opt("--domain", required=True, help="A | B | C | D"),
        opt("--spec", required=True, help="JSON of dataset.synthetic"),
        opt("--out", required=True, help="domain folder to write (replaced)"),
        _force("replace a non-empty --out folder that hdmap-ad did not make"),
    )),
    Step("manifest", "scan a domain folder into a Parquet manifest", cmd_manifest, (
        opt("--domain-root", required=True),
        opt("--kind", default="hdmap", choices=_kind_names,
            help="dataset kind: how the domain folder is laid out (hdmap_ad.data.kinds)"),
        opt("--spec", default="{}", help="JSON of the kind's options (folder: "
            '{"index": "samples.csv"}); none for the other kinds'),
        opt("--out", required=True),
        OUTDATES,
    )),
    Step("extract", "cache features of every map, one Parquet per layer", cmd_extract, (
        opt("--manifest", required=True),
        opt("--spec", required=True, help="JSON of one backbones entry (with key)"),
        opt("--out-dir", required=True),
        opt("--device", default="cpu"),
        QUIET,
        OUTDATES,
    ), defaults={
        # extraction outdates only the results built on its own backbone (hdmap_ad.outdated)
        "outdates_backbone": lambda a: _spec(a.spec).get("key")}),
    Step("fit", "fit the experiment's method: one sub-model per condition (or one mixed)",
         cmd_fit, _fit_score_options("fit"), aliases=("bank",)),
    Step("score", "score the test maps of a domain with a fitted experiment", cmd_score,
         _fit_score_options("score")),
    Step("metrics", "metrics JSON of one domain x experiment", cmd_metrics, (
        opt("--scores", required=True),
        opt("--meta", required=True),
        opt("--manifest", required=True),
        opt("--features", nargs="+", required=True),
        opt("--domain", required=True),
        opt("--out", required=True),
    )),
    Step("aggregate", "collect metrics JSONs into results/metrics.json", cmd_aggregate, (
        opt("inputs", nargs="+"),
        opt("--out", required=True),
        opt("--markdown", help="also write the table as markdown"),
        opt("--csv", help="also write summary.csv (needs --entries)"),
        opt("--entries", default='{"entries": []}',
            help="JSON: target -> domain/experiment/variant/budget/seed"),
    )),
    Step("sweep", "mean and spread over a sweep's seeds, per budget", cmd_sweep, (
        opt("inputs", nargs="+", help="the variants' metrics JSONs, in spec order"),
        opt("--spec", required=True, help='JSON {"sweep", "variants": [...]}'),
        opt("--out", required=True),
    )),
    Step("hypothesis", "paired bootstrap verdict of a hypothesis", cmd_hypothesis, (
        opt("--spec", required=True, help="JSON: the hypothesis and its score pairs"),
        opt("--out", required=True),
    )),
    Step("leaderboard", "rank experiments over domains (Demšar 2006): "
         "Friedman, Nemenyi CD, Holm-corrected Wilcoxon, CD diagram", cmd_leaderboard, (
             opt("--spec", required=True, help="JSON: one leaderboards entry (with key) "
                 "and results: {domain: {experiment: metrics JSON}}"),
             opt("--out", required=True, help="leaderboard JSON"),
             opt("--markdown", help="markdown table (default: --out with .md)"),
             opt("--figure", help="CD diagram PNG (default: <out>_critical_difference.png)"),
         )),
    Step("validation-set", "synthetic anomalies made from an experiment's "
         "held-out references, per reference fold (a validation set)", cmd_validation_set, (
             opt("--spec", required=True, help="JSON: a selection's validation set spec "
                 "(validation entry, references, gate, deploy_folds)"),
             opt("--manifest", required=True, help="the domain manifest"),
             opt("--out", required=True, help="the set's folder (replaced)"),
             QUIET,
         )),
    Step("validation-score", "validation AUROC of a fitted experiment on "
         "a validation set (its reference-fold models)", cmd_validation_score, (
             opt("--spec", required=True, help="JSON of one experiments entry (with key)"),
             opt("--set", required=True, help="the validation set's folder"),
             opt("--set-features", nargs="+", required=True,
                 help="the set's per-layer caches"),
             opt("--manifest", required=True, help="the domain manifest"),
             opt("--features", nargs="+", required=True, help="the domain's per-layer caches"),
             opt("--model", required=True, help="model folder written by the fit step"),
             opt("--meta", required=True, help="model metadata JSON"),
             opt("--device", default="cpu", help="cpu | cuda | auto"),
             opt("--out", required=True, help="validation JSON"),
         )),
    Step("select", "choose a selection grid's point by validation AUROC; "
         "report its test metrics", cmd_select, (
             opt("--spec", required=True, help="JSON: the selection plan, the domain and "
                 "per point its validation and metrics JSON"),
             opt("--out", required=True, help="the selected JSON"),
         )),
    Step("report", "results/report.md with tables, verdicts and figures", cmd_report, (
        opt("--spec", required=True, help="JSON: entries, hypotheses, summary paths"),
        opt("--out", required=True),
    )),
    Step("export", "write a self-contained model folder of one domain x "
         "experiment (from params, or from explicit pipeline files)", cmd_export, (
             opt("--domain", help="with --experiment: paths and spec from --params"),
             opt("--experiment"),
             opt("--params", default="params.yaml"),
             opt("--work", default=WORK, help="the pipeline's work folder"),
             opt("--backbone-spec", help="JSON of one backbones entry (with key)"),
             opt("--meta", help="model metadata JSON (fit step)"),
             opt("--model", help="model folder (fit step)"),
             opt("--scores", help="scores Parquet (score step)"),
             opt("--metrics", help="metrics JSON (metrics step)"),
             opt("--manifest", help="domain manifest: also export the reference maps"),
             opt("--out", help="model folder to write (default results/models/<target>)"),
             _force("replace a non-empty --out folder that hdmap-ad did not make"),
         )),
    Step("predict", "score new maps with an exported model -> CSV", cmd_predict, (
        opt("--model", required=True, help="model folder written by export"),
        opt("--input", nargs="+", required=True, help="map files and/or folders"),
        opt("--out", required=True, help="predictions CSV"),
        opt("--maps-dir", help="also write anomaly maps into this folder"),
        opt("--maps-format", default="png", help="png (overlay) | tiff (float32) | both"),
        opt("--recursive", action="store_true", help="walk input folders recursively"),
        opt("--device", default="cpu", help="cpu | cuda | auto (backbone)"),
        opt("--threads", type=int, help="threads of every step (default: all cores, "
            "up to 16; the run's --cores reproduces its scores exactly)"),
        opt("--weights", help="local checkpoint to use for a file-weights backbone"),
        opt("--work", help="the run's work folder, to judge whether the model is "
            "stale (default: <project>/work of a model in <project>/results/models/)"),
        opt("--allow-stale", action="store_true",
            help="use a model whose experiment has re-run since its export"),
        QUIET,
        _force("write --out or --maps-dir inside an input folder, and maps into a non-empty "
               "folder that hdmap-ad did not make"),
    )),
    Step("app", "web app over a run's results/ and work/ (Streamlit)", cmd_app, (
        opt("--root", default=".", help="project folder holding results/ and work/"),
        opt("--port", type=int, default=8501),
        opt("--address", default="localhost",
            help="interface to serve on (0.0.0.0: every interface)"),
        opt("--allow-stale", action="store_true",
            help="use exported models whose experiment has re-run since their export"),
    )),
)


def build_parser(steps: Sequence[Step] = STEPS) -> argparse.ArgumentParser:
    """The argparse parser, one sub-command per row of ``steps``."""
    p = argparse.ArgumentParser(prog="python -m hdmap_ad", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    for step in steps:
        s = sub.add_parser(step.name, help=step.help, aliases=list(step.aliases))
        for option in step.options:
            option.add_to(s)
        s.set_defaults(func=step.run, **step.defaults)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "outdates", None):
            from hdmap_ad.outdated import mark_outdated

            scope = getattr(args, "outdates_backbone", None)
            mark_outdated(args.outdates, args.step, backbone=scope(args) if scope else None)
        rc = args.func(args)
    except InputError as exc:
        print(f"hdmap_ad {args.step}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder ...: the path and the OS reason
        where = exc.filename or "output"
        reason = exc.strerror or str(exc)
        print(f"hdmap_ad {args.step}: error: {where}: {reason}", file=sys.stderr)
        return 2
    return rc or 0
