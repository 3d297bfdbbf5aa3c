"""TAK protocol negotiation on a stream: XML until the server offers version 1 and accepts it.

A streaming connection starts in CoT XML. A server that speaks TAK protocol sends an offer
(``t-x-takp-v``, ``<TakControl><TakProtocolSupport version="1"/>``); the client may then send a
request (``t-x-takp-q``, ``<TakRequest version="1"/>``, the offer's uid) and nothing more until
the answer (``t-x-takp-r``, ``<TakResponse status="true"/>``); after a "true" both sides speak
protobuf stream frames. A server that never offers (taky, older servers) reads XML only: sending
it protobuf frames would have every event dropped while the link looks healthy.
See ``commoncommo/core/impl/protobuf/protocol.txt`` ("Streaming Connection Protocol
Negotiation") in the ATAK sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from lxml import etree

from copbridge.cot import CotParseError, escape_attr, format_time, has_forbidden, parse_element

OFFER = b"t-x-takp-v"
ANSWER = b"t-x-takp-r"
VERSION = 1
"""The TAK protocol version we speak (protobuf ``TakMessage`` payloads)."""
ANSWER_WAIT_S = 60.0
"""How long the client waits for the answer to its request: at least a minute, says the spec;
with none the negotiation is in an unknown state and the client must disconnect."""
_MAX_CONTROL_BYTES = 64 * 1024
"""Control events are a few hundred bytes; what the server sends before them is not kept."""
_END = re.compile(rb"</event\s*>")
"""An event's end tag; XML allows white space before its ``>``."""


class NegotiationError(ValueError):
    """A control event that cannot be understood (it is then taken as no offer, no answer)."""


@dataclass(frozen=True, slots=True)
class Offer:
    uid: str
    versions: frozenset[int]


def _control(data: bytes, kind: bytes) -> tuple[str, etree._Element]:
    """The uid and the ``TakControl`` element of one control event of ``kind``."""
    start = data.rfind(b"<event")  # what came before in the same piece is another event
    if start < 0:
        raise NegotiationError("no <event> element")
    try:
        root = parse_element(data[start:], max_bytes=_MAX_CONTROL_BYTES)
    except CotParseError as exc:
        raise NegotiationError(str(exc)) from exc
    if root.tag != "event" or root.get("type") != kind.decode():
        raise NegotiationError(f"not a {kind.decode()} event")
    uid = root.get("uid") or ""
    if not uid or has_forbidden(uid) or len(uid) > 256:
        raise NegotiationError("the control event has no usable uid")
    control = root.find("detail/TakControl")
    if control is None:
        raise NegotiationError("the control event has no <TakControl>")
    return uid, control


def parse_offer(data: bytes) -> Offer:
    """The server's ``t-x-takp-v``: its uid and the versions it supports."""
    uid, control = _control(data, OFFER)
    versions: set[int] = set()
    for support in control.iterfind("TakProtocolSupport"):
        text = (support.get("version") or "").strip()
        if text.isdigit():
            versions.add(int(text))
    return Offer(uid, frozenset(versions))


def parse_answer(data: bytes) -> bool:
    """The server's ``t-x-takp-r``: True when it accepted the request."""
    _, control = _control(data, ANSWER)
    response = control.find("TakResponse")
    if response is None:
        raise NegotiationError("the answer has no <TakResponse>")
    return bool((response.get("status") or "").strip().lower() == "true")


def request(offer: Offer, now: datetime) -> bytes:
    """Our ``t-x-takp-q`` for version 1, re-using the offer's uid as the spec asks."""
    stamp, stale = format_time(now), format_time(now + timedelta(minutes=1))
    return (
        f'<event version="2.0" uid="{escape_attr(offer.uid)}" type="t-x-takp-q" how="m-g" '
        f'time="{stamp}" start="{stamp}" stale="{stale}">'
        '<point lat="0.0" lon="0.0" hae="0.0" ce="999999" le="999999"/>'
        f'<detail><TakControl><TakRequest version="{VERSION}"/></TakControl></detail></event>'
    ).encode()


def is_control(event: bytes, kind: bytes) -> bool:
    """Whether an event is of the control type ``kind`` (its ``type`` attribute, not a text
    that merely quotes it, e.g. a chat message)."""
    return re.search(rb"""\stype\s*=\s*["']""" + re.escape(kind) + rb"""["']""", event) is not None


class ControlScanner:
    """Finds the control events of the kind awaited (``kind``, which the negotiation moves on
    from the offer to the answer) in what an XML-speaking server sends, chunk by chunk;
    everything else is passed over, and no more than 64 kB of a partial event is held."""

    def __init__(self, kind: bytes) -> None:
        self.kind = kind
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        window = self._tail + chunk
        found: list[bytes] = []
        begin = 0
        while (end := _END.search(window, begin)) is not None:
            event = window[begin : end.end()]
            if is_control(event, self.kind):
                found.append(event)
            begin = end.end()
        self._tail = window[begin:][-_MAX_CONTROL_BYTES:]
        return found
