"""A protobuf stream destination speaks protobuf only after the TAK server offered and accepted
it; a server that never offers (taky) or refuses gets XML, so no event is silently dropped.

A real taky (XML only) and a negotiating stand-in (``takp_server.py``: no TAK Server can run
here) on loopback.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from copbridge.config import DestinationSettings, Settings
from copbridge.cot import parse_xml
from copbridge.delivery import DeliveryService
from copbridge.delivery.destinations import (
    DestinationError,
    configured_destinations,
    parse_destination,
)
from copbridge.delivery.negotiation import (
    ANSWER_WAIT_S,
    ControlScanner,
    NegotiationError,
    parse_answer,
    parse_offer,
    request,
)
from copbridge.delivery.stream import StreamTransport
from copbridge.delivery.transports import LinkError
from copbridge.store import SqlStore
from tests.cot.schemas import CotSchemas

from .conftest import make_settings, running, taky_destination
from .events import detection_record, has_uid, queue, uid_of
from .takp_server import OFFER_UID, Answer, TakProtocolServer, control_event
from .taky import Taky

pytestmark = pytest.mark.timeout(60)


async def _deliver_one(
    server: TakProtocolServer, sqlite_store: SqlStore, sqlite_url: str, name: str, **options: object
) -> None:
    url = f"tcp://127.0.0.1:{server.port}"
    destination = {"url": url, "protocol": "protobuf", "keepalive_s": 2.0, **options}
    settings = make_settings(sqlite_url, destinations=[destination])
    async with running(DeliveryService(settings, sqlite_store)) as service:
        record = detection_record(name)
        queue(sqlite_store, [url], [record])
        service.notify()
        await server.wait_for(uid_of(record), 20)


@pytest.mark.parametrize(("answer", "wire"), [("accept", "protobuf"), ("refuse", "xml")])
async def test_protobuf_once_the_server_accepts_it_and_xml_when_it_refuses(
    answer: Answer, wire: str, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    server = TakProtocolServer(answer=answer)
    await server.start()
    try:
        await _deliver_one(server, sqlite_store, sqlite_url, f"negotiated-{answer}")
        assert {got.wire for got in server.received} == {wire}
        [asked] = server.requests  # one request, with the offer's uid and our version
        parsed = parse_xml(asked)
        assert (parsed.uid, parsed.type) == (OFFER_UID, "t-x-takp-q")
        assert b'<TakRequest version="1"/>' in asked
        CotSchemas().assert_valid(asked)
    finally:
        await server.stop()


@pytest.mark.parametrize("offer", ["none", "version 2 only"])
async def test_a_server_that_offers_no_version_1_gets_xml_and_no_request(
    offer: str, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    server = TakProtocolServer(offer=offer != "none", versions=(2,))
    await server.start()
    try:
        await _deliver_one(server, sqlite_store, sqlite_url, "no-offer", offer_wait_s=0.3)
        assert {got.wire for got in server.received} == {"xml"}
        assert server.requests == []
    finally:
        await server.stop()


async def test_a_request_never_answered_ends_the_link_before_anything_is_sent() -> None:
    """The spec: after the request the client sends nothing until the answer; without one in
    its wait the negotiation is in an unknown state and the client disconnects."""
    server = TakProtocolServer(answer="never")
    await server.start()
    transport = _protobuf_stream(server.port, answer_wait_s=0.5)
    try:
        with pytest.raises(LinkError, match="no answer to the TAK protocol request"):
            await transport.open()
        assert len(server.requests) == 1
        assert server.received == []
    finally:
        await transport.close()
        await server.stop()


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_a_protobuf_destination_on_taky_is_delivered_as_xml(
    scheme: str, request: pytest.FixtureRequest, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    """taky reads XML only and never offers TAK protocol: protobuf frames would be dropped."""
    taky: Taky = request.getfixturevalue(f"taky_{scheme}")
    receiver = taky.client()
    receiver.registered("rx", datetime.now(UTC))
    destination = taky_destination(taky, protocol="protobuf", offer_wait_s=0.3)
    settings = make_settings(sqlite_url, destinations=[destination])
    try:
        async with running(DeliveryService(settings, sqlite_store)) as service:
            record = detection_record("protobuf-on-taky")
            queue(sqlite_store, [destination.url], [record])
            service.notify()
            await asyncio.to_thread(receiver.wait_for, has_uid(uid_of(record)), 15)
    finally:
        receiver.close()


def test_control_events_are_found_across_chunks_and_among_other_events() -> None:
    offer = control_event("t-x-takp-v", '<TakProtocolSupport version="1"/>')
    other = b'<event uid="x" type="a-f-G"><point/></event>'
    stream = other + offer + other
    scanner = ControlScanner(b"t-x-takp-v")
    found = [e for i in range(0, len(stream), 7) for e in scanner.feed(stream[i : i + 7])]
    assert len(found) == 1
    parsed = parse_offer(found[0])
    assert (parsed.uid, parsed.versions) == (OFFER_UID, frozenset({1}))


def test_an_end_tag_with_white_space_before_its_bracket_ends_the_event() -> None:
    # XML allows "</event >"; such an offer was held as a partial event and never seen
    offer = control_event("t-x-takp-v", '<TakProtocolSupport version="1"/>')
    spaced = offer.replace(b"</event>", b"</event\n >")
    scanner = ControlScanner(b"t-x-takp-v")
    found = [e for i in range(0, len(spaced), 5) for e in scanner.feed(spaced[i : i + 5])]
    assert [parse_offer(e).versions for e in found] == [frozenset({1})]


def test_a_garbled_or_hostile_control_event_is_refused_with_a_reason() -> None:
    with pytest.raises(NegotiationError, match="TakControl"):
        parse_offer(control_event("t-x-takp-v", "").replace(b"<TakControl></TakControl>", b""))
    with pytest.raises(NegotiationError, match="uid"):
        parse_offer(control_event("t-x-takp-v", "").replace(OFFER_UID.encode(), b""))
    with pytest.raises(NegotiationError, match="well-formed"):  # the DTD is never read
        parse_offer(b'<!DOCTYPE e [<!ENTITY x "y">]><event uid="&x;" type="t-x-takp-v"/>')
    with pytest.raises(NegotiationError, match="TakResponse"):
        parse_answer(control_event("t-x-takp-r", ""))
    assert parse_answer(control_event("t-x-takp-r", '<TakResponse status="false"/>')) is False
    assert parse_answer(control_event("t-x-takp-r", '<TakResponse status="true"/>')) is True


def test_the_request_escapes_the_uid_the_server_chose() -> None:
    offer = parse_offer(control_event("t-x-takp-v", "").replace(OFFER_UID.encode(), b"a&amp;b"))
    asked = request(offer, datetime.now(UTC))
    assert parse_xml(asked).uid == "a&b"


async def test_a_server_repeating_control_events_cannot_make_the_client_hold_them() -> None:
    """Every control event seen while negotiating was kept until the wait ended: a server
    repeating its offer made the client hold about 70 MB in 3 s (a minute's wait: gigabytes)."""
    offer = control_event("t-x-takp-v", '<TakProtocolSupport version="1"/>')
    flood = offer * 500  # ~200 kB
    flooded = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal flooded
        writer.write(b'<event uid="before" type="a-f-G"/>' + offer)  # a self-closing one first
        if not await _request_read(reader):
            return  # the client gave up: nothing to flood
        while flooded < 40_000_000:
            writer.write(flood)
            await writer.drain()
            flooded += len(flood)
        writer.write(control_event("t-x-takp-r", '<TakResponse status="true"/>'))
        await writer.drain()
        await reader.read()  # until the client closes

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = _protobuf_stream(port)
    tracemalloc.start()
    try:
        await asyncio.wait_for(transport.open(), 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await transport.close()
        server.close()
    assert transport.protocol == "protobuf"
    assert flooded >= 40_000_000
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB held while {flooded / 1e6:.0f} MB came in"


def test_one_server_with_two_client_certificates_is_two_destinations_the_same_twice_is_not(
    tmp_path: Path,
) -> None:
    """TAK Server puts a client in groups by its certificate: one server, two identities."""
    a, b = tmp_path / "a.p12", tmp_path / "b.p12"
    two = [
        DestinationSettings(url="tls://tak:8089", client_cert=a),
        DestinationSettings(url="tls://TAK:8089/", client_cert=b),
    ]
    assert len(configured_destinations(Settings(destinations=two))) == 2
    same = [two[0], two[1].model_copy(update={"client_cert": a})]
    with pytest.raises(DestinationError, match="configured twice"):
        configured_destinations(Settings(destinations=same))
    # One URL is one outbox key: two entries under it would share one queue and one state.
    one_url = [two[0], two[1].model_copy(update={"url": "tls://tak:8089"})]
    with pytest.raises(DestinationError, match="URL is configured twice"):
        configured_destinations(Settings(destinations=one_url))


def test_offer_wait_must_be_positive() -> None:
    """0 decided "no offer" before the reader had run once, even for a server offering at
    once, and logged that the server offered none."""
    with pytest.raises(ValidationError, match="offer_wait_s"):
        DestinationSettings(url="tcp://tak:8087", protocol="protobuf", offer_wait_s=0)


async def test_an_event_quoting_the_offer_s_type_does_not_hide_the_offer_after_it() -> None:
    """The first event holding the text "t-x-takp-v" was taken as the offer: a chat message
    quoting it, sent before the real offer, left the link on XML."""
    chat = b'<event uid="chat" type="b-t-f"><detail><remarks>t-x-takp-v</remarks></detail></event>'
    offer = control_event("t-x-takp-v", '<TakProtocolSupport version="1"/>')

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(chat + offer)
        if not await _request_read(reader):
            return
        writer.write(control_event("t-x-takp-r", '<TakResponse status="true"/>'))
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = _protobuf_stream(port)
    try:
        await asyncio.wait_for(transport.open(), 10)
        assert transport.protocol == "protobuf"
    finally:
        await transport.close()
        server.close()


def _protobuf_stream(port: int, answer_wait_s: float = ANSWER_WAIT_S) -> StreamTransport:
    """A protobuf stream to a server of the test's own on loopback (not opened yet)."""
    url = f"tcp://127.0.0.1:{port}"
    destination = parse_destination(DestinationSettings(url=url, protocol="protobuf"))
    return StreamTransport(
        destination,
        ping_uid="p",
        expect_answer=False,
        wake=lambda: None,
        answer_wait_s=answer_wait_s,
    )


async def _request_read(reader: asyncio.StreamReader) -> bool:
    """Read until the client's TAK protocol request; False if the client closed first."""
    while b"t-x-takp-q" not in (chunk := await reader.read(1 << 16)):
        if not chunk:
            return False
    return True
