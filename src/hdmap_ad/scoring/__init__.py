"""Scoring test maps against memory banks (faiss exact L2) and PatchCore's image score."""
