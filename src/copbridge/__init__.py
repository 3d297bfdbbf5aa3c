"""copbridge: AI detections on the Common Operating Picture (TAK)."""

__version__ = "0.1.0"
