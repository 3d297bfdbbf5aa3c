"""Stored CoT XML into the bytes a destination expects: XML stream, line, datagram or TAK protobuf.

The outbox keeps one XML payload per event; protobuf (TAK Protocol v1) is made at send time, with
the stream (varint length) framing on TCP/TLS and the mesh header on UDP.
"""

from __future__ import annotations

from datetime import datetime

from copbridge.cot import (
    CotParseError,
    mesh_frame,
    ping_event,
    protobuf_from_xml,
    stream_frame,
    to_xml,
)
from copbridge.delivery.destinations import Destination, WireProtocol

_DECLARATION = b"<?xml"


class EncodingError(ValueError):
    """A stored payload that cannot be turned into what the destination speaks."""


def event_body(payload: bytes) -> bytes:
    """The ``<event>`` element alone, on one line: no XML declaration, no line breaks."""
    body = payload.strip()
    if body.startswith(_DECLARATION):
        end = body.find(b"?>")
        body = body[end + 2 :].lstrip() if end >= 0 else body
    # Line breaks can only sit in text or between tags; a character reference keeps the text.
    return body.replace(b"\r\n", b"&#10;").replace(b"\n", b"&#10;")


def _protobuf(payload: bytes) -> bytes:
    try:
        return protobuf_from_xml(payload)
    except (CotParseError, ValueError) as exc:
        raise EncodingError(f"cannot convert CoT XML to TAK protobuf: {exc}") from exc


def encode(payload: bytes, destination: Destination, protocol: WireProtocol | None = None) -> bytes:
    """One stored event as written to ``destination`` (one datagram, or bytes for a stream), in
    ``protocol`` (default: the destination's; a stream speaks what it negotiated)."""
    if (protocol or destination.protocol) == "protobuf":
        proto = _protobuf(payload)
        return mesh_frame(proto) if destination.scheme == "udp" else stream_frame(proto)
    if destination.scheme == "udp":
        return payload  # a datagram is a whole document: keep the declaration
    return event_body(payload) + b"\n"


def ping(destination: Destination, now: datetime, uid: str, protocol: WireProtocol) -> bytes:
    """The TAK keepalive (``t-x-c-t``); TAK servers answer it with ``t-x-c-t-r``."""
    return encode(to_xml(ping_event(now, uid=uid)), destination, protocol)
