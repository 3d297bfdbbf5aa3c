"""CoT uids: `{prefix}.{sensor}.{track}` per track (updates move one marker), else per detection.

Untracked: `{prefix}.{sensor}.d.{detection}`; platform: `{prefix}.{sensor}`. Sensor and track ids
are percent-encoded outside `[A-Za-z0-9_-]` (no "."), so different inputs never share a uid.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote

DEFAULT_UID_PREFIX = "copbridge"

_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@lru_cache(maxsize=4096)  # sensor and track ids repeat: the encoding is worth keeping
def _segment(value: str, what: str, safe: str = "-_") -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    # "surrogatepass" so even a lone surrogate gets an encoding instead of an error; quote()
    # never encodes "." and "~" itself, so those are done here when not in `safe`.
    encoded = quote(value.encode("utf-8", "surrogatepass"), safe=safe)
    if "." not in safe:
        encoded = encoded.replace(".", "%2E")
    return encoded.replace("~", "%7E")


def _prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"uid prefix {prefix!r} must be 1-64 characters of [A-Za-z0-9._:-]")
    return prefix


def platform_uid(prefix: str, sensor_id: str) -> str:
    """The uid of the sensor's own marker: `copbridge.uav-7`."""
    return f"{_prefix(prefix)}.{_segment(sensor_id, 'sensor id')}"


def detection_uid(prefix: str, sensor_id: str, track_id: str | None, detection_id: str) -> str:
    """`copbridge.uav-7.17` for track 17 of sensor uav-7; `copbridge.uav-7.d.<id>` untracked.

    An empty track id counts as no track.
    """
    base = platform_uid(prefix, sensor_id)
    if track_id:
        return f"{base}.{_segment(track_id, 'track id')}"
    return f"{base}.d.{_segment(detection_id, 'detection id', safe='-_.:')}"
