"""A real TAK server for tests: taky on a free loopback port, plus a plain-socket CoT client.

Reusable by any test that needs a TAK server (delivery tests too): `run_taky(workdir)` starts
`python -m taky.cot -c taky.conf` without SSL and stops it; `CotClient` speaks CoT XML over TCP.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from copbridge.cot import ping_event, to_xml

HOST = "127.0.0.1"

TAKY_CONF = """\
[taky]
hostname = localhost
node_id = COPBRIDGE-TEST
bind_ip = {host}
root_dir = {root}

[cot_server]
port = {port}

[ssl]
enabled = false
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TakyServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_listening(server: TakyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"taky exited with {server.process.returncode}:\n{server.log()}")
        try:
            socket.create_connection((server.host, server.port), 0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise TimeoutError(f"taky did not listen on {server.port} within {timeout} s:\n{server.log()}")


@contextlib.contextmanager
def run_taky(workdir: Path, start_timeout: float = 15.0) -> Iterator[TakyServer]:
    """Start taky on a free loopback port (plain TCP) and stop it (SIGTERM, then SIGKILL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "taky.conf"
    conf.write_text(TAKY_CONF.format(host=HOST, root=workdir, port=port))
    log_path = workdir / "taky.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taky.cot", "-c", str(conf), "-l", "debug"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = TakyServer(HOST, port, process, log_path)
    try:
        _wait_listening(server, start_timeout)
        yield server
    finally:
        process.terminate()  # taky stops its select loop (1 s tick) on SIGTERM
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class CotClient:
    """A TAK client reduced to a socket: send CoT XML, collect the `<event>`s the server sends."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.timeout = timeout
        self._buffer = b""
        self.received: list[bytes] = []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _split(self) -> None:
        # taky writes events back to back with no declaration, each ending in "</event>".
        while (end := self._buffer.find(b"</event>")) >= 0:
            cut = end + len(b"</event>")
            self.received.append(self._buffer[:cut].strip())
            self._buffer = self._buffer[cut:]

    def wait_for(self, match: Callable[[bytes], bool], timeout: float | None = None) -> bytes:
        """The first event (already received or arriving within `timeout`) that `match`es."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = 0
        while True:
            for event in self.received[seen:]:
                if match(event):
                    self.received.remove(event)
                    return event
            seen = len(self.received)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event; received {self.received!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"server closed the connection; got {self.received!r}")
            self._buffer += chunk
            self._split()

    def registered(self, uid: str, now: datetime) -> None:
        """Ping and wait for the pong: proves the server has this client in its routing set."""
        self.send(to_xml(ping_event(now, uid=f"{uid}-ping")))
        self.wait_for(lambda event: b'type="t-x-c-t-r"' in event)
