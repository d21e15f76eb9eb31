"""hdmap-ad: few-shot, condition-aware PatchCore on gearbox health data maps (HDMAP)."""

__version__ = "0.1.0"
