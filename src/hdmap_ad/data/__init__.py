"""Datasets: the synthetic HDMAP generator, map reading and per-domain manifests."""
