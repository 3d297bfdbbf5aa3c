"""TAK Protocol v1: our protobufs parse with takproto to the same event, framing is exact."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from takproto import parse_proto
from takproto.proto import TakMessage

from copbridge.cot import (
    MESH_HEADER,
    CotEvent,
    CotParseError,
    DetectionEvent,
    FramingError,
    PlatformEvent,
    StreamDeframer,
    clean_text,
    mesh_frame,
    mesh_payload,
    parse_protobuf,
    parse_xml,
    stream_frame,
    to_millis,
    to_protobuf,
    to_xml,
)

from .factories import detection, platform
from .strategies import events, hostile_text


def _same_event(message: Any, event: CotEvent) -> None:
    cot = message.cotEvent
    assert (cot.uid, cot.type, cot.how) == (event.uid, event.type, event.how)
    assert (cot.sendTime, cot.startTime, cot.staleTime) == (
        to_millis(event.time),
        to_millis(event.start),
        to_millis(event.stale),
    )
    if isinstance(event, DetectionEvent | PlatformEvent):
        assert (cot.lat, cot.lon, cot.hae) == (event.lat, event.lon, event.hae)
        assert cot.ce == (9999999.0 if event.ce is None else event.ce)
        assert cot.le == (9999999.0 if event.le is None else event.le)


@settings(max_examples=150, deadline=None)
@given(events)
def test_takproto_parses_mesh_and_stream_to_the_same_event(event: CotEvent) -> None:
    payload = to_protobuf(event)
    mesh = parse_proto(bytearray(mesh_frame(payload)))
    stream = parse_proto(bytearray(stream_frame(payload)))
    _same_event(mesh, event)
    _same_event(stream, event)
    assert mesh == stream


@settings(max_examples=150, deadline=None)
@given(events)
def test_our_protobuf_parser_agrees_with_our_xml_parser(event: CotEvent) -> None:
    from_proto = parse_protobuf(to_protobuf(event))
    from_xml = parse_xml(to_xml(event))
    assert (from_proto.uid, from_proto.type, from_proto.how) == (
        from_xml.uid,
        from_xml.type,
        from_xml.how,
    )
    assert (from_proto.time, from_proto.start, from_proto.stale) == (
        from_xml.time,
        from_xml.start,
        from_xml.stale,
    )
    assert (from_proto.lat, from_proto.lon, from_proto.hae, from_proto.ce, from_proto.le) == (
        from_xml.lat,
        from_xml.lon,
        from_xml.hae,
        from_xml.ce,
        from_xml.le,
    )

    # The same detail elements: protobuf carries contact/precisionlocation/track in typed
    # fields, so only their order differs.
    def key(d: Any) -> tuple[str, str]:
        return (d.tag, repr(sorted(d.attrs.items())))

    assert sorted(from_proto.detail, key=key) == sorted(from_xml.detail, key=key)


def test_typed_fields_carry_contact_precision_location_and_track() -> None:
    event = detection(course=90.0, speed=2.5)
    message = parse_proto(bytearray(mesh_frame(to_protobuf(event))))
    assert message is not None
    detail = message.cotEvent.detail
    assert detail.contact.callsign == "person 17"
    assert (detail.precisionLocation.geopointsrc, detail.precisionLocation.altsrc) == (
        "CALC",
        "CALC",
    )
    assert (detail.track.course, detail.track.speed) == (90.0, 2.5)
    # typed elements are not repeated in xmlDetail (TAK's rule for the typed fields)
    for tag in ("<contact", "<precisionlocation", "<track"):
        assert tag not in detail.xmlDetail
    for tag in ("<remarks>", 'relation="p-p"', "<_flow-tags_"):
        assert tag in detail.xmlDetail


def test_platform_sensor_cone_travels_in_xml_detail() -> None:
    parsed = parse_protobuf(to_protobuf(platform()))
    sensor = parsed.find("sensor")
    assert sensor is not None
    assert sensor.attrs["azimuth"] == "107.68"
    assert sensor.attrs["fov"] == "60.0"
    assert sensor.attrs["range"] == "2096.4"


@settings(max_examples=100, deadline=None)
@given(label=hostile_text, model=hostile_text, sensor_callsign=hostile_text)
def test_hostile_text_is_valid_utf8_protobuf_and_round_trips(
    label: str, model: str, sensor_callsign: str
) -> None:
    event = detection(label=label, model=model, sensor_callsign=sensor_callsign)
    message = parse_proto(bytearray(mesh_frame(to_protobuf(event))))
    assert message is not None
    assert message.cotEvent.detail.contact.callsign == clean_text(event.callsign)
    assert parse_protobuf(to_protobuf(event)).remarks == clean_text(event.remarks)


def test_mesh_frame_is_the_tak_header_then_the_message() -> None:
    payload = to_protobuf(detection())
    framed = mesh_frame(payload)
    assert framed[:3] == MESH_HEADER == b"\xbf\x01\xbf"
    assert mesh_payload(framed) == payload
    with pytest.raises(FramingError):
        mesh_payload(b"<?xml" + payload)


@pytest.mark.parametrize(
    ("size", "prefix"),
    [
        (0, b"\xbf\x00"),
        (1, b"\xbf\x01"),
        (127, b"\xbf\x7f"),
        (128, b"\xbf\x80\x01"),
        (300, b"\xbf\xac\x02"),
    ],
)
def test_stream_frame_is_magic_then_varint_length(size: int, prefix: bytes) -> None:
    payload = b"x" * size
    assert stream_frame(payload) == prefix + payload


@given(st.lists(st.binary(max_size=400), max_size=8), st.data())
def test_deframer_reassembles_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(stream_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    deframer = StreamDeframer()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += deframer.feed(stream[start:end])
    assert out == payloads
    assert deframer.pending == 0


def test_deframer_refuses_garbage_and_oversize_messages() -> None:
    with pytest.raises(FramingError, match="0xbf"):
        StreamDeframer().feed(b"<event/>")
    with pytest.raises(FramingError, match="exceeds"):
        StreamDeframer(max_message=10).feed(stream_frame(b"x" * 11))


def test_real_tak_stream_of_events_deframes_to_parseable_messages() -> None:
    events = [detection(track_id=str(i)) for i in range(5)] + [platform()]
    stream = b"".join(stream_frame(to_protobuf(e)) for e in events)
    payloads = StreamDeframer().feed(stream)
    assert [parse_protobuf(p).uid for p in payloads] == [e.uid for e in events]


def test_protobuf_parser_refuses_non_finite_numbers_and_garbage() -> None:
    message: Any = TakMessage()
    message.ParseFromString(to_protobuf(detection()))
    message.cotEvent.lat = float("nan")
    with pytest.raises(CotParseError, match="lat"):
        parse_protobuf(message.SerializeToString())
    with pytest.raises(CotParseError):
        parse_protobuf(b"\xff\xff\xff")
