"""Choosing an experiment's options without test labels (issue #28; Fung et al. 2023).

An experiment with a ``select:`` block is a grid: lists of values for its options (method
options such as ``coreset_ratio``, experiment keys such as ``layers``, or ``method`` itself).
:mod:`hdmap_ad.selection.grid` expands it into concrete experiments (one fit each, as a
sweep's variants); each is scored on a validation set of synthetic anomalies made from its
held-out references (:mod:`hdmap_ad.validation`); :mod:`hdmap_ad.selection.choose` picks the
point with the best validation AUROC and reports its test metrics as the headline, beside
the grid's best point on test (an upper bound, never the headline).
"""
