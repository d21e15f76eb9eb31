"""Memory banks: reference selection, the cold/warm gate, coreset subsampling, storage."""
