"""Command line: ``python -m hdmap_ad <step> ...``; every Snakemake rule calls one step.

Each step gets the JSON of exactly the config block it uses (``--spec``), so it is usable
without Snakemake and Snakemake's params trigger re-runs only what a change touches.
Bad input exits with code 2 and one line naming the file or key; no output is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hdmap_ad.errors import InputError


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
    import csv
    import io

    from hdmap_ad.io import atomic_path, read_json, write_json
    from hdmap_ad.metrics.summary import compact, markdown, summary_rows, target_name

    by_target = {target_name(p): read_json(p) for p in args.inputs}
    table = compact(by_target)
    write_json(args.out, table)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            tmp.write_text(markdown(table))
    if args.csv:
        rows = summary_rows(_spec(args.entries)["entries"], by_target)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(args.csv) as tmp:
            tmp.write_text(buf.getvalue())


def cmd_sweep(args: argparse.Namespace) -> None:
    from hdmap_ad.io import read_json, write_json
    from hdmap_ad.metrics.sweep import summarize_sweep

    spec = _spec(args.spec)
    write_json(args.out, summarize_sweep(spec["sweep"], spec["variants"],
                                         [read_json(p) for p in args.inputs]))


def cmd_hypothesis(args: argparse.Namespace) -> None:
    from hdmap_ad.io import write_json
    from hdmap_ad.report.hypothesis import hypothesis_report

    write_json(args.out, hypothesis_report(_spec(args.spec)))


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from hdmap_ad.config import LeaderboardConfig
    from hdmap_ad.report.leaderboard import leaderboard_step

    spec = _spec(args.spec)
    results = spec.pop("results", None)
    if not isinstance(results, dict):
        raise InputError("--spec: expected results: {domain: {experiment: metrics JSON}}")
    cfg = LeaderboardConfig.from_dict(str(spec.pop("key", "leaderboard")), spec)
    if not cfg.domains:
        raise InputError(f"leaderboards.{cfg.key}.domains: the step needs them listed")
    out = Path(args.out)
    leaderboard_step({**cfg.to_dict(), "results": results}, out,
                     args.markdown or out.with_suffix(".md"),
                     args.figure or out.with_name(f"{out.stem}_critical_difference.png"))


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

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: {args.port} is not a TCP port (1-65535)")
    return run_app(args.root, args.port, args.address, allow_stale=args.allow_stale)


def _outdates(s: argparse.ArgumentParser) -> None:
    s.add_argument("--outdates", nargs="*", default=[], metavar="RESULT",
                   help="results this run replaces: renamed to <result>.outdated first")


def _force(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--force", action="store_true", help=f"{what} (never an input itself, "
                   "nor the model folder: hdmap_ad.outputs)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hdmap_ad", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)

    s = sub.add_parser("validate", help="validate params.yaml against the schema")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("methods", help="the registered methods and their options (markdown)")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("synth", help="write one synthetic HDMAP domain")
    s.add_argument("--domain", required=True, help="A | B | C | D")
    s.add_argument("--spec", required=True, help="JSON of dataset.synthetic")
    s.add_argument("--out", required=True, help="domain folder to write (replaced)")
    _force(s, "replace a non-empty --out folder that hdmap-ad did not make")
    s.set_defaults(func=cmd_synth)

    from hdmap_ad.data.kinds import kind_names

    s = sub.add_parser("manifest", help="scan a domain folder into a Parquet manifest")
    s.add_argument("--domain-root", required=True)
    s.add_argument("--kind", default="hdmap", choices=kind_names(),
                   help="dataset kind: how the domain folder is laid out (hdmap_ad.data.kinds)")
    s.add_argument("--spec", default="{}", help="JSON of the kind's options (folder: "
                   '{"index": "samples.csv"}); none for the other kinds')
    s.add_argument("--out", required=True)
    _outdates(s)
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("extract", help="cache features of every map, one Parquet per layer")
    s.add_argument("--manifest", required=True)
    s.add_argument("--spec", required=True, help="JSON of one backbones entry (with key)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _outdates(s)
    # extraction outdates only the results built on its own backbone (hdmap_ad.outdated)
    s.set_defaults(func=cmd_extract, outdates_backbone=lambda a: _spec(a.spec).get("key"))

    for name, helptext in (
        ("fit", "fit the experiment's method: one sub-model per condition (or one mixed)"),
        ("score", "score the test maps of a domain with a fitted experiment"),
    ):
        # ``bank`` / ``--bank``: the names of these before methods other than PatchCore
        s = sub.add_parser(name, help=helptext, aliases=["bank"] if name == "fit" else [])
        s.add_argument("--manifest", required=True)
        s.add_argument("--features", nargs="+", required=True, help="per-layer caches")
        s.add_argument("--spec", required=True, help="JSON of one experiments entry (with key)")
        s.add_argument("--meta", required=True, help="model metadata JSON")
        s.add_argument("--domain", default="", help="domain name recorded in provenance")
        if name == "score":
            s.add_argument("--model", "--bank", dest="model", required=True,
                           help="model folder written by the fit step")
            s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--device", default="cpu", help=(
            "cpu | cuda | auto: where the fit runs (PatchCore: the coreset selection)"
            if name == "fit" else
            "cpu | cuda | auto: exact test-set search on a GPU when faiss has GPU support "
            "(faiss-cpu: always the CPU)"))
        s.add_argument("--out", required=True,
                       help="model folder to write" if name == "fit" else "scores Parquet")
        _outdates(s)
        s.set_defaults(func=cmd_fit if name == "fit" else cmd_score)

    s = sub.add_parser("metrics", help="metrics JSON of one domain x experiment")
    s.add_argument("--scores", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--features", nargs="+", required=True)
    s.add_argument("--domain", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("aggregate", help="collect metrics JSONs into results/metrics.json")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--markdown", help="also write the table as markdown")
    s.add_argument("--csv", help="also write summary.csv (needs --entries)")
    s.add_argument("--entries", default='{"entries": []}',
                   help="JSON: target -> domain/experiment/variant/budget/seed")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("sweep", help="mean and spread over a sweep's seeds, per budget")
    s.add_argument("inputs", nargs="+", help="the variants' metrics JSONs, in spec order")
    s.add_argument("--spec", required=True, help='JSON {"sweep", "variants": [...]}')
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("hypothesis", help="paired bootstrap verdict of a hypothesis")
    s.add_argument("--spec", required=True, help="JSON: the hypothesis and its score pairs")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_hypothesis)

    s = sub.add_parser("leaderboard", help="rank experiments over domains (Demšar 2006): "
                       "Friedman, Nemenyi CD, Holm-corrected Wilcoxon, CD diagram")
    s.add_argument("--spec", required=True, help="JSON: one leaderboards entry (with key) "
                   "and results: {domain: {experiment: metrics JSON}}")
    s.add_argument("--out", required=True, help="leaderboard JSON")
    s.add_argument("--markdown", help="markdown table (default: --out with .md)")
    s.add_argument("--figure", help="CD diagram PNG (default: <out>_critical_difference.png)")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("validation-set", help="synthetic anomalies made from an experiment's "
                       "held-out references, per reference fold (a validation set)")
    s.add_argument("--spec", required=True, help="JSON: a selection's validation set spec "
                   "(validation entry, references, gate, deploy_folds)")
    s.add_argument("--manifest", required=True, help="the domain manifest")
    s.add_argument("--out", required=True, help="the set's folder (replaced)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_validation_set)

    s = sub.add_parser("validation-score", help="validation AUROC of a fitted experiment on "
                       "a validation set (its reference-fold models)")
    s.add_argument("--spec", required=True, help="JSON of one experiments entry (with key)")
    s.add_argument("--set", required=True, help="the validation set's folder")
    s.add_argument("--set-features", nargs="+", required=True,
                   help="the set's per-layer caches")
    s.add_argument("--manifest", required=True, help="the domain manifest")
    s.add_argument("--features", nargs="+", required=True, help="the domain's per-layer caches")
    s.add_argument("--model", required=True, help="model folder written by the fit step")
    s.add_argument("--meta", required=True, help="model metadata JSON")
    s.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    s.add_argument("--out", required=True, help="validation JSON")
    s.set_defaults(func=cmd_validation_score)

    s = sub.add_parser("select", help="choose a selection grid's point by validation AUROC; "
                       "report its test metrics")
    s.add_argument("--spec", required=True, help="JSON: the selection plan, the domain and "
                   "per point its validation and metrics JSON")
    s.add_argument("--out", required=True, help="the selected JSON")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("report", help="results/report.md with tables, verdicts and figures")
    s.add_argument("--spec", required=True, help="JSON: entries, hypotheses, summary paths")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("export", help="write a self-contained model folder of one domain x "
                       "experiment (from params, or from explicit pipeline files)")
    s.add_argument("--domain", help="with --experiment: paths and spec from --params")
    s.add_argument("--experiment")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--work", default="work", help="the pipeline's work folder")
    s.add_argument("--backbone-spec", help="JSON of one backbones entry (with key)")
    s.add_argument("--meta", help="model metadata JSON (fit step)")
    s.add_argument("--model", help="model folder (fit step)")
    s.add_argument("--scores", help="scores Parquet (score step)")
    s.add_argument("--metrics", help="metrics JSON (metrics step)")
    s.add_argument("--manifest", help="domain manifest: also export the reference maps")
    s.add_argument("--out", help="model folder to write (default results/models/<target>)")
    _force(s, "replace a non-empty --out folder that hdmap-ad did not make")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="score new maps with an exported model -> CSV")
    s.add_argument("--model", required=True, help="model folder written by export")
    s.add_argument("--input", nargs="+", required=True, help="map files and/or folders")
    s.add_argument("--out", required=True, help="predictions CSV")
    s.add_argument("--maps-dir", help="also write anomaly maps into this folder")
    s.add_argument("--maps-format", default="png", help="png (overlay) | tiff (float32) | both")
    s.add_argument("--recursive", action="store_true", help="walk input folders recursively")
    s.add_argument("--device", default="cpu", help="cpu | cuda | auto (backbone)")
    s.add_argument("--threads", type=int, help="threads of every step (default: all cores, "
                   "up to 16; the run's --cores reproduces its scores exactly)")
    s.add_argument("--weights", help="local checkpoint to use for a file-weights backbone")
    s.add_argument("--work", help="the run's work folder, to judge whether the model is "
                   "stale (default: <project>/work of a model in <project>/results/models/)")
    s.add_argument("--allow-stale", action="store_true",
                   help="use a model whose experiment has re-run since its export")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _force(s, "write --out or --maps-dir inside an input folder, and maps into a non-empty "
           "folder that hdmap-ad did not make")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("app", help="web app over a run's results/ and work/ (Streamlit)")
    s.add_argument("--root", default=".", help="project folder holding results/ and work/")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--address", default="localhost",
                   help="interface to serve on (0.0.0.0: every interface)")
    s.add_argument("--allow-stale", action="store_true",
                   help="use exported models whose experiment has re-run since their export")
    s.set_defaults(func=cmd_app)
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
