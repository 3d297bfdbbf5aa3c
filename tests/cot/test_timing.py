"""Platform markers go out at most once per sensor per interval; the schedule reads no clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from copbridge.cot import PlatformSchedule

from .factories import NOW

S = timedelta(seconds=1)


def test_at_most_once_per_interval_per_sensor() -> None:
    schedule = PlatformSchedule(interval_seconds=10)
    assert schedule.claim("uav-7", NOW)
    assert not schedule.claim("uav-7", NOW + 9.999 * S)
    assert schedule.claim("cam-2", NOW + 5 * S)  # other sensors are independent
    assert schedule.claim("uav-7", NOW + 10 * S)
    assert not schedule.claim("uav-7", NOW + 19 * S)


def test_an_older_pose_is_refused_without_using_the_slot() -> None:
    """A late upload's pose used the interval's slot and, refused by the store, held back the
    live sensor's next marker for an interval."""
    schedule = PlatformSchedule(interval_seconds=10)
    assert schedule.claim("uav-7", NOW, pose_time=NOW)
    assert not schedule.claim("uav-7", NOW + 11 * S, pose_time=NOW - 30 * S)  # older
    assert not schedule.claim("uav-7", NOW + 11 * S, pose_time=NOW)  # the same pose
    assert schedule.claim("uav-7", NOW + 11 * S, pose_time=NOW + 11 * S)  # the slot was free


def test_due_does_not_record() -> None:
    schedule = PlatformSchedule(interval_seconds=10)
    assert schedule.due("uav-7", NOW)
    assert schedule.due("uav-7", NOW)
    schedule.mark("uav-7", NOW)
    assert not schedule.due("uav-7", NOW + S)


def test_clock_stepping_back_does_not_silence_a_sensor() -> None:
    schedule = PlatformSchedule(interval_seconds=10)
    assert schedule.claim("uav-7", NOW)
    assert schedule.claim("uav-7", NOW - 3600 * S)
    assert not schedule.claim("uav-7", NOW - 3599 * S)


def test_prune_forgets_only_sensors_that_are_due_anyway() -> None:
    schedule = PlatformSchedule(interval_seconds=10)
    schedule.claim("old", NOW)
    schedule.claim("new", NOW + 8 * S)
    schedule.prune(NOW + 12 * S)
    assert not schedule.due("new", NOW + 12 * S)
    assert schedule.due("old", NOW + 12 * S)
    assert set(schedule._last) == {"new"}


@pytest.mark.parametrize("seconds", [0, -5, float("nan")])
def test_interval_must_be_positive(seconds: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        PlatformSchedule(seconds)
