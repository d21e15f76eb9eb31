"""anomalib's PatchCore on prepared inputs; runs inside the anomalib environment (.venv-anomalib).

Called by ``benchmarks/vs_anomalib.py``; imports nothing from hdmap_ad. Inputs are the
already preprocessed network inputs (``train.npy``, ``test.npy``: ``(N, 3, S, S)`` float32,
made by our reader so both sides see the same pixels) and the backbone's timm state dict
(``weights.pt``). It runs anomalib's own ``PatchcoreModel`` phase by phase, exactly as its
``forward`` and ``subsample_embedding`` do, and writes per-phase wall time and peak RSS
(``VmHWM``, reset between phases through ``/proc/self/clear_refs``) plus the test scores.

Usage: python anomalib_side.py SPEC_JSON OUT_JSON
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(spec_path: str, out_path: str) -> None:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(spec["seed"])
    phases: dict[str, dict[str, float]] = {}

    def timed(name, fn):
        reset_peak()
        t0 = time.perf_counter()
        out = fn()
        phases[name] = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
        return out

    model = PatchcoreModel(layers=spec["layers"], backbone=spec["model"], pre_trained=False,
                           num_neighbors=spec["num_neighbors"])
    state = torch.load(spec["weights"], weights_only=True)
    missing, _ = model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"anomalib backbone: weights miss {len(missing)} keys, e.g. {missing[:3]}")
    model.eval()
    batch = spec["batch_size"]
    train = np.load(spec["train"], mmap_mode="r")
    test = np.load(spec["test"], mmap_mode="r")

    def embed(x: np.ndarray) -> torch.Tensor:
        # PatchcoreModel.forward up to the embedding (no tiler)
        t = torch.from_numpy(np.ascontiguousarray(x))
        with torch.no_grad():
            feats = model.feature_extractor(t)
        feats = {layer: model.feature_pooler(f) for layer, f in feats.items()}
        return model.generate_embedding(feats)

    def extract_train():
        model.train()
        for s in range(0, len(train), batch):
            model.embedding_store.append(model.reshape_embedding(embed(train[s : s + batch])))
        model.eval()

    def extract_test():
        out = [embed(test[s : s + batch]) for s in range(0, len(test), batch)]
        return torch.cat(out)

    def coreset():
        with torch.no_grad():
            model.subsample_embedding(spec["coreset_ratio"])

    def score(emb: torch.Tensor) -> np.ndarray:
        scores = []
        with torch.no_grad():
            for s in range(0, len(emb), batch):
                e = emb[s : s + batch]
                b = e.shape[0]
                flat = model.reshape_embedding(e)
                patch, loc = model.nearest_neighbors(embedding=flat, n_neighbors=1)
                scores.append(model.compute_anomaly_score(patch.reshape(b, -1),
                                                          loc.reshape(b, -1), flat))
        return torch.cat(scores).numpy()

    t0 = time.perf_counter()
    timed("extract_train", extract_train)
    emb = timed("extract_test", extract_test)
    timed("coreset", coreset)
    scores = timed("scoring", lambda: score(emb))
    total = time.perf_counter() - t0
    out = {
        "anomalib_version": __import__("anomalib").__version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "bank_size": int(model.memory_bank.shape[0]),
        "embedding_dim": int(model.memory_bank.shape[1]),
        "phases": phases,
        "total_wall_s": total,
        "scores": [float(s) for s in scores],
    }
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
