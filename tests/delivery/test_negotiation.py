"""A protobuf stream destination speaks protobuf only after the TAK server offered and accepted
it; a server that never offers (taky) or refuses gets XML, so no event is silently dropped.

A real taky (XML only) and a negotiating stand-in (``takp_server.py``: no TAK Server can run
here) on loopback.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from copbridge.config import DestinationSettings
from copbridge.cot import parse_xml
from copbridge.delivery import DeliveryService
from copbridge.delivery.destinations import parse_destination
from copbridge.delivery.negotiation import (
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
    url = f"tcp://127.0.0.1:{server.port}"
    destination = parse_destination(DestinationSettings(url=url, protocol="protobuf"))
    transport = StreamTransport(
        destination, ping_uid="p", expect_answer=False, wake=lambda: None, answer_wait_s=0.5
    )
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
    scanner = ControlScanner()
    found = [
        e for i in range(0, len(stream), 7) for e in scanner.feed(stream[i : i + 7], b"t-x-takp-")
    ]
    assert len(found) == 1
    parsed = parse_offer(found[0])
    assert (parsed.uid, parsed.versions) == (OFFER_UID, frozenset({1}))


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
