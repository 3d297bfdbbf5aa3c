"""Real peers for the drills: a receiving TAK client, a load of detections, the fault proxy in a
thread, RSS sampling and a fresh PostgreSQL database — each with bounded waits and a teardown.

Everything here is synchronous from the caller's side (threads inside), so a drill reads as a
plain sequence: start, load, break something, heal it, wait, compare the sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from copbridge.cot import ping_event, to_xml
from tests.api.conftest import example
from tests.conftest import ADMIN_HEADERS, PG_ADMIN_URL
from tests.delivery.proxy import FaultProxy

_T = TypeVar("_T")
_HEAD = re.compile(rb'<event\b[^>]*?\buid="([^"]+)"[^>]*?\bstart="([^"]+)"')


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:g} s")
        time.sleep(0.05)


def detection_now(detection_id: str, sensor: str) -> dict[str, Any]:
    """The contract's example, taken now, untracked (so its uid is its own), by ``sensor``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = example(id=detection_id, time=now, track_id=None)
    body["sensor"] = {**body["sensor"], "id": sensor}
    return body


class Receiver:
    """A TAK client connected to taky that records every event it gets as ``(uid, start)``."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.address = (host, port)
        self.tls = tls
        self.events: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pong = threading.Event()

    def connect(self, seconds: float = 15) -> None:
        """Connect and wait until taky answers a ping: from then on it routes events to us."""
        self.close()
        self._pong.clear()
        sock = socket.create_connection(self.address, 5)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname="localhost")
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, args=(sock,), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + seconds
        while not self._pong.wait(0.5):
            if time.monotonic() > deadline:
                raise TimeoutError("taky did not answer the receiver's ping")
            sock.sendall(to_xml(ping_event(datetime.now(UTC), uid=f"rx-{uuid.uuid4().hex[:8]}")))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _read(self, sock: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                buffer += chunk
                while (end := buffer.find(b"</event>")) >= 0:
                    event, buffer = buffer[: end + 8], buffer[end + 8 :]
                    self._record(event)

    def _record(self, event: bytes) -> None:
        if b'type="t-x-c-t-r"' in event:
            self._pong.set()
            return
        if (match := _HEAD.search(event)) is not None:
            key = (match.group(1).decode(), match.group(2).decode())
            with self._lock:
                self.events[key] += 1

    def uids(self) -> set[str]:
        with self._lock:
            return {uid for uid, _ in self.events}

    def copies(self) -> Counter[str]:
        """How many times each uid arrived (all start times together)."""
        counts: Counter[str] = Counter()
        with self._lock:
            for (uid, _), n in self.events.items():
                counts[uid] += n
        return counts


@dataclass
class Load:
    """Threads posting detections (one by one, and every ``batch_every``-th as a batch of 10)
    to ``url`` at about ``rate`` per second in total; remembers what was answered 202."""

    url: str
    rate: float = 60.0
    threads: int = 3
    batch_every: int = 10
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    accepted: dict[str, str] = field(default_factory=dict)  # detection id -> CoT uid
    refused: set[str] = field(default_factory=set)  # ids answered 503
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    slowest_s: float = 0.0  # the longest any answered request took
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def detection(self, sensor: int) -> dict[str, Any]:
        with self._lock:
            n = next(self._ids)
        return detection_now(f"{self.prefix}-{n}", f"drill-{sensor}")

    def _run(self, n: int) -> None:
        interval = self.threads / self.rate
        sent = 0
        with httpx.Client(base_url=self.url, headers=ADMIN_HEADERS, timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                sent += 1
                if self.batch_every and sent % self.batch_every == 0:
                    bodies = [self.detection(n) for _ in range(10)]
                    self._post(client, "/api/v1/detections/batch", bodies, batch=True)
                else:
                    bodies = [self.detection(n)]
                    self._post(client, "/api/v1/detections", bodies[0], batch=False)
                self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _post(self, client: httpx.Client, path: str, body: Any, *, batch: bool) -> None:
        sent_at = time.monotonic()
        try:
            answer = client.post(path, json=body)
        except httpx.HTTPError:
            with self._lock:
                self.errors += 1
            self._stop.wait(0.05)  # serve is down: its restart is the drill's business
            return
        status = answer.status_code
        outcomes: list[tuple[str, int, Any]]
        if batch and status in (202, 207):
            results = answer.json()["results"]
            outcomes = [
                (sent["id"], item["status"], item.get("answer"))
                for item, sent in zip(results, body, strict=True)
            ]
        else:
            single = answer.json() if status == 202 else None
            outcomes = [(sent["id"], status, single) for sent in (body if batch else [body])]
        with self._lock:
            self.slowest_s = max(self.slowest_s, time.monotonic() - sent_at)
            self.statuses[status] += 1
            for detection_id, item_status, item_answer in outcomes:
                if item_status == 202:
                    self.accepted[detection_id] = item_answer["uid"]
                elif item_status == 503:
                    self.refused.add(detection_id)


class ProxyThread:
    """The delivery tests' :class:`FaultProxy`, run on an event loop of its own thread."""

    def __init__(self, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = FaultProxy("127.0.0.1", upstream_port)
        self.call(self.proxy.start())

    @property
    def port(self) -> int:
        return self.proxy.port

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def do(self, action: Callable[[], None]) -> None:
        """Run a plain proxy method (freeze, black_hole, heal, reset) on the proxy's loop."""

        async def run() -> None:
            action()

        self.call(run())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[tuple[str, str]]:
    """A PostgreSQL database of the drill's own (``(url, name)``), dropped afterwards.

    Its own because the drill locks it (``ALLOW_CONNECTIONS false``): nothing else may share it.
    """
    name = f"copbridge_drill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class SmallDisk:
    """A size-capped filesystem (tmpfs) that a PostgreSQL database lives on; ``grow`` gives
    it room again without touching the server."""

    path: Path

    def grow(self, size_mb: int) -> None:
        _run(["mount", "-o", f"remount,size={size_mb}m", str(self.path)])

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize


def small_disk_unavailable() -> str | None:
    """Why :func:`pg_database_on_small_disk` cannot run here, or None when it can: it mounts a
    tmpfs (root only) that the local PostgreSQL server (user ``postgres``) writes to."""
    if os.geteuid() != 0:
        return "mounting a size-capped tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no local postgres user to own the tablespace"
    return None


@contextlib.contextmanager
def pg_database_on_small_disk(size_mb: int) -> Iterator[tuple[str, SmallDisk]]:
    """A fresh database whose tables and indexes live on a ``size_mb`` tmpfs (a tablespace):
    it fills for real, PostgreSQL answering "No space left on device". The server's WAL stays
    on its own disk. Unmounted and dropped afterwards."""
    postgres = pwd.getpwnam("postgres")
    name = f"copbridge_full_{uuid.uuid4().hex[:10]}"
    # Under /tmp itself: the server's user must be able to reach the directory.
    mount_point = Path(tempfile.mkdtemp(prefix="copbridge-pgdisk-", dir="/tmp"))
    options = f"size={size_mb}m,mode=0700,uid={postgres.pw_uid},gid={postgres.pw_gid}"
    with contextlib.ExitStack() as stack:
        stack.callback(mount_point.rmdir)
        _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)])
        stack.callback(_run, ["umount", str(mount_point)])
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE TABLESPACE \"{name}\" LOCATION '{mount_point}'")
        stack.callback(_admin, f'DROP TABLESPACE IF EXISTS "{name}"')
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TABLESPACE "{name}"')
        stack.callback(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}", SmallDisk(mount_point)


def _admin(statement: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(statement)


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def pg_lock_out(name: str, *, locked: bool) -> None:
    """Refuse (and cut) or allow again every connection to one database: a PostgreSQL outage
    for that database only, without stopping the server others share."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not locked).lower()}')
        if locked:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
