"""anomalib's KCenterGreedy on a saved feature matrix; runs inside .venv-anomalib.

Called by ``benchmarks/coreset_scale.py``. Runs anomalib's own projection and selection loop
(``KCenterGreedy.select_coreset_idxs`` step by step) until the coreset is complete or
``max_seconds`` have passed, and reports its per-point rate, so a selection that would take
hours can be extrapolated.

Usage: python anomalib_coreset.py FEATURES_NPY K MAX_SECONDS OUT_JSON
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


def main(path: str, k: str, max_seconds: str, out_path: str) -> None:
    from anomalib.models.components.sampling import KCenterGreedy

    torch.manual_seed(0)
    emb = torch.from_numpy(np.load(path, mmap_mode="r")[:])
    k_int = int(k)
    sampler = KCenterGreedy(emb, (k_int + 0.5) / len(emb))
    t0 = time.perf_counter()
    sampler.model.fit(emb)
    sampler.features = sampler.model.transform(emb)
    sampler.reset_distances()
    t_proj = time.perf_counter() - t0
    idx = torch.randint(high=sampler.n_observations, size=(1,)).squeeze()
    selected = [int(idx)]
    t1 = time.perf_counter()
    while len(selected) < k_int and time.perf_counter() - t1 < float(max_seconds):
        sampler.update_distances(cluster_center=idx)
        idx = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
        selected.append(int(idx))
    t_sel = time.perf_counter() - t1
    done = len(selected) == k_int
    rate = (len(selected) - 1) / t_sel if t_sel > 0 else float("inf")
    Path(out_path).write_text(json.dumps({
        "projection_s": t_proj,
        "projected_dim": int(sampler.features.shape[1]),
        "selected": len(selected),
        "finished": done,
        "points_per_s": rate,
        "selection_s": t_sel if done else (k_int - 1) / rate,
        "selection_extrapolated": not done,
        "indices": selected if done else None,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:5])
