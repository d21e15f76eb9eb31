"""Image-level metrics and the per-target metrics JSON."""
