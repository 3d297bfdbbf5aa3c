"""Sample CoT events for the tests: the contract's example detection and its platform."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from copbridge.cot import (
    DetectionEvent,
    PlatformEvent,
    build_detection_event,
    build_platform_event,
)

NOW = datetime(2026, 11, 28, 3, 51, 21, 456000, tzinfo=UTC)
DETECTED = datetime(2026, 11, 28, 3, 51, 20, 123000, tzinfo=UTC)


def detection(**overrides: Any) -> DetectionEvent:
    """The example of detection-api.md (uav-7, track 17, person), fields overridable."""
    args: dict[str, Any] = {
        "now": NOW,
        "detection_id": "uav7-f000123-d3",
        "detection_time": DETECTED,
        "sensor_id": "uav-7",
        "sensor_callsign": "RAVEN 7",
        "model": "yolov8n-coco",
        "label": "person",
        "confidence": 0.91,
        "track_id": "17",
        "lat": 41.138301,
        "lon": -104.785512,
        "hae": 1839.6,
        "ce90": 23.5,
        "le90": 16.4,
    }
    args.update(overrides)
    return build_detection_event(**args)


def platform(**overrides: Any) -> PlatformEvent:
    """The example detection's sensor as its own marker, with a drawable FOV cone."""
    args: dict[str, Any] = {
        "now": NOW,
        "sensor_id": "uav-7",
        "callsign": "RAVEN 7",
        "lat": 41.143845,
        "lon": -104.805596,
        "hae": 2936.4,
        "ce": 5.0,
        "le": 10.0,
        "azimuth": 107.68,
        "elevation": -26.6,
        "roll": -4.26,
        "fov": 60.0,
        "vfov": 33.75,
        "range_m": 2096.4,
        "sensor_model": "EO gimbal",
    }
    args.update(overrides)
    return build_platform_event(**args)
