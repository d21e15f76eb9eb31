"""The ``predict`` step: an exported model folder + maps (folders or files) -> one CSV.

For every map: the image score, the verdict at the deployable threshold (``anomalous`` when
``score >= threshold``), the p90 gate's decision (``routing``) and the sub-model whose score
was kept, each sub-model's score where the gate searched both, the worst patch (grid row and
column, and the map pixel under its centre) and, with ``maps_dir``, the anomaly map as PNG
(overlay) and/or TIFF (float32, the map's size). Maps need no labels or folder layout.

Streaming: maps are read and extracted ``batch_size`` at a time (the backbone's, as the
pipeline's extraction), their layer features wait in one queue per gate decision, and a queue
is scored when it holds ``score_batch_maps`` maps (the pipeline's scoring batch) or at the end.
Memory is bounded by one extraction batch plus one scoring batch per decision, whatever the
number of maps; rows are written in input order as soon as all earlier rows are done.

Exactness: a map's score depends, in the last float32 bits, on the other maps in its batch and
on the thread count (CPU convolution, BLAS and faiss kernels choose their blocking by batch
size and threads). Predictions batch as the pipeline does (extraction in input order, scoring
grouped by gate decision in batches of 32), so the test maps given in the order the score step
scored them, with ``threads`` equal to the run's ``--cores`` (up to 16), give the pipeline's
scores bit for bit (``tests/test_export_predict.py``; on the demo's 768 domain C test maps
too). Another order or thread count moves a score by up to about 2e-6 of its value.

A bad file (unreadable, corrupt, wrong shape, NaN/Inf, negative values), or a map that a
sub-model scores NaN or inf, gets a row with the reason in ``error`` and no score; the others
are scored as usual. Maps of another size than the model's are resized as the study resized
its maps where it took several sizes (a folder dataset; ``Predictor.check_size``).
"""

from __future__ import annotations

import contextlib
import csv
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdmap_ad.data.maps import IMAGE_SUFFIXES, read_map
from hdmap_ad.deploy.bundle import ModelBundle, load_bundle
from hdmap_ad.errors import InputError
from hdmap_ad.gating import MapStats, combine_both, route, searched
from hdmap_ad.outputs import FILE, INTO, check_output, make_folder

VERDICT_ANOMALOUS, VERDICT_NORMAL = "anomalous", "normal"
MAP_FORMATS = ("png", "tiff", "both")


@dataclass
class Prediction:
    """One map's prediction (one CSV row); ``error`` set means it was not scored."""

    position: int
    path: str
    p90: float | None = None
    routing: str = ""
    sub_model: str = ""
    score: float | None = None
    sub_scores: dict[str, float] = field(default_factory=dict)
    patch_scores: np.ndarray | None = None  # (gh, gw)
    worst_patch: tuple[int, int] | None = None
    worst_pixel: tuple[int, int] | None = None
    anomaly_map: str = ""
    error: str = ""


def list_inputs(inputs: Iterable[str], recursive: bool = False) -> list[tuple[str, str]]:
    """Map files to predict, as ``(path, name)`` in order: a folder gives its image files
    (png, jpg, bmp, tif/tiff) sorted by name (with ``recursive``, by relative path), a file
    gives itself (read as a map whatever its suffix; a missing one becomes an error row).
    ``name`` names the anomaly-map files: the path relative to its input folder without the
    suffix (``a/x.tiff`` -> ``a/x``: maps of sub-folders stay apart), or a given file's stem;
    numbered (``x__2``) where two maps would write one file (:func:`unique_map_names`).

    Hidden files and folders and macOS ``._*`` files in a folder are not maps: they are
    skipped and counted on stderr. Nothing is read here: a FIFO, device or socket, and a
    symlink in a folder pointing out of it, are refused by name.

    Raises:
        InputError: a folder without any map file; a FIFO, device or socket; a symlink out of
            its input folder.
    """
    items, hidden = _scan_inputs(inputs, recursive)
    _log_hidden(hidden)
    return items


def _log_hidden(hidden: int) -> None:
    if hidden:
        print(f"hdmap_ad predict: skipped {hidden} hidden file(s) or folder(s) (.* and macOS "
              "._*): not maps", file=sys.stderr)


def _scan_inputs(inputs: Iterable[str], recursive: bool) -> tuple[list[tuple[str, str]], int]:
    """:func:`list_inputs`, and the number of hidden entries skipped (not logged)."""
    found: list[tuple[str, str]] = []
    hidden = 0
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, skipped = _scan_folder(p, recursive)
            hidden += skipped
            if not files:
                raise InputError(f"{p}: no map files ({', '.join(IMAGE_SUFFIXES)}) found"
                                 + (f" ({skipped} hidden skipped)" if skipped else ""))
            found += [(str(f), f.relative_to(p).with_suffix("").as_posix()) for f in files]
        else:
            with contextlib.suppress(OSError):  # missing or unreadable: an error row later
                _refuse_special(p, os.stat(p).st_mode)
            found.append((str(p), p.stem))
    names = unique_map_names([name for _, name in found])
    return [(path, name) for (path, _), name in zip(found, names, strict=True)], hidden


def _refuse_special(path: Path, mode: int) -> None:
    """A FIFO would block the read forever, a device stream without end: refused unread."""
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else None)
    if kind is not None:
        raise InputError(f"{path}: is {kind}, not a map file; not read")


def _scan_folder(root: Path, recursive: bool) -> tuple[list[Path], int]:
    """The map files under ``root`` (sorted) and how many hidden entries were skipped;
    symlinks are checked before anything is read (:func:`list_inputs`)."""
    base = Path(os.path.realpath(root))
    files: list[Path] = []
    hidden = 0
    for folder, dirnames, filenames in os.walk(root) if recursive else [
            (str(root), [], sorted(os.listdir(root)))]:
        hidden += sum(d.startswith(".") for d in dirnames)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:  # links to folders are among dirnames: never followed
            path = Path(folder) / name
            if name.startswith("."):
                hidden += 1
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                if base not in target.parents:
                    raise InputError(f"{path}: a symbolic link out of the input folder {root} "
                                     f"(to {target}); not read")
            try:
                mode = os.stat(path).st_mode
            except OSError:  # a broken link inside the folder: its error row says so
                files.append(path)
                continue
            _refuse_special(path, mode)
            if stat.S_ISREG(mode):
                files.append(path)
    return sorted(files), hidden


def unique_map_names(names: list[str]) -> list[str]:
    """``names`` made safe as anomaly-map file names: unique without regard to case (macOS and
    Windows file systems ignore it), and none whose ``.png``/``.tiff`` file is a sub-folder
    another name needs; a clash keeps the first and numbers the later ones ``name__2`` ..."""
    folders = {"/".join(parts[:k]).casefold() for parts in (n.split("/") for n in names)
               for k in range(1, len(parts))}
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate.casefold() in taken or any(
                f"{candidate}.{ext}".casefold() in folders for ext in ("png", "tiff")):
            k += 1
            candidate = f"{name}__{k}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


#: The pipeline's extract and score jobs take this many threads at most (``THREAD_CAP``).
MAX_THREADS = 16
#: Largest batch a model folder may ask for (params.schema.yaml's backbone batch_size bound):
#: a hand-edited model.json cannot make predict allocate an unbounded batch.
MAX_BATCH = 1024


def check_threads(threads: int | None) -> None:
    """``--threads``: None (the default) or at least 1 (0 is not "all cores")."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InputError(f"--threads: {threads!r} must be an integer >= 1")


def default_threads() -> int:
    """All cores up to :data:`MAX_THREADS`: what the pipeline's jobs take with ``--cores all``."""
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


class Predictor:
    """Extracts and scores maps with an exported model, reproducing the pipeline's steps.

    Args:
        bundle: the loaded model folder.
        device: ``cpu`` | ``cuda`` for the backbone (resolved).
        threads: threads of every step (torch, BLAS, OpenMP/faiss), as the pipeline's
            extract and score jobs get ``OMP_NUM_THREADS`` = Snakemake's ``--cores`` (up to
            16); None: :func:`default_threads`.
    """

    def __init__(self, bundle: ModelBundle, device: str = "cpu", threads: int | None = None):
        from hdmap_ad.features.weights import load_backbone

        check_threads(threads)
        for key in ("extract_batch_size", "score_batch_maps"):  # before any allocation
            n = bundle.meta["batching"].get(key)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
                raise InputError(f"{bundle.folder}: batching.{key}: {n!r} is not an integer "
                                 f"in [1, {MAX_BATCH}]")
        self.threads = threads if threads is not None else default_threads()
        self.bundle = bundle
        self.exp = bundle.experiment
        self.cfg = bundle.backbone
        self.model, info = load_backbone(self.cfg, device)
        want = bundle.meta["weights"].get("state_sha256")
        if want and info.state_sha256 != want:
            raise InputError(
                f"{bundle.folder}: the backbone weights loaded ({self.cfg.weights.source}"
                f" {info.file or self.cfg.weights.package or ''}) differ from those the model "
                f"was fit with (state sha256 {info.state_sha256[:12]}... != {want[:12]}...)")
        pre = bundle.meta["preprocessing"]
        self.mean = tuple(pre["mean"])
        self.std = tuple(pre["std"])
        self.batch = bundle.meta["batching"]
        self._routed = 0  # maps routed so far: a coin gate continues its draws over batches

    # -- steps ------------------------------------------------------------------------------
    def read(self, path: str) -> tuple[np.ndarray, float]:
        """The map and its p90 (as the manifest computes it); InputError for a bad file or a
        size the study would not have taken (:meth:`check_size`)."""
        arr = read_map(path)
        self.check_size(arr, path)
        gray = arr if arr.ndim == 2 else arr.mean(axis=-1)
        return arr, float(np.percentile(gray, 90))

    def check_size(self, arr: np.ndarray, path: str) -> None:
        """Take a map of another shape than the model's where the study took maps of several
        sizes (a folder dataset: ``preprocessing.map_sizes``), each resized to the backbone's
        input on its own as the study's extraction did; refuse it where the study had one
        shape (HDMAP), with ``resize: none`` (the map's size is the patch grid's) and for a
        per-position method under ``aspect-pad`` (each size pads the grid differently)."""
        shape = tuple(self.bundle.map_shape)
        if tuple(arr.shape) == shape:
            return
        sizes = self.bundle.meta["preprocessing"].get("map_sizes") or [shape[:2]]
        method = self.exp.method.method
        why = ""
        if len(sizes) < 2:
            why = "; the model was fit on maps of one shape"
        elif self.cfg.resize == "none":
            why = "; with resize 'none' a map's size is its patch grid"
        elif self.cfg.resize == "aspect-pad" and method.per_position \
                and tuple(arr.shape[:2]) != shape[:2]:
            why = (f"; {method.name} models each patch position and resize 'aspect-pad' pads "
                   "each size differently")
        if why:
            raise InputError(f"{path}: map shape {tuple(arr.shape)} differs from the model's "
                             f"{shape}{why}")

    def _limits(self):
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self.threads)

    def extract(self, maps: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """``{layer: (B, gh, gw, C)}`` of the backbone's layers (one forward pass); maps of
        several sizes are resized to the input each on its own, as the study's extraction
        does (``preprocess_maps``)."""
        import torch

        from hdmap_ad.features.extract import extract_batch, preprocess_maps

        torch.set_num_threads(self.threads)
        with self._limits():
            return extract_batch(self.model,
                                 preprocess_maps(list(maps), self.cfg, self.mean, self.std),
                                 list(self.cfg.layers), self.cfg.patch_pool,
                                 self.cfg.autocast_cuda)

    def decide(self, p90: np.ndarray) -> np.ndarray:
        """Gate decision per map, by :func:`hdmap_ad.gating.route` as the score step routes
        (new maps have no known condition: oracle and inverse use the p90 decision, as the
        pipeline does for maps without one). Calls continue one stream: the random gate's
        coin gives the maps of successive calls what one call over all of them would."""
        decisions = route(self.exp.gate_config, self.bundle.gate,
                          MapStats(np.asarray(p90), None), start=self._routed)
        self._routed += len(decisions)
        return decisions

    def describe(self, layer_feats: list[dict[str, np.ndarray]]) -> np.ndarray:
        """``(B, H, W, D)`` descriptors of a scoring batch, built as the pipeline's
        ``DescriptorSource`` builds them (layers combined on the finest grid, then the
        experiment's projection / context)."""
        from hdmap_ad.features.descriptors import combine_layers

        layers = [np.stack([f[layer] for f in layer_feats]) for layer in self.exp.layers]
        return self.exp.descriptor.apply(combine_layers(layers), f"experiments.{self.exp.key}")

    def score(self, desc: np.ndarray, decision: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Score a batch routed to ``decision`` (``both``: every sub-model, the lowest image
        score kept, first sub-model on ties: :func:`hdmap_ad.gating.combine_both`, as the
        score step's ``score_routed``).

        Returns ``(scores (B,), patch_scores (B, gh, gw), kept sub-model (B,), every searched
        sub-model's scores)``.
        """
        scored = {name: self.bundle.models[name].score(desc)
                  for name in searched(decision, self.bundle.models)}
        best, patches, kept = combine_both(scored)
        return best, patches, kept, {name: s for name, (s, _) in scored.items()}

    def score_features(self, layer_feats: list[dict[str, np.ndarray]], decision: str
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """:meth:`describe` then :meth:`score`, on the predictor's threads (BLAS, OpenMP,
        torch), as the pipeline's score job runs them."""
        import torch

        torch.set_num_threads(self.threads)
        with self._limits():
            return self.score(self.describe(layer_feats), decision)


def predict_maps(predictor: Predictor, items: list[tuple[str, str]], maps_dir: str | None = None,
                 maps_format: str = "png", progress: bool = False) -> Iterator[Prediction]:
    """Predictions for ``items`` (``(path, name)``), yielded in input order (streaming)."""
    from tqdm import tqdm

    bundle = predictor.bundle
    batch_size = int(predictor.batch["extract_batch_size"])
    score_batch = int(predictor.batch["score_batch_maps"])
    queues: dict[str, list[tuple[Prediction, dict[str, np.ndarray], np.ndarray]]] = {}
    done: dict[int, Prediction] = {}
    next_pos = 0
    out_dir = make_folder(maps_dir) if maps_dir else None
    names = {}

    def flush(decision: str) -> None:
        queue = queues.pop(decision, [])
        if not queue:
            return
        scores, patches, kept, each = predictor.score_features([f for _, f, _ in queue], decision)
        for i, (pred, _, img) in enumerate(queue):
            bad = non_finite_score(scores[i], patches[i], {k: v[i] for k, v in each.items()})
            if bad:  # a NaN or inf never reaches the CSV
                pred.error = f"predict: {pred.path}: {bad}"
                done[pred.position] = pred
                continue
            pred.score = float(scores[i])
            pred.sub_model = str(kept[i])
            pred.sub_scores = {k: float(v[i]) for k, v in each.items()}
            pred.patch_scores = patches[i]
            _locate(pred, bundle, img.shape)
            if out_dir is not None:
                pred.anomaly_map = _write_map(out_dir, names[pred.position], img, patches[i],
                                              bundle, maps_format)
            pred.patch_scores = None  # not kept: rows wait only for earlier ones
            done[pred.position] = pred

    bar = tqdm(total=len(items), unit="map", desc="predict", disable=not progress,
               file=sys.stderr, mininterval=1.0)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        good: list[tuple[Prediction, np.ndarray]] = []
        for offset, (path, name) in enumerate(chunk):
            pred = Prediction(position=start + offset, path=path)
            names[pred.position] = name
            try:
                img, pred.p90 = predictor.read(path)
            except InputError as exc:
                pred.error = str(exc)
                done[pred.position] = pred
                continue
            good.append((pred, img))
        if good:
            feats = predictor.extract([img for _, img in good])
            finite = np.ones(len(good), dtype=bool)
            for f in feats.values():  # an extreme finite map overflows inside the backbone
                finite &= np.isfinite(f.reshape(len(f), -1)).all(axis=1)
            for pred, _ in (g for g, ok in zip(good, finite, strict=True) if not ok):
                pred.error = (f"{pred.path}: its features are NaN or Inf (map values too "
                              "large for the backbone?)")
                done[pred.position] = pred
            keep = np.flatnonzero(finite)
            good = [good[i] for i in keep]
            feats = {layer: f[keep] for layer, f in feats.items()}
        if good:
            decisions = predictor.decide(np.array([p.p90 for p, _ in good]))
            for i, ((pred, img), decision) in enumerate(zip(good, decisions, strict=True)):
                pred.routing = str(decision)
                one = {layer: f[i] for layer, f in feats.items()}
                queues.setdefault(pred.routing, []).append((pred, one, img))
                if len(queues[pred.routing]) == score_batch:
                    flush(pred.routing)
        bar.update(len(chunk))
        while next_pos in done:
            names.pop(next_pos, None)
            yield done.pop(next_pos)
            next_pos += 1
    for decision in sorted(queues):
        flush(decision)
    bar.close()
    while next_pos in done:
        yield done.pop(next_pos)
        next_pos += 1


def non_finite_score(score: float, patch_scores: np.ndarray,
                     sub_scores: dict[str, np.ndarray]) -> str:
    """Why a map's scores cannot be reported ('' when they are all finite): a sub-model gave
    NaN or inf (map values beyond what the model was fit on, or a broken model)."""
    for name, value in sorted(sub_scores.items()):
        if not np.isfinite(value):
            return (f"sub-model {name!r} scored it {float(value)} (map values far beyond the "
                    "references'?)")
    if not np.isfinite(score) or not np.isfinite(patch_scores).all():
        return f"its score or patch scores are NaN or inf (score {float(score)})"
    return ""


def _locate(pred: Prediction, bundle: ModelBundle, map_shape: tuple[int, ...]) -> None:
    """Worst patch and the map pixel under its centre, in the map's own size."""
    from hdmap_ad.deploy.render import patch_center, worst_patch

    assert pred.patch_scores is not None
    pred.worst_patch = worst_patch(pred.patch_scores)
    pre = bundle.meta["preprocessing"]
    size = pre["input_size"]  # None with resize 'none' (the map's own size, e.g. raw)
    pred.worst_pixel = patch_center(*pred.worst_patch, bundle.grid, map_shape,
                                    None if size is None else int(size), str(pre["resize"]))


def _write_map(out_dir: Path, name: str, img: np.ndarray, patch_scores: np.ndarray,
               bundle: ModelBundle, fmt: str) -> str:
    """Write the anomaly map as ``<name>.png`` (overlay) and/or ``<name>.tiff`` (float32);
    returns the path(s) written, ``;``-separated."""
    import tifffile

    from hdmap_ad.deploy.render import overlay_rgb, png_bytes
    from hdmap_ad.io import atomic_path
    from hdmap_ad.metrics.pixel import anomaly_map

    heat = anomaly_map(patch_scores, tuple(img.shape[:2]))
    written = []
    if fmt in ("png", "both"):
        top = bundle.deployable if bundle.deployable is not None else float(heat.max())
        path = out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(png_bytes(overlay_rgb(img, heat, 0.0, top)))
        written.append(str(path))
    if fmt in ("tiff", "both"):
        path = out_dir / f"{name}.tiff"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, heat.astype(np.float32))
        written.append(str(path))
    return ";".join(written)


def csv_columns(bundle: ModelBundle) -> list[str]:
    subs = [f"score_{name}" for name in sorted(bundle.models)]
    return ["path", "score", "threshold", "verdict", "p90", "gate_threshold", "routing",
            "sub_model", *subs, "worst_patch_row", "worst_patch_col", "worst_y", "worst_x",
            "anomaly_map", "error"]


def csv_row(pred: Prediction, bundle: ModelBundle) -> dict[str, Any]:
    """The CSV row of a prediction (floats written with ``repr``: they read back exactly)."""
    thr = bundle.deployable
    verdict = ""
    if pred.score is not None and thr is not None:
        verdict = VERDICT_ANOMALOUS if pred.score >= thr else VERDICT_NORMAL
    row: dict[str, Any] = {
        "path": pred.path,
        "score": pred.score,
        "threshold": thr,
        "verdict": verdict,
        "p90": pred.p90,
        "gate_threshold": bundle.gate.threshold,
        "routing": pred.routing,
        "sub_model": pred.sub_model,
        "worst_patch_row": pred.worst_patch[0] if pred.worst_patch else None,
        "worst_patch_col": pred.worst_patch[1] if pred.worst_patch else None,
        "worst_y": pred.worst_pixel[0] if pred.worst_pixel else None,
        "worst_x": pred.worst_pixel[1] if pred.worst_pixel else None,
        "anomaly_map": pred.anomaly_map,
        "error": pred.error,
    }
    for name in bundle.models:
        row[f"score_{name}"] = pred.sub_scores.get(name)
    return {k: ("" if v is None else v) for k, v in row.items()}


def predict_to_csv(model: str, inputs: list[str], out: str, maps_dir: str | None = None,
                   maps_format: str = "png", recursive: bool = False, device: str = "cpu",
                   threads: int | None = None, weights: str | None = None,
                   progress: bool = True, force: bool = False, work: str | None = None,
                   allow_stale: bool = False) -> dict[str, int]:
    """Predict every map of ``inputs`` and write the CSV ``out`` (atomically, streamed).

    The model folder is verified first (``hdmap_ad.deploy.bundle.verify_bundle``): its
    record, its sub-model files' sha256 and, against the run in ``work`` (default: the
    project the folder sits in, ``<project>/results/models/<name>``), whether it is stale;
    a stale model is refused unless ``allow_stale``.

    ``out`` and ``maps_dir`` are checked before anything is read
    (:func:`hdmap_ad.outputs.check_output`): never an input or the model folder, nor inside an
    input folder or (``maps_dir``) a non-empty folder hdmap-ad did not make unless ``force``.

    Returns counts: ``maps``, ``scored``, ``anomalous``, ``failed``.
    """
    from hdmap_ad.io import atomic_path

    if maps_format not in MAP_FORMATS:
        raise InputError(f"--maps-format: {maps_format!r} is not one of {MAP_FORMATS}")
    check_threads(threads)
    items, hidden = _scan_inputs(inputs, recursive)
    if not items:
        raise InputError("--input: no maps given")
    # the inputs as given (folders) and as listed (each map: --force must not write one)
    read = [*inputs, *(path for path, _ in items), *([weights] if weights else [])]
    check_output(out, "--out", kind=FILE, inputs=read, model=model, force=force)
    if maps_dir:
        if os.path.abspath(out) == os.path.abspath(maps_dir):
            raise InputError(f"--out {out}: is also the --maps-dir folder")
        check_output(maps_dir, "--maps-dir", kind=INTO, inputs=read, model=model, force=force)
    _log_hidden(hidden)  # after the checks: a refusal stays one line
    bundle = load_bundle(model, device, weights, work=work, allow_stale=allow_stale,
                         judge_staleness=True)
    predictor = Predictor(bundle, device, threads)
    counts = {"maps": len(items), "scored": 0, "anomalous": 0, "failed": 0}
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_columns(bundle), lineterminator="\n")
        writer.writeheader()
        for pred in predict_maps(predictor, items, maps_dir, maps_format, progress):
            row = csv_row(pred, bundle)
            writer.writerow(row)
            counts["failed"] += bool(pred.error)
            counts["scored"] += pred.score is not None
            counts["anomalous"] += row["verdict"] == VERDICT_ANOMALOUS
    return counts


def predict_step(args: Any, device: str = "cpu") -> int:
    """The CLI entry: writes the CSV, prints a one-line summary; exit status 1 when any map
    failed (its reason is in the ``error`` column), else 0."""
    counts = predict_to_csv(args.model, args.input, args.out, args.maps_dir, args.maps_format,
                            args.recursive, device, args.threads, args.weights,
                            progress=not args.quiet, force=getattr(args, "force", False),
                            work=getattr(args, "work", None),
                            allow_stale=getattr(args, "allow_stale", False))
    print(f"hdmap_ad predict: {counts['maps']} maps, {counts['scored']} scored, "
          f"{counts['anomalous']} anomalous, {counts['failed']} failed -> {args.out}",
          file=sys.stderr)
    return 1 if counts["failed"] else 0
