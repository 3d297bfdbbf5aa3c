"""Benchmark delivery against pytak in one run: drain a backlog of N events to taky.

copbridge drains a durable outbox (claim under lease, write, drain, mark sent in the store);
pytak writes the same events from an in-memory queue, one write + drain per event as it does.
Both go to the same taky; a client connected to taky counts arrivals for both.
Run: .venv/bin/python bench/bench_delivery.py [N]   (default 100000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytak

from copbridge.config import DestinationSettings, Settings
from copbridge.cot import build_detection_event, to_xml
from copbridge.delivery import DeliveryService
from copbridge.store import DetectionRecord, QueuedEvent, SqlStore, open_store

HOST = "127.0.0.1"
BATCH = 1000
TAKY_CONF = """\
[taky]
hostname = localhost
node_id = COPBRIDGE-BENCH
bind_ip = {host}
root_dir = {root}

[cot_server]
port = {port}
# taky's in-memory persistence prunes its whole table on every event (quadratic over a 100k
# backlog); a TTL cap of 0 turns it off. Routing is unchanged, for both senders alike.
max_persist_ttl = 0

[ssl]
enabled = false
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start_taky(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    (root / "taky.conf").write_text(TAKY_CONF.format(host=HOST, root=root, port=port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "taky.cot", "-c", "taky.conf", "-l", "warning"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("taky did not start")


class Receiver:
    """A TAK client of taky that counts arriving events whose uid carries the current tag."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), 5)
        self.count = 0
        self.last = 0.0
        self.tag = b"\x00"
        self._stop = False
        now = datetime.now(UTC)
        ping = to_xml(
            build_detection_event(
                now=now,
                detection_id="rx",
                detection_time=now,
                sensor_id="bench-rx",
                label="person",
                confidence=1,
                lat=0,
                lon=0,
                hae=0,
                ce90=None,
                le90=None,
            )
        )
        self.sock.sendall(ping)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def expect(self, tag: bytes) -> None:
        self.tag, self.count, self.last = tag, 0, 0.0

    def _run(self) -> None:
        tail = b""
        self.sock.settimeout(0.5)
        while not self._stop:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            data = tail + chunk
            found = data.count(self.tag)
            if found:
                self.count += found
                self.last = time.perf_counter()
            tail = data[-len(self.tag) :]

    def wait(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count} of {n} events arrived in {timeout} s")
            time.sleep(0.02)
        return self.last

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _payloads(n: int, tag: str) -> list[tuple[str, bytes, int, int]]:
    now = datetime.now(UTC)
    template = to_xml(
        build_detection_event(
            now=now,
            detection_id="TEMPLATE",
            detection_time=now - timedelta(milliseconds=50),
            sensor_id="uav-7",
            label="person",
            confidence=0.9,
            lat=41.1383,
            lon=-104.7855,
            hae=1839.6,
            ce90=23.5,
            le90=16.4,
            track_id="TRACK",
        )
    )
    t_us = int(now.timestamp() * 1e6)
    out = []
    for i in range(n):
        track = f"{tag}{i:07d}"
        payload = template.replace(b"TRACK", track.encode())
        out.append((f"copbridge.uav-7.{track}", payload, t_us, t_us + 3600 * 1_000_000))
    return out


def _fill(store: SqlStore, url: str, events: list[tuple[str, bytes, int, int]]) -> None:
    for start in range(0, len(events), BATCH):
        records = [
            DetectionRecord(
                id=uid,
                body_hash=hashlib.sha256(uid.encode()).hexdigest(),
                time_us=t,
                received_us=t,
                sensor_id="uav-7",
                label="person",
                detection_json="{}",
                answer={},
                cot_xml=payload,
                events=(QueuedEvent(uid, "a-u-G", "detection", t, stale, payload),),
            )
            for uid, payload, t, stale in events[start : start + BATCH]
        ]
        store.accept_detections(records, [url])


async def _ours(
    store: SqlStore, database: str, url: str, n: int, receiver: Receiver
) -> tuple[float, float, float]:
    settings = Settings(
        database_url=database,
        destinations=[DestinationSettings(url=url, batch_size=BATCH)],
        feed="off",
    )
    service = DeliveryService(settings, store)
    start = time.perf_counter()
    await service.start()
    courier = service.couriers[0]
    while courier.sent < n:  # noqa: ASYNC110 - a counter, polled as pytak's queue is below
        await asyncio.sleep(0.01)
    drained = time.perf_counter()
    arrived = await asyncio.to_thread(receiver.wait, n, 300)
    await service.stop()
    return start, drained, arrived


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def _pytak(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    url: str,
    payloads: list[bytes],
    receiver: Receiver,
) -> tuple[float, float, float]:
    reader, writer = connection
    # read what taky sends (other clients' events), or closing would reset the link
    discard = asyncio.create_task(_discard(reader))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    worker = pytak.TXWorker(queue, {"COT_URL": url}, writer)
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while not queue.empty():  # noqa: ASYNC110 - pytak offers no event for an empty queue
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # the last get() is being written
    await writer.drain()
    drained = time.perf_counter()
    arrived = await asyncio.to_thread(receiver.wait, len(payloads), 300)
    for running in (task, discard):
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    writer.close()
    return start, drained, arrived


async def _compare(
    store: SqlStore,
    database: str,
    url: str,
    n: int,
    events: list[tuple[str, bytes, int, int]],
    receiver: Receiver,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    # One sender at a time, so taky routes each event to the receiving client alone.
    receiver.expect(b"copbridge.uav-7.ours")
    ours = await _ours(store, database, url, n, receiver)
    host, port = url.removeprefix("tcp://").split(":")
    connection = await asyncio.open_connection(host, int(port))
    receiver.expect(b"copbridge.uav-7.ours")
    payloads = [payload for _, payload, _, _ in events]
    theirs = await _pytak(connection, url, payloads, receiver)
    return ours, theirs


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        root = Path(tmp)
        taky, port = _start_taky(root)
        receiver = Receiver(port)
        try:
            url = f"tcp://{HOST}:{port}"
            database = f"sqlite:///{root / 'copbridge.db'}"
            store = open_store(database)
            store.upgrade()
            events = _payloads(n, "ours")
            t0 = time.perf_counter()
            _fill(store, url, events)
            print(f"queued {n} events in the outbox in {time.perf_counter() - t0:.1f} s")
            (start, drained, arrived), (p_start, p_drained, p_arrived) = asyncio.run(
                _compare(store, database, url, n, events, receiver)
            )
            store.close()
            ours_drain = n / (drained - start)
            ours_arrive = n / (arrived - start)
            print(
                f"copbridge: drained and marked sent {n} in {drained - start:.2f} s "
                f"({ours_drain:,.0f}/s); all arrived at a taky client after "
                f"{arrived - start:.2f} s ({ours_arrive:,.0f}/s)"
            )
            pytak_drain = n / (p_drained - p_start)
            pytak_arrive = n / (p_arrived - p_start)
            print(
                f"pytak:     drained {n} in {p_drained - p_start:.2f} s ({pytak_drain:,.0f}/s); "
                f"all arrived at a taky client after {p_arrived - p_start:.2f} s "
                f"({pytak_arrive:,.0f}/s)"
            )
            print(
                f"ratio copbridge/pytak: arrival {ours_arrive / pytak_arrive:.2f}, "
                f"drain {ours_drain / pytak_drain:.2f} "
                "(target >= 1.0; copbridge durable in the store, pytak in memory)"
            )
        finally:
            receiver.close()
            taky.terminate()
            try:
                taky.wait(5)
            except subprocess.TimeoutExpired:
                taky.kill()


if __name__ == "__main__":
    main()
