"""XML: every event we build validates against the MITRE XSDs, any text stays well-formed and
round-trips, numbers are plain decimals, and the parser refuses DTDs and entities."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from copbridge.cot import (
    CotEvent,
    CotParseError,
    DetectionEvent,
    PlatformEvent,
    clean_text,
    escape_attr,
    escape_text,
    format_coordinate,
    format_decimal,
    parse_xml,
    ping_event,
    to_xml,
)

from .factories import NOW, detection, platform
from .schemas import SUB_SCHEMAS, CotSchemas, root_elements
from .strategies import NASTY, events, hostile_text

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECIMAL = re.compile(r"-?\d+\.\d+")


def test_sub_schemas_declare_the_detail_elements_they_validate() -> None:
    for tag, xsd in SUB_SCHEMAS.items():
        assert root_elements(xsd) == [tag]
    assert root_elements("base-event-schema.xsd") == ["event", "detail", "point"]


def test_the_validator_catches_what_the_schemas_forbid(cot_schemas: CotSchemas) -> None:
    good = to_xml(platform())
    cot_schemas.assert_valid(good)
    for broken in (
        good.replace(b'lat="41.1438450"', b'lat="1e-05"'),
        good.replace(b'hae="2936.4"', b'hae="NaN"'),
        good.replace(b'azimuth="107.68"', b'azimuth="360.0"'),
        good.replace(b' how="m-g"', b""),
        good.replace(b'<contact callsign="RAVEN 7"/>', b'<contact freq="x"/>'),
    ):
        assert broken != good
        assert cot_schemas.errors(broken)


@pytest.mark.parametrize(
    "event",
    [
        detection(),
        detection(track_id=None),
        detection(ce90=None, le90=None, model=None, sensor_callsign=None),
        detection(course=359.99, speed=0.0, image_url="https://x/i.jpg", image_mime="image/png"),
        detection(geopoint_source=None, alt_source=None),
        platform(),
        platform(airborne=False, azimuth=None, fov=None, range_m=None, roll=None, vfov=None),
        platform(course=12.5, speed=30.0, ce=None, le=None),
        ping_event(NOW),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_kind_of_event_validates(cot_schemas: CotSchemas, event: CotEvent) -> None:
    cot_schemas.assert_valid(to_xml(event))
    cot_schemas.assert_valid(to_xml(event, declaration=False))


@HYPOTHESIS
@given(events)
def test_generated_events_validate_and_parse_back(cot_schemas: CotSchemas, event: CotEvent) -> None:
    document = to_xml(event)
    cot_schemas.assert_valid(document)
    parsed = parse_xml(document)
    assert (parsed.uid, parsed.type, parsed.how) == (event.uid, event.type, event.how)
    assert (parsed.time, parsed.start, parsed.stale) == (event.time, event.start, event.stale)
    if isinstance(event, DetectionEvent | PlatformEvent):
        # shortest round-trip digits: the floats come back bit for bit
        assert (parsed.lat, parsed.lon, parsed.hae) == (event.lat, event.lon, event.hae)
        assert parsed.ce == (9999999.0 if event.ce is None else event.ce)
        assert parsed.le == (9999999.0 if event.le is None else event.le)
    point = etree.fromstring(document).find("point")
    assert point is not None
    for name in ("lat", "lon"):
        value = point.get(name, "")
        assert DECIMAL.fullmatch(value)
        assert len(value.split(".")[1]) >= 7


def _detail_text(document: bytes) -> dict[str, dict[str, str] | str]:
    parsed = parse_xml(document)
    out: dict[str, dict[str, str] | str] = {}
    for element in parsed.detail:
        key = element.tag
        if element.tag == "link":
            key = f"link:{element.attrs['relation']}"
        out[key] = element.text if element.tag == "remarks" else dict(element.attrs)
    return out


@HYPOTHESIS
@given(
    label=hostile_text,
    model=hostile_text,
    sensor_callsign=hostile_text,
    sensor_id=hostile_text.filter(lambda s: s != ""),
    track_id=hostile_text,
    detection_id=hostile_text.filter(lambda s: s != ""),
    image_url=hostile_text,
    image_mime=hostile_text,
    geopoint_source=hostile_text,
    alt_source=hostile_text,
)
def test_hostile_text_in_a_detection_is_escaped_and_round_trips(
    cot_schemas: CotSchemas,
    label: str,
    model: str,
    sensor_callsign: str,
    sensor_id: str,
    track_id: str,
    detection_id: str,
    image_url: str,
    image_mime: str,
    geopoint_source: str,
    alt_source: str,
) -> None:
    event = detection(
        label=label,
        model=model,
        sensor_callsign=sensor_callsign,
        sensor_id=sensor_id,
        track_id=track_id,
        detection_id=detection_id,
        image_url=image_url,
        image_mime=image_mime,
        geopoint_source=geopoint_source,
        alt_source=alt_source,
    )
    document = to_xml(event)
    etree.fromstring(document)  # well-formed, by a parser that is not ours
    cot_schemas.assert_valid(document)
    details = _detail_text(document)
    assert details["contact"] == {"callsign": clean_text(event.callsign)}
    assert details["remarks"] == clean_text(event.remarks)
    for part in (label, model, sensor_id, track_id):
        assert clean_text(part) in str(details["remarks"])
    if sensor_callsign:
        assert clean_text(sensor_callsign) in str(details["remarks"])
    assert details["link:p-p"] == {
        "uid": event.parent_uid,
        "type": event.parent_type,
        "relation": "p-p",
    }
    image = details["link:r-u"]
    assert isinstance(image, dict)
    assert (image["url"], image["mime"]) == (clean_text(image_url), clean_text(image_mime))
    assert details["precisionlocation"] == {
        "geopointsrc": clean_text(geopoint_source),
        "altsrc": clean_text(alt_source),
    }
    assert parse_xml(document).uid == event.uid


@HYPOTHESIS
@given(callsign=hostile_text, sensor_model=hostile_text, sensor_id=hostile_text.filter(bool))
def test_hostile_text_in_a_platform_is_escaped_and_round_trips(
    cot_schemas: CotSchemas, callsign: str, sensor_model: str, sensor_id: str
) -> None:
    event = platform(callsign=callsign, sensor_model=sensor_model, sensor_id=sensor_id)
    document = to_xml(event)
    cot_schemas.assert_valid(document)
    parsed = parse_xml(document)
    assert parsed.callsign == clean_text(event.callsign)
    sensor = parsed.find("sensor")
    assert sensor is not None
    assert sensor.attrs["model"] == clean_text(sensor_model)
    assert parsed.remarks == clean_text(event.remarks or "")


def test_clean_text_drops_only_what_xml_forbids() -> None:
    kept = "\t\n\r \x7f\x85\u200f\u202e\ud7ff\ue000\ufffd\U00010000\U0001f600\U0010ffff"
    assert clean_text(kept) == kept
    assert clean_text("a\x00b\x08c\x0bd\x1fe\ud800f\udfffg\ufffeh\uffffi") == "abcdefghi"
    for nasty in NASTY:
        element = etree.fromstring(f'<x a="{escape_attr(nasty)}">{escape_text(nasty)}</x>')
        assert (element.text or "", element.get("a")) == (clean_text(nasty), clean_text(nasty))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-05, "0.00001"),
        (-1e-300, "-0." + "0" * 299 + "1"),
        (1e16, "10000000000000000.0"),
        (123.0, "123.0"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
    ],
)
def test_decimals_are_plain_never_exponent(value: float, text: str) -> None:
    assert format_decimal(value) == text
    assert Decimal(text) == Decimal(repr(value))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_is_an_exact_plain_decimal(value: float) -> None:
    text = format_decimal(value)
    assert DECIMAL.fullmatch(text)
    assert float(text) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [(41.138301, "41.1383010"), (-104.0, "-104.0000000"), (1.123456789012, "1.123456789012")],
)
def test_coordinates_have_at_least_seven_decimals(value: float, text: str) -> None:
    assert format_coordinate(value) == text


def test_point_keeps_full_precision_not_four_decimals() -> None:
    parsed = parse_xml(to_xml(detection(lat=41.13830123, lon=-104.78551289)))
    assert (parsed.lat, parsed.lon) == (41.13830123, -104.78551289)


def test_attribute_whitespace_round_trips_as_character_references() -> None:
    event = detection(label="a\tb\nc\r\nd")
    document = to_xml(event)
    assert b'callsign="a&#9;b&#10;c&#13;&#10;d 17"' in document
    assert parse_xml(document).callsign == "a\tb\nc\r\nd 17"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<event version="2.0" uid="&lol9;" type="a-u-G" how="m-i" time="2026-01-01T00:00:00Z"
 start="2026-01-01T00:00:00Z" stale="2026-01-01T00:05:00Z">
<point lat="0" lon="0" hae="0" ce="1" le="1"/><detail><remarks>&lol9;</remarks></detail></event>
"""


def _external_entity(secret: Path) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<event version="2.0" uid="u" type="a-u-G" how="m-i" time="2026-01-01T00:00:00Z" '
        'start="2026-01-01T00:00:00Z" stale="2026-01-01T00:05:00Z">'
        '<point lat="0" lon="0" hae="0" ce="1" le="1"/><detail><remarks>&x;</remarks></detail>'
        "</event>"
    ).encode()


def test_billion_laughs_is_refused() -> None:
    with pytest.raises(CotParseError, match="DTD"):
        parse_xml(BILLION_LAUGHS)


def test_billion_laughs_in_utf16_is_refused_too() -> None:
    document = BILLION_LAUGHS.replace(b'version="1.0"?>', b'version="1.0" encoding="UTF-16"?>', 1)
    with pytest.raises(CotParseError, match="UTF-8"):
        parse_xml(document.decode().encode("utf-16"))
    with pytest.raises(CotParseError, match="UTF-8"):
        parse_xml(document.decode().encode("utf-16-le"))


def test_external_entity_is_refused_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    document = _external_entity(secret)
    with pytest.raises(CotParseError) as caught:
        parse_xml(document)
    assert "TOP-SECRET" not in str(caught.value)
    for encoding in ("utf-8-sig", "latin-1"):
        with pytest.raises(CotParseError, match="DTD"):
            parse_xml(document.decode().encode(encoding))


def test_undeclared_entity_is_not_well_formed() -> None:
    document = to_xml(detection()).replace(b"person 17", b"&xxe;")
    with pytest.raises(CotParseError):
        parse_xml(document)


def test_oversize_input_is_refused_before_parsing() -> None:
    with pytest.raises(CotParseError, match="bytes"):
        parse_xml(b"<event>" + b" " * 2_000_000 + b"</event>")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b'uid="copbridge.uav-7.17"', b"", "uid"),
        (b'type="a-u-G"', b"", "type"),
        (b'lat="41.1383010"', b'lat="NaN"', "finite"),
        (b'lon="-104.7855120"', b'lon="east"', "number"),
        (b'hae="1839.6" ', b"", "hae"),
        (b'stale="2026-11-28T03:56:20.123Z"', b'stale="soon"', "stale"),
    ],
)
def test_parser_refuses_events_missing_or_mangling_fields(
    old: bytes, new: bytes, message: str
) -> None:
    document = to_xml(detection())
    assert old in document
    with pytest.raises(CotParseError, match=message):
        parse_xml(document.replace(old, new))


def test_parser_reads_other_senders_plain_events() -> None:
    atak = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        b'<event version="2.0" uid="ANDROID-1" type="a-f-G-U-C" time="2012-10-29T20:07:45.314Z" '
        b'start="2012-10-29T20:07:45.314Z" stale="2012-10-29T20:08:00.314Z" how="m-g">'
        b'<point lat="42.3892892899364" lon="-71.1475206" hae="46.0999755859375" ce="9999999" '
        b'le="9999999"/><detail><contact callsign="George" endpoint="192.168.1.141:4242:tcp"/>'
        b'<__group name="Cyan"/><!-- note --></detail></event>'
    )
    parsed = parse_xml(atak)
    assert parsed.callsign == "George"
    assert not parsed.ce_known
    assert [d.tag for d in parsed.detail] == ["contact", "__group"]
