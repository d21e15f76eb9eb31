"""Trained methods follow ``device`` (stfpm, which needs a teacher layout, shares the same
fit and score path): on a GPU they train and score there, and their
checkpoints are device-free (stored on the CPU, reloadable anywhere). Skips without CUDA."""

from __future__ import annotations

import numpy as np
import pytest

from hdmap_ad.methods import METHODS, FitContext, load_model, save_model
from hdmap_ad.methods.training import TrainedMethod

torch = pytest.importorskip("torch")

TRAINED = sorted(n for n, m in METHODS.items()
                 if isinstance(m, TrainedMethod) and not m.reads_map)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", TRAINED)
def test_trained_method_runs_on_cuda_and_its_checkpoint_reloads_on_cpu(name, tmp_path):
    method = METHODS[name]
    opts = method.Options(**{**method.smoke_options, "epochs": 2})
    rng = np.random.default_rng(0)
    desc = rng.standard_normal((6, 8, 12, 4)).astype(np.float32)
    model = method.fit(desc, opts, FitContext(seed=0, device="cuda", where="e"))
    assert next(model.module.parameters()).is_cuda
    image, patch = model.score(desc)
    assert np.isfinite(image).all() and np.isfinite(patch).all()
    save_model(tmp_path, "mixed", method, opts, model)
    on_cpu = load_model(tmp_path, "mixed", method, opts, FitContext(where="e"))
    assert not next(on_cpu.module.parameters()).is_cuda
    np.testing.assert_allclose(on_cpu.score(desc)[0], image, rtol=1e-3, atol=1e-3)
