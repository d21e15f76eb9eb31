"""Shared tools below the methods (as anomalib's ``models/components``): the greedy coreset
(``coreset``) and the nearest-neighbour bank search with PatchCore's image score (``knn``).

They know nothing of gates, experiments or files: a method composes them (PatchCore builds
its bank with :func:`hdmap_ad.components.coreset.greedy_coreset` and scores with
:func:`hdmap_ad.components.knn.image_scores`), and they import nothing above ``features``.
"""
