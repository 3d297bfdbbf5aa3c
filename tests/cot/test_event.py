"""Event facts: derived fields (uid, type, ce/le, stale, callsign, remarks) and refused input."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from copbridge.cot import (
    PLATFORM_TYPE_AIRBORNE,
    PLATFORM_TYPE_FIXED,
    UNKNOWN_ERROR,
    StalePolicy,
    TypeMapping,
    ping_event,
    to_xml,
)

from .factories import DETECTED, NOW, detection, platform


def test_contract_example_answer_fields() -> None:
    event = detection()
    assert event.uid == "copbridge.uav-7.17"
    assert event.type == "a-u-G"
    assert event.how == "m-i"
    assert event.time == NOW
    assert event.start == event.detection_time == DETECTED
    assert event.stale == datetime.fromisoformat("2026-11-28T03:56:20.123Z")
    assert event.parent_uid == "copbridge.uav-7"
    assert event.parent_type == PLATFORM_TYPE_AIRBORNE


def test_ce_le_are_one_sigma_from_the_90_percent_figures() -> None:
    event = detection(ce90=23.5, le90=16.4)
    assert event.ce == pytest.approx(23.5 / 2.1460, abs=5e-4)
    assert event.le == pytest.approx(16.4 / 1.6449, abs=5e-4)
    assert b'ce="10.951"' in to_xml(event)


@pytest.mark.parametrize("unknown", [None, UNKNOWN_ERROR])
def test_unknown_error_is_written_as_9999999(unknown: float | None) -> None:
    # geolocation reports an error it cannot bound as UNKNOWN_ERROR: it must not be divided
    # into a 4,660 km 1-sigma that TAK would draw
    event = detection(ce90=unknown, le90=unknown)
    assert event.ce is None
    assert event.ce90 is None
    assert b'ce="9999999.0" le="9999999.0"' in to_xml(event)
    assert b"CE90 unknown" in to_xml(event)


def test_stale_follows_the_label_policy() -> None:
    policy = StalePolicy(default_seconds=120, per_label={"Car": 30, "person": 600})
    assert detection(stale_policy=policy, label="car").stale == DETECTED + timedelta(seconds=30)
    assert detection(stale_policy=policy).stale == DETECTED + timedelta(seconds=600)
    assert detection(stale_policy=policy, label="dog").stale == DETECTED + timedelta(seconds=120)


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf])
def test_stale_policy_refuses_nonsense(seconds: float) -> None:
    with pytest.raises(ValueError, match="stale"):
        StalePolicy(default_seconds=seconds)
    with pytest.raises(ValueError, match="stale"):
        StalePolicy(per_label={"car": seconds})


def test_callsign_is_label_and_short_id() -> None:
    assert detection().callsign == "person 17"
    assert detection(track_id=None).callsign == "person 123-d3"
    assert detection(track_id="0123456789abcdef").callsign == "person abcdef"
    assert detection(label=" \x00 ", track_id="4").callsign == "detection 4"


def test_remarks_say_what_who_when_and_how_well() -> None:
    remarks = detection().remarks
    for part in (
        "person",
        "confidence 0.91",
        "model yolov8n-coco",
        "sensor RAVEN 7 (uav-7)",
        "track 17",
        "detected 2026-11-28T03:51:20.123Z",
        "CE90 23.5 m",
    ):
        assert part in remarks


def test_affiliation_and_mapping_reach_the_type() -> None:
    mapping = TypeMapping.from_config({"person": "a-?-G-U-C-I"})
    assert detection(affiliation="hostile", mapping=mapping).type == "a-h-G-U-C-I"


def test_times_are_utc_to_the_millisecond() -> None:
    plus2 = timezone(timedelta(hours=2))
    event = detection(
        now=datetime(2026, 11, 28, 5, 51, 21, 456789, tzinfo=plus2),
        detection_time=datetime(2026, 11, 28, 5, 51, 20, 123999, tzinfo=plus2),
    )
    assert event.time == NOW
    assert event.time.utcoffset() == timedelta(0)
    assert event.start == DETECTED


@pytest.mark.parametrize("name", ["now", "detection_time"])
def test_naive_times_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="timezone"):
        detection(**{name: datetime(2026, 11, 28, 3, 51, 20)})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lat", math.nan),
        ("lat", 90.0001),
        ("lon", -180.5),
        ("lon", math.inf),
        ("hae", -math.inf),
        ("ce90", math.nan),
        ("ce90", -1.0),
        ("le90", math.inf),
        ("confidence", 1.01),
        ("confidence", math.nan),
        ("course", math.nan),
        ("speed", -0.1),
        ("speed", math.inf),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        detection(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lat", math.nan),
        ("azimuth", math.inf),
        ("elevation", -91.0),
        ("fov", 0.0),
        ("fov", 360.0),
        ("vfov", math.nan),
        ("range_m", -1.0),
        ("roll", math.nan),
    ],
)
def test_platform_refuses_bad_sensor_numbers(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name.removesuffix("_m")):
        platform(**{name: value})


def test_angles_are_normalised_to_the_schema_ranges() -> None:
    event = platform(azimuth=-90.0, roll=270.0, course=360.0)
    assert event.azimuth == 270.0
    assert event.roll == -90.0
    assert event.course == 0.0
    assert platform(azimuth=360.0).azimuth == 0.0
    assert platform(roll=-180.0).roll == 180.0
    assert detection(course=-0.0, speed=1.0).course == 0.0


def test_stale_must_come_after_start() -> None:
    with pytest.raises(ValueError, match="stale"):
        detection(stale_policy=StalePolicy(default_seconds=1e-4))


def test_platform_marker_types_and_fov_cone() -> None:
    airborne = platform()
    assert airborne.type == PLATFORM_TYPE_AIRBORNE == "a-f-A-M-F-Q"
    assert airborne.uid == detection().parent_uid
    assert airborne.draws_fov
    fixed = platform(airborne=False, azimuth=None)
    assert fixed.type == PLATFORM_TYPE_FIXED == "a-f-G-E-S"
    assert not fixed.draws_fov
    assert platform(platform_type="a-f-A-M-H-Q").type == "a-f-A-M-H-Q"
    with pytest.raises(ValueError, match="type"):
        platform(platform_type="a f")


def test_platform_writes_all_cone_attributes_when_known() -> None:
    document = to_xml(platform())
    assert (
        b'<sensor azimuth="107.68" elevation="-26.6" roll="-4.26" fov="60.0" vfov="33.75" '
        b'range="2096.4" model="EO gimbal"/>'
    ) in document


def test_platform_elevation_defaults_to_level_so_atak_can_draw_the_cone() -> None:
    event = platform(elevation=0.0)
    assert event.elevation == 0.0
    assert b'elevation="0.0"' in to_xml(event)


def test_ping_is_the_tak_keepalive() -> None:
    ping = ping_event(NOW)
    assert (ping.type, ping.how) == ("t-x-c-t", "h-g-i-g-o")
    assert ping.stale == NOW + timedelta(seconds=20)
    assert b'type="t-x-c-t"' in to_xml(ping)
