"""CoT XML: a fast string serialiser for our events and a hardened parser for anyone's.

The serialiser writes straight to text (no tree) with every free-text value escaped by
`copbridge.cot.text`; the parser is lxml with DTDs, entity expansion and network access refused.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from lxml import etree

from copbridge.cot.event import (
    UNKNOWN_ERROR,
    CotEvent,
    DetectionEvent,
    PingEvent,
    PlatformEvent,
    format_time,
)
from copbridge.cot.text import escape_attr, escape_text

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
IMAGE_LINK_TYPE = "b-i"
"""CoT "bits, imagery": the `type` link-schema.xsd requires on the image link."""
FLOW_TAG = "copbridge"
DEFAULT_MAX_BYTES = 1 << 20


class CotParseError(ValueError):
    """The input is not a CoT event we accept (malformed, DTD/entities, missing or bad fields)."""


# ---------------------------------------------------------------------------------- serialise


def format_decimal(value: float) -> str:
    """xs:decimal text for a finite float: shortest round-trip digits, never exponent/NaN/inf."""
    text = repr(float(value))
    if "e" in text or "n" in text:  # 1e-05, 1e+16, inf, nan
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        text = format(Decimal(text), "f")
        if "." not in text:
            text += ".0"
    return text


def format_coordinate(value: float) -> str:
    """A latitude/longitude with at least 7 decimals (1 cm) and no rounding of given digits."""
    text = format_decimal(value)
    decimals = len(text) - text.index(".") - 1
    return text + "0" * (7 - decimals) if decimals < 7 else text


def _error(value: float | None) -> str:
    return "9999999.0" if value is None else format_decimal(value)


def _head(event: CotEvent) -> str:
    return (
        f'<event version="2.0" uid="{escape_attr(event.uid)}" type="{event.type}" '
        f'how="{event.how}" time="{format_time(event.time)}" start="{format_time(event.start)}" '
        f'stale="{format_time(event.stale)}">'
    )


def _point(lat: float, lon: float, hae: float, ce: float | None, le: float | None) -> str:
    return (
        f'<point lat="{format_coordinate(lat)}" lon="{format_coordinate(lon)}" '
        f'hae="{format_decimal(hae)}" ce="{_error(ce)}" le="{_error(le)}"/>'
    )


def _track(course: float | None, speed: float | None) -> str:
    # track-schema.xsd requires both; half a velocity is not written at all.
    if course is None or speed is None:
        return ""
    return f'<track course="{format_decimal(course)}" speed="{format_decimal(speed)}"/>'


def _precision_location(event: DetectionEvent) -> str:
    if event.geopoint_source is None and event.alt_source is None:
        return ""
    src = event.geopoint_source
    alt = event.alt_source
    return (
        "<precisionlocation"
        + ("" if src is None else f' geopointsrc="{escape_attr(src)}"')
        + ("" if alt is None else f' altsrc="{escape_attr(alt)}"')
        + "/>"
    )


def _detection_detail(event: DetectionEvent, typed: bool) -> str:
    parts = [f'<contact callsign="{escape_attr(event.callsign)}"/>'] if typed else []
    parts.append(f"<remarks>{escape_text(event.remarks)}</remarks>")
    # ATAK also knows parent_callsign/production_time here, but link-schema.xsd allows no
    # other attributes; the sensor's callsign and the detection time are in the remarks.
    parts.append(
        f'<link uid="{escape_attr(event.parent_uid)}" type="{event.parent_type}" relation="p-p"/>'
    )
    if typed:
        parts.append(_precision_location(event))
        parts.append(_track(event.course, event.speed))
    if event.image_url is not None:
        # ATAK lists relation "r-u" links as the marker's associated URLs (LinkDetailHandler).
        mime = "" if event.image_mime is None else f' mime="{escape_attr(event.image_mime)}"'
        parts.append(
            f'<link uid="{escape_attr(event.uid)}.image" type="{IMAGE_LINK_TYPE}" relation="r-u" '
            f'url="{escape_attr(event.image_url)}"{mime} remarks="detection image"/>'
        )
    parts.append(f'<_flow-tags_ {FLOW_TAG}="{format_time(event.time)}"/>')
    return "".join(parts)


def _sensor(event: PlatformEvent) -> str:
    attrs = []
    for name in ("azimuth", "elevation", "roll", "fov", "vfov", "range"):
        value = getattr(event, name)
        if value is not None:
            attrs.append(f' {name}="{format_decimal(value)}"')
    if event.sensor_model is not None:
        attrs.append(f' model="{escape_attr(event.sensor_model)}"')
    return f"<sensor{''.join(attrs)}/>" if attrs else ""


def _platform_detail(event: PlatformEvent, typed: bool) -> str:
    parts = [f'<contact callsign="{escape_attr(event.callsign)}"/>'] if typed else []
    parts.append(_sensor(event))
    if event.remarks is not None:
        parts.append(f"<remarks>{escape_text(event.remarks)}</remarks>")
    if typed:
        parts.append(_track(event.course, event.speed))
    parts.append(f'<_flow-tags_ {FLOW_TAG}="{format_time(event.time)}"/>')
    return "".join(parts)


def detail_xml(event: CotEvent, *, typed: bool = True) -> str:
    """The children of `<detail>` as XML text.

    `typed=False` leaves out what TAK protobuf carries in typed fields (contact,
    precisionlocation, track): the rest is the protobuf `xmlDetail`.
    """
    if isinstance(event, DetectionEvent):
        return _detection_detail(event, typed)
    if isinstance(event, PlatformEvent):
        return _platform_detail(event, typed)
    return ""


def to_xml(event: CotEvent, *, declaration: bool = True) -> bytes:
    """The event as a UTF-8 CoT XML document (one line after the declaration)."""
    if isinstance(event, PingEvent):
        body = _head(event) + _point(0.0, 0.0, 0.0, None, None) + "<detail/></event>"
    else:
        body = (
            _head(event)
            + _point(event.lat, event.lon, event.hae, event.ce, event.le)
            + "<detail>"
            + detail_xml(event)
            + "</detail></event>"
        )
    data = body.encode("utf-8")
    return XML_DECLARATION + data if declaration else data


# -------------------------------------------------------------------------------------- parse


@dataclass(frozen=True, slots=True)
class DetailElement:
    """One element under `<detail>`: tag, attributes, its own text (not its children's)."""

    tag: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    text: str = ""
    children: tuple[DetailElement, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, MappingProxyType):
            object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    def find(self, tag: str) -> DetailElement | None:
        return next((c for c in self.children if c.tag == tag), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedEvent:
    """A CoT event as received; `ce`/`le` as sent (9999999.0 = unknown)."""

    uid: str
    type: str
    how: str | None
    time: datetime
    start: datetime
    stale: datetime
    lat: float
    lon: float
    hae: float
    ce: float
    le: float
    version: str | None = None
    detail: tuple[DetailElement, ...] = ()

    def find(self, tag: str) -> DetailElement | None:
        """The first detail child named `tag`."""
        return next((d for d in self.detail if d.tag == tag), None)

    def findall(self, tag: str) -> tuple[DetailElement, ...]:
        return tuple(d for d in self.detail if d.tag == tag)

    @property
    def callsign(self) -> str | None:
        contact = self.find("contact")
        return None if contact is None else contact.attrs.get("callsign")

    @property
    def remarks(self) -> str | None:
        remarks = self.find("remarks")
        return None if remarks is None else remarks.text

    @property
    def ce_known(self) -> bool:
        return self.ce < UNKNOWN_ERROR


_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parser objects must not be shared between threads; one per thread, built once.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
        _local.parser = parser
    return parser


def _parse_time(value: str | None, name: str) -> datetime:
    if value is None:
        raise CotParseError(f"event has no {name}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CotParseError(f"event {name} {value!r} is not an xs:dateTime") from exc
    if parsed.tzinfo is None:  # CoT times are UTC; some senders leave out the Z
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_number(point: etree._Element, name: str) -> float:
    value = point.get(name)
    if value is None:
        raise CotParseError(f"point has no {name}")
    try:
        number = float(value)
    except ValueError as exc:
        raise CotParseError(f"point {name} {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise CotParseError(f"point {name} {value!r} is not finite")
    return number


def _element(elem: etree._Element) -> DetailElement:
    attrs = MappingProxyType(dict(elem.attrib))
    if not len(elem):  # most CoT detail elements are leaves
        return DetailElement(str(elem.tag), attrs, elem.text or "")
    text = (elem.text or "") + "".join(child.tail or "" for child in elem)
    return DetailElement(str(elem.tag), attrs, text, tuple(_element(child) for child in elem))


def _refuse_dtd(data: bytes) -> None:
    # Checked on the bytes, before libxml2 sees a DTD at all (with resolve_entities=False it still
    # expands internal entities in attribute values, up to its amplification limit). That only
    # works for ASCII-compatible encodings, so UTF-16/32 (which TAK never sends) are refused.
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data:
        raise CotParseError("only UTF-8 CoT is accepted")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise CotParseError("DTDs and entity declarations are not accepted")


def parse_element(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse an XML document with the hardened parser; its root element."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise CotParseError(f"document is {len(raw)} bytes, more than the {max_bytes} accepted")
    _refuse_dtd(raw)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise CotParseError(f"not well-formed XML: {exc}") from exc
    docinfo: Any = root.getroottree().docinfo  # lxml-stubs lack `doctype`
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise CotParseError("DTDs and entity declarations are not accepted")
    return root


def parse_xml(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ParsedEvent:
    """Parse one CoT `<event>` document; refuses DTDs, entities, oversize input, bad fields."""
    return event_from_element(parse_element(data, max_bytes=max_bytes))


def parse_detail_xml(children: str) -> tuple[DetailElement, ...]:
    """Parse the text of `<detail>`'s children (a protobuf `xmlDetail`)."""
    root = parse_element(f"<detail>{children}</detail>")
    return tuple(_element(child) for child in root)


def event_from_element(root: etree._Element) -> ParsedEvent:
    """A ParsedEvent from an already parsed `<event>` element (e.g. from a stream parser)."""
    if root.tag != "event":
        raise CotParseError(f"root element is <{root.tag}>, not <event>")
    uid = root.get("uid")
    cot_type = root.get("type")
    if not uid:
        raise CotParseError("event has no uid")
    if not cot_type:
        raise CotParseError("event has no type")
    point = root.find("point")
    if point is None:
        raise CotParseError("event has no point")
    detail = root.find("detail")
    return ParsedEvent(
        uid=uid,
        type=cot_type,
        how=root.get("how"),
        version=root.get("version"),
        time=_parse_time(root.get("time"), "time"),
        start=_parse_time(root.get("start"), "start"),
        stale=_parse_time(root.get("stale"), "stale"),
        lat=_parse_number(point, "lat"),
        lon=_parse_number(point, "lon"),
        hae=_parse_number(point, "hae"),
        ce=_parse_number(point, "ce"),
        le=_parse_number(point, "le"),
        detail=() if detail is None else tuple(_element(child) for child in detail),
    )
