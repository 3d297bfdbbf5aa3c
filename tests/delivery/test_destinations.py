"""Destination URLs in pytak's form, their options, and the bytes each one is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from copbridge.config import DestinationSettings, Settings
from copbridge.cot import (
    ParsedEvent,
    StreamDeframer,
    mesh_payload,
    parse_protobuf,
    parse_xml,
    to_protobuf,
    to_xml,
)
from copbridge.delivery import DestinationError, configured_destinations, parse_destination
from copbridge.delivery.backoff import Backoff
from copbridge.delivery.encoding import encode, event_body

from .events import detection_event, detection_record


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path"),
    [
        ("tcp://tak.example:8087", "tcp", "tak.example", 8087, ""),
        ("tls://10.0.0.5:8089", "tls", "10.0.0.5", 8089, ""),
        ("udp://239.2.3.1:6969", "udp", "239.2.3.1", 6969, ""),
        ("tcp://[::1]:8087", "tcp", "::1", 8087, ""),
        ("file:///var/log/cot.log", "file", "", 0, "/var/log/cot.log"),
        ("log://stdout", "log", "", 0, "stdout"),
    ],
)
def test_urls_in_pytak_form_are_understood(
    url: str, scheme: str, host: str, port: int, path: str
) -> None:
    d = parse_destination(url)
    assert (d.name, d.scheme, d.host, d.port, d.path) == (url, scheme, host, port, path)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://tak:8087", "scheme"),
        ("tcp://tak", "host and port"),
        ("tcp://tak:99999", "(?i)port"),
        ("log://syslog", "stdout"),
        ("file://relative/path", "absolute"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(DestinationError, match=why):
        parse_destination(url)


def test_multicast_is_recognised_from_the_address() -> None:
    assert parse_destination("udp://239.2.3.1:6969").is_multicast
    assert not parse_destination("udp://127.0.0.1:6969").is_multicast


def test_certificates_need_tls_and_files_speak_xml_only(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="tls"):
        parse_destination(DestinationSettings(url="tcp://tak:8087", ca_file=tmp_path / "ca"))
    with pytest.raises(DestinationError, match="XML"):
        parse_destination(DestinationSettings(url="file:///tmp/x", protocol="protobuf"))


def test_settings_give_destinations_from_a_comma_list_or_tables() -> None:
    listed = Settings(destinations="tcp://a:1, udp://239.2.3.1:6969")
    assert [d.name for d in configured_destinations(listed)] == [
        "tcp://a:1",
        "udp://239.2.3.1:6969",
    ]
    tabled = Settings(destinations=[DestinationSettings(url="tls://b:2", verify_hostname=False)])
    (d,) = configured_destinations(tabled)
    assert (d.scheme, d.verify_hostname) == ("tls", False)
    with pytest.raises(DestinationError, match="twice"):
        configured_destinations(Settings(destinations="tcp://a:1,tcp://a:1"))


def test_streams_get_one_line_per_event_without_declaration() -> None:
    payload = detection_record("x").cot_xml
    assert payload.startswith(b"<?xml")
    line = encode(payload, parse_destination("tcp://tak:8087"))
    assert line.startswith(b"<event")
    assert line.endswith(b"</event>\n")
    assert line.count(b"\n") == 1
    assert parse_xml(line) == parse_xml(payload)
    assert event_body(b'<?xml version="1.0"?>\n<event a="1">\nx</event>') == (
        b'<event a="1">&#10;x</event>'
    )


def test_protobuf_streams_are_length_framed_tak_messages() -> None:
    payload = detection_record("p").cot_xml
    destination = parse_destination(DestinationSettings(url="tcp://tak:8087", protocol="protobuf"))
    (message,) = StreamDeframer().feed(encode(payload, destination))
    got, sent = parse_protobuf(message), parse_xml(payload)
    assert (got.uid, got.type, got.time, got.stale) == (sent.uid, sent.type, sent.time, sent.stale)


def _as_received(event: ParsedEvent) -> tuple[object, ...]:
    detail = sorted((d.tag, sorted(d.attrs.items()), d.text) for d in event.detail)
    head = (event.uid, event.type, event.how, event.time, event.start, event.stale)
    return (*head, event.lat, event.lon, event.hae, event.ce, event.le, detail)


@pytest.mark.parametrize(
    ("sensor", "label", "callsign"),
    [
        ("GeoChat", "person", "RAVEN 7"),  # takproto took any uid with "GeoChat." for a chat
        ("GeoChat", "person\nrunning", "RAVEN\r7"),  # and lost the detail at a line break
        ("uav-7", "\U0001f600 \u043f\u0435\u0448\u0438\u0439", "\U0001f681"),  # emoji, Cyrillic
    ],
    ids=["geochat-uid", "line-breaks", "non-ascii"],
)
def test_a_protobuf_destination_gets_every_detail_the_xml_holds(
    sensor: str, label: str, callsign: str
) -> None:
    image = "https://cop.example/api/v1/detections/d1/image"
    event = detection_event("17", sensor=sensor, label=label, callsign=callsign, image_url=image)
    payload = to_xml(event)
    for url in ("tcp://tak:8087", "udp://239.2.3.1:6969"):
        destination = parse_destination(DestinationSettings(url=url, protocol="protobuf"))
        wire = encode(payload, destination)
        message = mesh_payload(wire) if url.startswith("udp") else StreamDeframer().feed(wire)[0]
        got = parse_protobuf(message)
        assert _as_received(got) == _as_received(parse_xml(payload))
        assert _as_received(got) == _as_received(parse_protobuf(to_protobuf(event)))
        wide = {ch for ch in label + callsign if ord(ch) > 127}
        assert all(ch.encode() in message for ch in wide)  # as UTF-8, not spelt &#128512;


def test_backoff_doubles_with_jitter_up_to_the_ceiling() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.5


def test_an_encrypted_client_key_without_its_password_is_a_clear_error_not_a_prompt(
    tmp_path: Path,
) -> None:
    """With no password, OpenSSL asked for the pass phrase on the terminal, freezing serve's
    event loop (and failed with a bare EINVAL without one)."""
    from cryptography.hazmat.primitives import serialization

    from copbridge.delivery.tls import client_context
    from tests.tls import self_signed

    cert, plain = self_signed(tmp_path)
    key = serialization.load_pem_private_key(plain.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    common: dict[str, Any] = {"ca_file": None, "client_cert": cert, "client_key": encrypted}
    with pytest.raises(ValueError, match="is encrypted: set its password"):
        client_context(**common, client_password=None, verify_hostname=True)
    assert client_context(**common, client_password="s3cret", verify_hostname=True)
