"""The CLI turns bad input into one line naming the file or key, exit code 2, no output."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from hdmap_ad.cli import main
from tests.conftest import write_domain


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hdmap_ad", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_missing_domain_folder(tmp_path):
    out = tmp_path / "m.parquet"
    proc = _cli("manifest", "--domain-root", str(tmp_path / "nope"), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hdmap_ad manifest: error: {tmp_path / 'nope'}: domain folder not found"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_nan_map_is_named(tmp_path):
    root = write_domain(tmp_path / "domain_X")
    bad = root / "test/fault/000002.tiff"
    arr = np.zeros((31, 95), np.float32)
    arr[3, 4] = np.nan
    tifffile.imwrite(bad, arr)
    out = tmp_path / "m.parquet"
    proc = _cli("manifest", "--domain-root", str(root), "--out", str(out))
    assert proc.returncode == 2 and f"{bad}: contains NaN or Inf" in proc.stderr
    assert not out.exists()


def test_bad_spec_names_the_key(tmp_path):
    spec = {"key": "g", "backbone": "b", "layers": ["x"], "references": {"protocol": "nope"}}
    proc = _cli("fit", "--manifest", "m", "--features", "f", "--spec", json.dumps(spec),
                "--meta", str(tmp_path / "b.json"), "--out", str(tmp_path / "b.parquet"))
    assert proc.returncode == 2
    assert "experiments.g.references.protocol: 'nope'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_validate_params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("dataset: {kind: synthetic, root: x}\n")
    proc = _cli("validate", "--params", str(p))
    assert proc.returncode == 2 and "params:" in proc.stderr and "domains" in proc.stderr


def _prepared(tmp_path, refs, folds):
    """A tiny domain with manifest, layer2 features and a bank; returns (common args, paths)."""
    root = write_domain(tmp_path / "domain_X", n_test=2)
    manifest, feats = tmp_path / "m.parquet", tmp_path / "features"
    backbone = {"key": "r18", "model": "resnet18", "weights": {"source": "random"},
                "input_size": 32, "layers": ["layer2"], "batch_size": 4}
    exp = json.dumps({"key": "e", "backbone": "r18", "layers": ["layer2"], "references": refs,
                      "gate": "mixed", "deploy_folds": folds,
                      "method": {"name": "patchcore", "coreset_ratio": 0.5}})
    f = [str(feats / "layer2.parquet")]
    common = ["--manifest", str(manifest), "--features", *f, "--spec", exp,
              "--meta", str(tmp_path / "b.json")]
    for argv in (
        ["manifest", "--domain-root", str(root), "--out", str(manifest)],
        ["extract", "--manifest", str(manifest), "--spec", json.dumps(backbone),
         "--out-dir", str(feats), "--quiet"],
        ["fit", *common, "--out", str(tmp_path / "b.parquet")],
    ):
        assert main(argv) == 0, argv[0]
    return common, {"manifest": manifest, "features": f, "bank": tmp_path / "b.parquet"}


@pytest.mark.parametrize("refs,folds,n_cv", [
    ({"protocol": "full"}, 0, 0),             # deploy_folds 0: no held-out reference scores
    ({"protocol": "train", "k": 1, "seed": 0}, 2, 0),  # one reference: nothing to hold out
    ({"protocol": "full"}, 3, 3),
])
def test_score_and_metrics_without_reference_folds(tmp_path, refs, folds, n_cv):
    import pyarrow.parquet as pq

    common, paths = _prepared(tmp_path, refs, folds)
    for argv in (
        ["score", *common, "--model", str(paths["bank"]), "--out", str(tmp_path / "s.parquet")],
        ["metrics", "--scores", str(tmp_path / "s.parquet"), "--meta", str(tmp_path / "b.json"),
         "--manifest", str(paths["manifest"]), "--features", *paths["features"],
         "--domain", "X", "--out", str(tmp_path / "m.json")],
    ):
        assert main(argv) == 0, argv[0]
    roles = pq.read_table(tmp_path / "s.parquet").column("role").to_pylist()
    assert roles.count("test") == 4 and roles.count("reference_cv") == n_cv
    deployable = json.loads((tmp_path / "m.json").read_text())["thresholds"]["deployable"]
    assert (deployable is None) == (n_cv == 0)


def test_score_device_puts_the_exact_index_on_a_gpu_when_faiss_has_one(tmp_path, monkeypatch,
                                                                        capsys):
    import faiss
    import pyarrow.parquet as pq
    import torch

    import hdmap_ad.components.knn as knn

    common, paths = _prepared(tmp_path, {"protocol": "full"}, 0)

    def score(device, out):
        return main(["score", *common, "--model", str(paths["bank"]), "--device", device,
                     "--out", str(tmp_path / out)])

    assert score("cpu", "cpu.parquet") == 0
    if not torch.cuda.is_available():  # cuda asked for, none there: one clear line, no output
        assert score("cuda", "cuda.parquet") == 2
        assert "no CUDA device is available" in capsys.readouterr().err
        assert not (tmp_path / "cuda.parquet").exists()
    # No GPU and faiss-cpu here: stand both in and check the index is handed to faiss GPU.
    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(knn, "_gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, dev, index: moved.append((res, dev)) or index, raising=False)
    assert score("auto", "auto.parquet") == 0
    assert moved and set(moved) == {("resources", 0)}
    cpu = pq.read_table(tmp_path / "cpu.parquet").column("score").to_pylist()
    assert pq.read_table(tmp_path / "auto.parquet").column("score").to_pylist() == cpu


def test_fit_records_its_threads_in_the_model_metadata_not_the_metrics(tmp_path, capsys,
                                                                        monkeypatch):
    """The fit's thread counts change trained models in the last bits: the model metadata
    and the fit's log say what they were; the metrics JSON, compared byte for byte across
    runs with other ``--cores``, does not carry them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common, paths = _prepared(tmp_path, {"protocol": "full"}, 0)
    threads = json.loads((tmp_path / "b.json").read_text())["threads"]
    assert threads["omp_num_threads"] == 1
    assert isinstance(threads["blas"], int) and threads["blas"] >= 1
    assert threads["torch"] is None or threads["torch"] >= 1
    assert f"fit experiments.e: threads {threads}" in capsys.readouterr().err
    assert main(["score", *common, "--model", str(paths["bank"]),
                 "--out", str(tmp_path / "s.parquet")]) == 0
    assert main(["metrics", "--scores", str(tmp_path / "s.parquet"),
                 "--meta", str(tmp_path / "b.json"), "--manifest", str(paths["manifest"]),
                 "--features", *paths["features"], "--domain", "X",
                 "--out", str(tmp_path / "m.json")]) == 0
    text = (tmp_path / "m.json").read_text()
    assert '"omp_num_threads"' not in text and '"blas"' not in text
    # nor the score step's count (kept in the scores' own metadata)
    assert "threads" not in text
    import pyarrow.parquet as pq

    scores_meta = json.loads(pq.read_table(tmp_path / "s.parquet").schema.metadata[b"hdmap_ad"])
    assert scores_meta["threads"] == 1


def test_parser_is_built_from_the_step_table(capsys):
    import argparse

    from hdmap_ad.cli import STEPS, Step, build_parser, opt

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = [n for s in STEPS for n in (s.name, *s.aliases)]
    assert list(sub.choices) == names and len(set(names)) == len(names)
    for s in STEPS:
        assert sub.choices[s.name].get_default("func") is s.run
    assert sub.choices["bank"] is sub.choices["fit"]

    # a toy row becomes a sub-command with its options, and main runs its function
    seen = []
    toy = Step("toy", "a toy step", lambda a: seen.append((a.size, a.names)) or 3,
               (opt("--size", type=int, default=2, help="how big"),
                opt("--names", nargs="+", required=True)))
    parser = build_parser((*STEPS, toy))
    args = parser.parse_args(["toy", "--names", "a", "b"])
    assert (args.step, args.size, args.names, args.func(args)) == ("toy", 2, ["a", "b"], 3)
    assert seen == [(2, ["a", "b"])]
    with pytest.raises(SystemExit):
        parser.parse_args(["toy", "--help"])
    assert "how big" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["toy"])
