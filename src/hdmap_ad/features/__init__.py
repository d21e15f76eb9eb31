"""Backbone features: weights loading, map preprocessing, layer extraction and the Parquet cache.

``weights`` builds a timm backbone and loads its weights from timm's hub cache, a local file,
a registry package or a seeded random init; ``preprocess`` turns maps into normalised model
inputs; ``extract`` runs one forward pass per batch and caches every requested layer with
``cache`` (one Parquet file per domain/backbone/layer, one row per image).
"""
