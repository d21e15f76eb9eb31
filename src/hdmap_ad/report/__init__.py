"""Reporting: paired hypothesis tests between experiments and the figures of a run.

- ``hdmap_ad.report.hypothesis``: paired, class-stratified bootstrap of delta AUROC and delta
  deployable accuracy between two experiments scored on the same test maps, plus a verdict.
- ``hdmap_ad.report.figures``: ROC curves, score histograms, gate p90 distributions and
  anomaly-map grids, written as PNG atomically (matplotlib, Agg backend).

The submodules are not imported here so that importing the package does not pull matplotlib.
"""
