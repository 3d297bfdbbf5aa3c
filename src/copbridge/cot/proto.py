"""TAK Protocol version 1 payloads: our events as TakMessage protobufs, and back.

Uses takproto's classes, generated from the official TAK .proto files. Contact, precision
location and track go in their typed fields; every other detail element goes in `xmlDetail`.
"""

from __future__ import annotations

import importlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from takproto.proto import TakMessage

from copbridge.cot.event import UNKNOWN_ERROR, CotEvent, DetectionEvent, PlatformEvent
from copbridge.cot.text import clean_text
from copbridge.cot.xml import (
    CotParseError,
    DetailElement,
    ParsedEvent,
    detail_xml,
    event_from_element,
    format_decimal,
    parse_detail_xml,
    parse_element,
)

# Looked up at run time: protobuf ships no type stubs and pyproject does not add types-protobuf.
_DecodeError: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_millis(value: datetime) -> int:
    """Milliseconds since the Unix epoch, as TAK protobuf times are."""
    return (value - _EPOCH) // _MS


def from_millis(value: int) -> datetime:
    return _EPOCH + value * _MS


def to_protobuf(event: CotEvent) -> bytes:
    """The event as a serialised TakMessage (no framing; see `copbridge.cot.framing`)."""
    message: Any = TakMessage()
    cot = message.cotEvent
    cot.type = event.type
    cot.uid = clean_text(event.uid)
    cot.how = event.how
    cot.sendTime = to_millis(event.time)
    cot.startTime = to_millis(event.start)
    cot.staleTime = to_millis(event.stale)
    if isinstance(event, DetectionEvent | PlatformEvent):
        cot.lat = event.lat
        cot.lon = event.lon
        cot.hae = event.hae
        cot.ce = UNKNOWN_ERROR if event.ce is None else event.ce
        cot.le = UNKNOWN_ERROR if event.le is None else event.le
        detail = cot.detail
        detail.xmlDetail = detail_xml(event, typed=False)
        detail.contact.callsign = clean_text(event.callsign)
        if event.course is not None and event.speed is not None:
            detail.track.course = event.course
            detail.track.speed = event.speed
        if isinstance(event, DetectionEvent):
            if event.geopoint_source is not None:
                detail.precisionLocation.geopointsrc = clean_text(event.geopoint_source)
            if event.alt_source is not None:
                detail.precisionLocation.altsrc = clean_text(event.alt_source)
    else:
        cot.lat = cot.lon = cot.hae = 0.0
        cot.ce = cot.le = UNKNOWN_ERROR
    data: bytes = message.SerializeToString()
    return data


_TYPED_XML: dict[str, tuple[str, dict[str, type[str] | type[float]]]] = {
    "contact": ("contact", {"callsign": str, "endpoint": str}),
    "precisionlocation": ("precisionLocation", {"geopointsrc": str, "altsrc": str}),
    "track": ("track", {"course": float, "speed": float}),
}
"""Detail elements TakMessage carries in typed fields: its field and the attributes it holds."""


def protobuf_from_xml(payload: bytes) -> bytes:
    """A CoT XML document (ours, as stored) as a serialised TakMessage.

    Written here rather than with takproto's ``xml2message``, which takes any uid holding
    "GeoChat." for a chat message (a sensor may be called GeoChat): it then copied the detail
    with a pattern that stops at a line break, losing the remarks and links. Each detail element
    TakMessage has a typed field for goes there, the rest is serialised as it stands (non-ASCII
    text kept, a carriage return as ``&#13;``) into ``xmlDetail``."""
    root = parse_element(payload)
    event = event_from_element(root)
    message: Any = TakMessage()
    cot = message.cotEvent
    cot.type = event.type
    cot.uid = event.uid
    cot.how = event.how or ""
    cot.sendTime = to_millis(event.time)
    cot.startTime = to_millis(event.start)
    cot.staleTime = to_millis(event.stale)
    cot.lat, cot.lon, cot.hae = event.lat, event.lon, event.hae
    cot.ce, cot.le = event.ce, event.le
    detail = root.find("detail")
    if detail is None:
        return bytes(message.SerializeToString())
    rest: list[str] = []
    for child in detail:
        if not isinstance(child.tag, str):
            continue  # a comment or processing instruction: not CoT
        typed = _TYPED_XML.get(child.tag)
        attrs = {str(k): str(v) for k, v in child.attrib.items()}
        if (
            typed is not None
            and not len(child)
            and not (child.text or "").strip()
            and set(attrs) <= set(typed[1])
            and not cot.detail.HasField(typed[0])
        ):
            target = getattr(cot.detail, typed[0])
            try:
                for name, value in attrs.items():
                    setattr(target, name, typed[1][name](value))
            except ValueError as exc:
                raise CotParseError(f"<{child.tag}> {exc}") from None
            continue
        rest.append(etree.tostring(child, encoding="unicode", with_tail=False))
    if rest:
        cot.detail.xmlDetail = "".join(rest)
    return bytes(message.SerializeToString())


def _typed_detail(detail: Any) -> list[DetailElement]:
    """TakMessage typed detail fields back into the XML elements they stand for."""
    out = []
    # The typed sub-messages' fields, named as the XML attributes they replace.
    for field, tag, attrs in (
        ("contact", "contact", ("endpoint", "callsign")),
        ("group", "__group", ("name", "role")),
        ("precisionLocation", "precisionlocation", ("geopointsrc", "altsrc")),
        ("status", "status", ("battery",)),
        ("takv", "takv", ("device", "platform", "os", "version")),
    ):
        if detail.HasField(field):
            sub = getattr(detail, field)
            values = {a: str(getattr(sub, a)) for a in attrs if getattr(sub, a)}
            out.append(DetailElement(tag, values))
    if detail.HasField("track"):
        track = detail.track
        if not (math.isfinite(track.course) and math.isfinite(track.speed)):
            raise CotParseError("TakMessage track is not finite")
        out.append(
            DetailElement(
                "track",
                {"course": format_decimal(track.course), "speed": format_decimal(track.speed)},
            )
        )
    return out


def parse_protobuf(payload: bytes) -> ParsedEvent:
    """Parse a serialised TakMessage (unframed) into the same shape as `parse_xml` gives."""
    message: Any = TakMessage()
    try:
        message.ParseFromString(payload)
    except _DecodeError as exc:
        raise CotParseError(f"not a TakMessage: {exc}") from exc
    if not message.HasField("cotEvent"):
        raise CotParseError("TakMessage has no cotEvent")
    cot = message.cotEvent
    if not cot.uid or not cot.type:
        raise CotParseError("TakMessage event has no uid or type")
    for name in ("lat", "lon", "hae", "ce", "le"):
        if not math.isfinite(getattr(cot, name)):
            raise CotParseError(f"TakMessage event {name} is not finite")
    details: list[DetailElement] = []
    if cot.HasField("detail"):
        details.extend(_typed_detail(cot.detail))
        if cot.detail.xmlDetail:
            details.extend(parse_detail_xml(cot.detail.xmlDetail))
    return ParsedEvent(
        uid=cot.uid,
        type=cot.type,
        how=cot.how or None,
        time=from_millis(cot.sendTime),
        start=from_millis(cot.startTime),
        stale=from_millis(cot.staleTime),
        lat=cot.lat,
        lon=cot.lon,
        hae=cot.hae,
        ce=cot.ce,
        le=cot.le,
        version="2.0",
        detail=tuple(details),
    )
