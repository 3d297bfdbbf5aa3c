"""UDP (unicast and multicast, XML and TAK protobuf) and file destinations receive the events."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from copbridge.config import DestinationSettings
from copbridge.cot import mesh_payload, parse_protobuf, parse_xml
from copbridge.delivery import DeliveryService, LinkState
from copbridge.store import SqlStore

from .conftest import make_settings, poll_until, running
from .events import detection_record, queue, uid_of

pytestmark = pytest.mark.timeout(30)

MESH_GROUP = "239.2.3.1"


def _udp_listener(group: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if group is None:
        sock.bind(("127.0.0.1", 0))
    else:
        sock.bind((group, 0))
        membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.settimeout(5)
    return sock


async def _receive(sock: socket.socket, count: int) -> list[bytes]:
    return [(await asyncio.to_thread(sock.recvfrom, 65536))[0] for _ in range(count)]


async def test_udp_unicast_gets_one_xml_document_per_datagram(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    with _udp_listener() as sock:
        url = f"udp://127.0.0.1:{sock.getsockname()[1]}"
        records = [detection_record(f"u{i}") for i in range(3)]
        async with running(
            DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
        ):
            queue(sqlite_store, [url], records)
            datagrams = await _receive(sock, 3)
    assert sorted(parse_xml(d).uid for d in datagrams) == sorted(uid_of(r) for r in records)


async def test_udp_multicast_mesh_gets_tak_protobuf(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    try:
        sock = _udp_listener(MESH_GROUP)
    except OSError as exc:  # pragma: no cover - a host without any multicast route
        pytest.skip(f"no multicast on this host: {exc}")
    with sock:
        url = f"udp://{MESH_GROUP}:{sock.getsockname()[1]}"
        destination = DestinationSettings(url=url, protocol="protobuf")
        record = detection_record("mesh")
        settings = make_settings(sqlite_url, destinations=[destination])
        async with running(DeliveryService(settings, sqlite_store)):
            queue(sqlite_store, [url], [record])
            (datagram,) = await _receive(sock, 1)
    event = parse_protobuf(mesh_payload(datagram))
    sent = parse_xml(record.cot_xml)
    assert (event.uid, event.type, event.time, event.stale) == (
        sent.uid,
        sent.type,
        sent.time,
        sent.stale,
    )
    assert event.lat == pytest.approx(sent.lat)
    assert event.callsign == sent.callsign


async def test_file_destination_appends_one_event_per_line(
    tmp_path: Path, sqlite_store: SqlStore, sqlite_url: str
) -> None:
    path = tmp_path / "out" / "events.cot"
    url = f"file://{path}"
    records = [detection_record(f"f{i}") for i in range(4)]
    async with running(
        DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
    ) as service:
        queue(sqlite_store, [url], records)
        service.notify()
        await poll_until(lambda: path.exists() and len(path.read_bytes().splitlines()) >= 4, 10)
    lines = path.read_bytes().splitlines()
    assert [parse_xml(line).uid for line in lines] == [uid_of(r) for r in records]
    assert all(line.startswith(b"<event") for line in lines)


_FULL_DISK = """
import asyncio, resource, signal, sys
from copbridge.delivery.destinations import parse_destination
from copbridge.delivery.local import FileTransport
from copbridge.delivery.transports import LinkError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

async def main() -> None:
    transport = FileTransport(parse_destination("file://" + sys.argv[1]))
    await transport.open()
    await transport.send([b"<a/>\\n"])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8, hard))  # the disk fills 3 bytes on
    try:
        await transport.send([b"<bb/>\\n", b"<cc/>\\n"])
    except LinkError as exc:
        print("refused:", exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again: the retry
    await transport.send([b"<bb/>\\n", b"<cc/>\\n"])
    await transport.close()

asyncio.run(main())
"""


def test_a_batch_cut_short_by_a_full_disk_leaves_no_half_event_in_the_file(
    tmp_path: Path,
) -> None:
    # In its own process: the file size limit that stands for the full disk is per process.
    path = tmp_path / "events.cot"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout
    assert path.read_bytes() == b"<a/>\n<bb/>\n<cc/>\n"


async def test_udp_unicast_nobody_listening_is_a_failed_link_and_resent_once_someone_does(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now: the kernel answers "port unreachable"
    url = f"udp://127.0.0.1:{port}"
    records = [detection_record(f"late-rx{i}") for i in range(3)]
    async with running(
        DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
    ) as service:
        queue(sqlite_store, [url], records)
        service.notify()
        failing = {LinkState.BACKING_OFF, LinkState.FAILING}
        await poll_until(lambda: service.snapshot()[0].state in failing, 10)
        with _udp_listener_on(port) as sock:
            datagrams = await _receive(sock, 3)
    assert sorted(parse_xml(d).uid for d in datagrams) == sorted(uid_of(r) for r in records)


def _udp_listener_on(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


async def test_a_file_destination_that_is_not_a_regular_file_still_takes_events(
    sqlite_store: SqlStore, sqlite_url: str
) -> None:
    # /dev/null (or a FIFO read by another tool) can be neither fsynced nor cut back.
    url = "file:///dev/null"
    records = [detection_record(f"null{i}") for i in range(3)]
    async with running(
        DeliveryService(make_settings(sqlite_url, destinations=url), sqlite_store)
    ) as service:
        queue(sqlite_store, [url], records)
        service.notify()
        await poll_until(lambda: sqlite_store.outbox_stats([url])[0].sent == 3, 10)
        # The link's view shows it under the contract's name too (it had only "sent").
        await poll_until(lambda: service.snapshot()[0].delivered == 3, 10)
