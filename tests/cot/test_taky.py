"""A real TAK server (taky) relays our events between two connected clients with fields intact."""

from __future__ import annotations

import pytest

from copbridge.cot import (
    DetectionEvent,
    ParsedEvent,
    PlatformEvent,
    clean_text,
    parse_xml,
    to_xml,
)

from .factories import detection, platform
from .taky_server import CotClient, TakyServer

pytestmark = pytest.mark.timeout(60)


def _relay(clients: tuple[CotClient, CotClient], event: DetectionEvent | PlatformEvent) -> bytes:
    sender, receiver = clients
    sender.send(to_xml(event))
    needle = f' uid="{event.uid}"'.encode()
    return receiver.wait_for(lambda got: needle in got)


def _assert_same(received: ParsedEvent, sent: bytes) -> None:
    """taky re-writes <event>/<point> itself (point to 6 / 1 decimals) and passes <detail> on."""
    original = parse_xml(sent)
    assert (received.uid, received.type, received.how) == (
        original.uid,
        original.type,
        original.how,
    )
    assert (received.time, received.start, received.stale) == (
        original.time,
        original.start,
        original.stale,
    )
    assert received.lat == pytest.approx(original.lat, abs=5e-7)
    assert received.lon == pytest.approx(original.lon, abs=5e-7)
    for name in ("hae", "ce", "le"):
        assert getattr(received, name) == pytest.approx(getattr(original, name), abs=0.05)
    assert received.detail == original.detail


def test_detection_reaches_the_other_client_with_every_field(
    tak_clients: tuple[CotClient, CotClient],
) -> None:
    event = detection(
        track_id="taky-1",
        course=271.5,
        speed=1.25,
        image_url="https://copbridge.example/api/v1/detections/uav7-f000123-d3/image",
        image_mime="image/jpeg",
    )
    sent = to_xml(event)
    received = parse_xml(_relay(tak_clients, event))
    _assert_same(received, sent)
    assert received.callsign == "person taky-1"
    link = received.find("link")
    assert link is not None
    assert link.attrs["relation"] == "p-p"
    assert link.attrs["uid"] == "copbridge.uav-7"
    assert received.find("track") is not None
    assert received.find("precisionlocation") is not None
    assert received.find("_flow-tags_") is not None


def test_platform_marker_keeps_its_sensor_cone(tak_clients: tuple[CotClient, CotClient]) -> None:
    event = platform(sensor_id="uav-taky")
    received = parse_xml(_relay(tak_clients, event))
    _assert_same(received, to_xml(event))
    sensor = received.find("sensor")
    assert sensor is not None
    assert {"azimuth", "fov", "range", "elevation"} <= set(sensor.attrs)


def test_hostile_text_survives_the_server(tak_clients: tuple[CotClient, CotClient]) -> None:
    nasty = 'a"b<c>&d]]>\x01\t\n\r\u202eevil\U0001f600\ufffe'
    event = detection(
        track_id="taky-hostile",
        label=nasty,
        model=nasty,
        sensor_callsign=nasty,
        image_url=nasty,
    )
    received = parse_xml(_relay(tak_clients, event))
    _assert_same(received, to_xml(event))
    assert received.remarks == clean_text(event.remarks)
    assert received.callsign == clean_text(event.callsign)


def test_server_drops_an_event_without_how_so_the_check_is_strict(
    taky: TakyServer, tak_clients: tuple[CotClient, CotClient]
) -> None:
    sender, receiver = tak_clients
    broken = to_xml(detection(track_id="taky-no-how")).replace(b' how="m-i"', b"")
    sender.send(broken)
    good = detection(track_id="taky-after")
    sender.send(to_xml(good))
    receiver.wait_for(lambda got: b'uid="copbridge.uav-7.taky-after"' in got)
    assert not any(b"taky-no-how" in got for got in receiver.received)
    assert taky.process.poll() is None
