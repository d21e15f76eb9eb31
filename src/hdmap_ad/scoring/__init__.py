"""Scoring test maps: routing through the gate to the fitted sub-models, reference folds for
the deployable threshold, the scores table."""
