"""Reporting: paired hypothesis tests between experiments and the figures of a run.

- ``hdmap_ad.report.hypothesis``: paired bootstrap of delta AUROC and delta deployable
  accuracy between two experiments scored on the same test maps; a hypothesis's verdicts over
  several reference draws (two-level bootstrap: seeds, then test maps) per claim (pooled,
  condition-macro, cold, warm), per domain and macro-averaged over domains.
- ``hdmap_ad.report.figures``: ROC curves, score histograms, gate p90 distributions,
  anomaly-map grids and the hypotheses' forest plots, written as PNG atomically (matplotlib,
  Agg backend).

The submodules are not imported here so that importing the package does not pull matplotlib.
"""
