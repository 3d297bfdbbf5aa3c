"""When CoT events go stale (per label) and how often a sensor's platform marker is re-sent.

Pure: both take the current time as an argument and never read a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from copbridge.cot.mapping import normalise_label

DEFAULT_STALE_SECONDS = 300.0
DEFAULT_PLATFORM_INTERVAL_SECONDS = 10.0


def _positive_seconds(value: float, what: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class StalePolicy:
    """How long after its detection time a marker stays on the map; per-label overrides.

    Labels are compared after `normalise_label` ("Person" and "person" are one label).
    """

    default_seconds: float = DEFAULT_STALE_SECONDS
    per_label: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive_seconds(self.default_seconds, "default stale time")
        checked = {
            normalise_label(label): _positive_seconds(seconds, f"stale time for {label!r}")
            for label, seconds in self.per_label.items()
        }
        object.__setattr__(self, "per_label", MappingProxyType(checked))

    def seconds_for(self, label: str) -> float:
        return self.per_label.get(normalise_label(label), self.default_seconds)

    def stale_after(self, label: str, start: datetime) -> datetime:
        return start + timedelta(seconds=self.seconds_for(label))


DEFAULT_STALE_POLICY = StalePolicy()


class PlatformSchedule:
    """Lets each sensor's platform marker through at most once per `interval_seconds`.

    Holds only the last emission time per sensor; no clock reads, no threads (guard it with a
    lock if several tasks share one). A clock that steps backwards makes the sensor due at once
    rather than silencing it until the clock catches up.
    """

    __slots__ = ("_last", "_poses", "interval")

    def __init__(self, interval_seconds: float = DEFAULT_PLATFORM_INTERVAL_SECONDS) -> None:
        self.interval = timedelta(seconds=_positive_seconds(interval_seconds, "platform interval"))
        self._last: dict[str, datetime] = {}
        self._poses: dict[str, datetime] = {}  # the capture time of the pose last let through

    def due(self, sensor_id: str, now: datetime) -> bool:
        """True when the sensor's marker may be sent at `now` (does not record anything)."""
        last = self._last.get(sensor_id)
        return last is None or now < last or now - last >= self.interval

    def mark(self, sensor_id: str, now: datetime) -> None:
        """Record that the sensor's marker was sent at `now`."""
        self._last[sensor_id] = now

    def claim(self, sensor_id: str, now: datetime, pose_time: datetime | None = None) -> bool:
        """`due` and, when due, `mark` in one step: True means "send it now". A `pose_time`
        not after the one last let through is refused without using the slot: an older
        position must never follow a newer one, and a late upload's refusal must not hold back
        the live sensor's next marker for an interval."""
        if not self.due(sensor_id, now):
            return False
        last_pose = self._poses.get(sensor_id)
        if pose_time is not None and last_pose is not None and pose_time <= last_pose:
            return False
        self._last[sensor_id] = now
        if pose_time is not None:
            self._poses[sensor_id] = pose_time
        return True

    def prune(self, now: datetime) -> None:
        """Forget sensors that are due anyway (interval passed, or clock stepped back)."""
        self._last = {s: t for s, t in self._last.items() if t <= now < t + self.interval}
