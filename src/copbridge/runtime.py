"""What every long-running copbridge process (serve, its prepare helpers) sets up for itself."""

from __future__ import annotations

import gc


def tune_garbage_collector() -> None:
    """Fewer, cheaper cyclic collections while serving: objects made at start are frozen out of
    every later scan, and young collections run every 50,000 allocations instead of 700.
    Measured at a fixed 500 detections/s: p99 latency ~70 ms -> ~30 ms (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 50)
