"""``copbridge.sender`` pieces that need no running service: the service's reasons as a user
reads them, and a certificate that does not verify stopping the run without retries."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from copbridge.sender import Pending, Sender, Stopped, Summary, _detail
from tests.tls import self_signed


def test_a_batch_refused_whole_reads_as_its_first_items_reason() -> None:
    batch = {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 2,
        "results": [
            {"index": 0, "status": 503, "answer": None, "error": {"message": "not stored: disk"}},
            {"index": 1, "status": 503, "answer": None, "error": {"message": "not stored: disk"}},
        ],
    }
    answer = httpx.Response(503, json=batch)
    assert _detail(answer) == "not stored: disk"
    assert _detail(httpx.Response(413, json={"detail": "too\n large"})) == "too large"
    assert (
        _detail(httpx.Response(502, text="<html>bad gateway</html>")) == "<html>bad gateway</html>"
    )


@pytest.fixture
def self_signed_https(tmp_path: Path) -> Iterator[int]:
    """A TLS listener on loopback whose certificate no client trusts."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused our certificate: expected

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_certificate_that_does_not_verify_stops_without_retrying(self_signed_https: int) -> None:
    pauses: list[float] = []
    summary = Summary()
    with httpx.Client(base_url=f"https://127.0.0.1:{self_signed_https}", timeout=5) as client:
        sender = Sender(client, summary, sleep=pauses.append)
        with pytest.raises(Stopped, match="CERTIFICATE_VERIFY_FAILED") as stopped:
            sender.send([Pending("f:1", '{"id":"a"}')])
    assert pauses == []  # no retry: it would fail the same way five times
    assert "not sent: f:1 and all after it" in str(stopped.value)
    assert summary.total == 0
