"""Which normal maps become few-shot references (see ``ReferenceConfig`` for the protocols)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hdmap_ad.errors import InputError
from hdmap_ad.specs import ReferenceConfig

#: Protocols whose references are test/good maps that are then left out of scoring.
HOLDOUT_PROTOCOLS = ("test_good_holdout",)


def _pick(rows: pd.DataFrame, n: int, cfg: ReferenceConfig, side: str, where: str) -> pd.DataFrame:
    if n > len(rows):
        raise InputError(f"{where}: asks for {n} references but only {len(rows)} maps exist")
    if cfg.pick == "extremes":
        rows = rows.sort_values("index")
        return rows.head(n) if side == "low" else rows.tail(n)
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.choice(len(rows), size=n, replace=False))
    return rows.iloc[take]


def select_references(manifest: pd.DataFrame, cfg: ReferenceConfig, where: str) -> pd.DataFrame:
    """Return the manifest rows used as references, in a deterministic order.

    Args:
        manifest: a domain manifest (``hdmap_ad.data.manifest``).
        cfg: the experiment's reference block.
        where: params key for error messages (``experiments.gated.references``).
    """
    train = manifest[(manifest.split == "train") & (manifest.label == "good")]
    good = manifest[(manifest.split == "test") & (manifest.label == "good")]
    if cfg.protocol == "full":
        refs = train
    elif cfg.protocol == "train":
        if cfg.pick == "extremes":
            refs = train.sort_values("index").head(cfg.k)
            if cfg.k > len(train):
                raise InputError(f"{where}.k: {cfg.k} references but train/good has {len(train)}")
        else:
            refs = _pick(train, cfg.k, cfg, "low", f"{where}.k")
    else:
        # user_leaky is the user's own choice: the lowest-index cold and highest-index warm
        # test/good maps, which are then scored again.
        pick_cfg = cfg if cfg.protocol == "test_good_holdout" else ReferenceConfig(
            protocol=cfg.protocol, n_cold=cfg.n_cold, n_warm=cfg.n_warm, pick="extremes"
        )
        cold = _pick(good[good.condition == "cold"], cfg.n_cold, pick_cfg, "low",
                     f"{where}.n_cold")
        warm = _pick(good[good.condition == "warm"], cfg.n_warm, pick_cfg, "high",
                     f"{where}.n_warm")
        refs = pd.concat([cold, warm])
    if len(refs) == 0:
        raise InputError(f"{where}: selects no reference maps")
    return refs.sort_values(["split", "label", "index"]).reset_index(drop=True)


def scored_rows(manifest: pd.DataFrame, refs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Test rows to score: all of test, minus the references under a hold-out protocol."""
    test = manifest[manifest.split == "test"]
    if protocol in HOLDOUT_PROTOCOLS:
        test = test[~test.image_id.isin(set(refs.image_id))]
    return test.sort_values(["label", "index"]).reset_index(drop=True)


def threshold_unavailable(assignment: Sequence[str], deploy_folds: int) -> str | None:
    """Why an experiment gets no deployable threshold, or None when it gets one.

    The threshold is the largest score of a reference held out of the sub-model that scores
    it, so every sub-model needs a held-out fold within its own references: with one
    reference in a condition (budget 1 per condition), the only model left to score it
    would hold the other condition's references, and its score says nothing about this one.

    Args:
        assignment: the sub-model of each reference (``mixed``, or ``cold``/``warm``).
        deploy_folds: the experiment's ``deploy_folds``.
    """
    names, counts = np.unique(np.asarray(assignment, dtype=object).astype(str),
                              return_counts=True)
    if deploy_folds == 0:
        return "deploy_folds is 0"
    if len(assignment) < 2:
        return f"{len(assignment)} reference: a held-out fold needs at least 2"
    short = [f"'{n}' has {c}" for n, c in zip(names.tolist(), counts.tolist(), strict=True)
             if c < 2]
    if short:
        return (f"sub-model {', '.join(short)} reference: no held-out fold within its "
                "condition (a deployable threshold needs at least 2 references per sub-model)")
    return None
