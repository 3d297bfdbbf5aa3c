"""``copbridge.sender`` pieces that need no running service: the service's reasons as a user
reads them, and a certificate that does not verify stopping the run without retries."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from copbridge.documents import read
from copbridge.sender import Pending, Sender, Stopped, Summary, _detail, content_id, pending
from tests.tls import self_signed


def test_a_null_id_is_replaced_by_the_same_made_id_on_every_run() -> None:
    """The service makes a new id for ``"id": null`` each time: sent so, every run of the file
    would store the detection again. A missing id and a given one are left as they were."""
    lines = [
        '{"id": null, "label": "person", "bbox": {"x": 1}}',
        '{"label": "car"}',
        '{"id": "x1"}',
    ]
    texts = []
    for _ in range(2):
        _length, found = read("\n".join(lines).encode())
        texts.append([p.text for item in found if (p := pending("f", item, Summary())) is not None])
    assert texts[0] == texts[1]
    sent = [json.loads(text) for text in texts[0]]
    assert sent[0] == {"id": content_id(lines[0]), "label": "person", "bbox": {"x": 1}}
    assert sent[1] == {"id": content_id(lines[1]), "label": "car"}
    assert texts[0][2] == lines[2]


def test_a_null_id_beside_a_lone_surrogate_escape_is_sent_for_the_service_to_refuse() -> None:
    # Re-written with the made id, the escape became raw text that cannot be encoded: the
    # whole run stopped with a traceback before sending anything.
    line = '{"id": null, "label": "snd\\ud800x"}'
    _length, found = read(line.encode())
    made = pending("f", next(iter(found)), Summary())
    assert made is not None
    assert "\\ud800" in made.text
    batches = list(Sender(httpx.Client(), Summary()).batches([made]))
    assert [p.text for p in batches[0]] == [made.text]


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


@contextlib.contextmanager
def _listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback listener whose thread hands each connection to ``handle``; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                handle(conn)
            except OSError:  # the client went away or timed out: take the next connection
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture
def self_signed_https(tmp_path: Path) -> Iterator[int]:
    """A TLS listener on loopback whose certificate no client trusts."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handshake(conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()  # the client refused our certificate: expected

    with _listener(handshake) as port:
        yield port


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


def _read_request(conn: socket.socket) -> bytes:
    """One HTTP request's body, read whole from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return b""  # the client went away mid-body
        body += chunk
    return body


@pytest.fixture
def scripted_service() -> Iterator[tuple[int, list[bytes | None], list[bytes]]]:
    """A loopback HTTP listener that reads each request whole, then sends the next scripted
    answer, or closes the connection without one (None) as a service killed mid-request does."""
    script: list[bytes | None] = []
    bodies: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            while script and (body := _read_request(conn)):
                bodies.append(body)
                reply = script.pop(0)
                if reply is None:
                    break
                conn.sendall(reply)

    with _listener(answer) as port:
        yield port, script, bodies


def _http(status: int, body: str) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def _results(count: int, *, duplicate: bool) -> str:
    """A 207 body: ``count`` items, each stored now (or before, as a duplicate)."""
    stored = {"status": 202, "answer": {"duplicate": duplicate}}
    return json.dumps({"results": [{"index": i, **stored} for i in range(count)]})


def _detections(count: int) -> list[Pending]:
    return [Pending(f"f:{i}", json.dumps({"id": f"d{i}"})) for i in range(1, count + 1)]


def _send(
    port: int, batch: list[Pending], pauses: list[float] | None = None, **options: Any
) -> tuple[Summary, Stopped | None]:
    """Send ``batch`` to the loopback ``port``; the summary, and why sending stopped (if it
    did). Pauses are recorded in ``pauses``, not slept."""
    summary = Summary()
    sleep = (pauses if pauses is not None else []).append
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        try:
            Sender(client, summary, sleep=sleep, **options).send(batch)
        except Stopped as stopped:
            return summary, stopped
    return summary, None


def test_a_batch_sent_and_never_answered_is_reported_as_maybe_stored(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, bodies = scripted_service
    # too large as a whole; the first half is stored; the second is sent and never answered
    script += [_http(413, '{"detail":"too large"}'), _http(207, _results(2, duplicate=False))]
    script += [None] * 5
    pauses: list[float] = []
    summary, stopped = _send(port, _detections(4), pauses)
    assert stopped is not None
    assert len(bodies) == 7  # 413, the first half, five tries of the second
    assert len(pauses) == 4
    assert (summary.accepted, summary.in_doubt, summary.total) == (2, 2, 2)
    assert stopped.maybe_stored
    message = str(stopped)
    assert "in doubt: f:3 to f:4 (2 detections), which may have been stored" in message
    assert "not sent: f:1" not in message  # f:1 and f:2 were stored and answered
    assert "2 more were sent and no answer told" in "\n".join(summary.lines())


def test_a_service_that_cannot_be_reached_has_stored_nothing_of_the_batch() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
    summary, stopped = _send(port, _detections(1))
    assert stopped is not None
    assert "not sent: f:1 and all after it" in str(stopped)
    assert summary.in_doubt == 0
    assert not stopped.maybe_stored
    assert summary.total == 0


def test_a_refusal_after_a_lost_attempt_leaves_the_batch_in_doubt(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, _bodies = scripted_service
    # the first attempt goes out and is never answered; the retry is refused (key revoked)
    script += [None, _http(401, '{"detail":"revoked key"}')]
    summary, stopped = _send(port, _detections(1))
    assert stopped is not None
    message = str(stopped)
    assert "refused the credential (401: revoked key)" in message
    assert "in doubt: f:1 (1 detection), which may have been stored" in message
    assert summary.in_doubt == 1


def test_a_gateway_answer_that_does_not_tell_is_retried_and_counted_once(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, bodies = scripted_service
    # the gateway timed out after passing the batch on; the retry finds it stored
    script += [_http(504, '{"detail":"gateway timeout"}'), _http(207, _results(2, duplicate=True))]
    pauses: list[float] = []
    summary, stopped = _send(port, _detections(2), pauses)
    assert stopped is None
    assert len(bodies) == 2
    assert pauses == [0.5]
    assert (summary.duplicates, summary.duplicates_after_retry, summary.rejected) == (2, 2, 0)


def test_answers_that_never_tell_stop_the_run_with_the_batch_in_doubt(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, _bodies = scripted_service
    script += [_http(502, '{"detail":"bad gateway"}')] * 4 + [_http(500, '{"detail":"boom"}')]
    summary, stopped = _send(port, _detections(3))
    assert stopped is not None
    message = str(stopped)
    assert "the last try was answered HTTP 500 (boom)" in message
    assert stopped.maybe_stored
    assert "in doubt: f:1 to f:3 (3 detections), which may have been stored" in message
    assert (summary.in_doubt, summary.rejected) == (3, 0)  # not counted as refused


def test_the_halves_of_a_batch_split_after_a_lost_try_count_as_retried(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, _bodies = scripted_service
    half = _http(207, _results(1, duplicate=True))
    # lost (maybe stored whole), then too large for the service now: each half comes back stored
    script += [None, _http(413, '{"detail":"too large"}'), half, half]
    summary, stopped = _send(port, _detections(2))
    assert stopped is None
    assert (summary.duplicates, summary.duplicates_after_retry) == (2, 2)


def test_a_service_that_keeps_refusing_for_now_stops_the_run(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, bodies = scripted_service
    busy = '{"detail":"not stored, retry later: disk full"}'
    script += [_http(503, busy)] * 5
    summary, stopped = _send(port, _detections(2), batch_items=1)
    assert stopped is not None
    assert len(bodies) == 5  # the second batch was never sent
    assert "answered HTTP 503 (not stored, retry later: disk full)" in str(stopped)
    assert "not sent: f:1 and all after it" in str(stopped)
    assert not stopped.maybe_stored
    assert (summary.total, summary.in_doubt) == (0, 0)


def test_a_503_whose_commit_was_cut_off_leaves_the_batch_in_doubt(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    """The service says ``"stored": "unknown"`` (a PostgreSQL commit cut off): that batch may
    be stored, so it must not be reported as not sent."""
    port, script, _bodies = scripted_service
    item = {
        "detail": "not accepted, retry later with the same id",
        "errors": [],
        "stored": "unknown",
    }
    cut = {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "results": [{"index": 0, "status": 503, "answer": None, "error": item}],
    }
    script += [_http(503, json.dumps(cut))] * 5
    summary, stopped = _send(port, _detections(1))
    assert stopped is not None
    assert stopped.maybe_stored
    assert "in doubt: f:1 (1 detection" in str(stopped)
    assert summary.in_doubt == 1


def test_a_half_refused_for_now_after_a_lost_try_is_in_doubt(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
) -> None:
    port, script, _bodies = scripted_service
    limited = _http(429, '{"detail":"too many requests"}')
    script += [None, _http(413, '{"detail":"too large"}'), _http(207, _results(1, duplicate=False))]
    script += [limited] * 5
    summary, stopped = _send(port, _detections(2))
    assert stopped is not None
    assert "in doubt: f:2 (1 detection)" in str(stopped)
    assert (summary.accepted, summary.in_doubt, summary.rejected) == (1, 1, 0)


def _answers(*bodies: tuple[int, dict[str, Any] | str]) -> tuple[httpx.Client, list[bytes]]:
    """A client whose service answers ``bodies`` in turn (httpx.MockTransport: a service that
    answers 503 for some items of a batch and not others cannot be made to on cue here)."""
    sent: list[bytes] = []
    queue = list(bodies)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        status, body = queue.pop(0)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.Client(base_url="http://svc", transport=httpx.MockTransport(handle)), sent


def _ok(index: int, duplicate: bool = False) -> dict[str, Any]:
    return {"index": index, "status": 202, "answer": {"duplicate": duplicate}, "error": None}


def _busy(index: int, unknown: bool = False) -> dict[str, Any]:
    error: dict[str, Any] = {"detail": "not stored, retry later: database is locked", "errors": []}
    if unknown:
        error["stored"] = "unknown"
    return {"index": index, "status": 503, "answer": None, "error": error}


def test_items_the_store_was_too_busy_for_are_sent_again_not_counted_as_refused() -> None:
    client, sent = _answers(
        (207, {"results": [_ok(0), _busy(1), _busy(2, unknown=True)]}),
        (202, {"results": [_ok(0), _ok(1, duplicate=True)]}),
    )
    summary = Summary()
    detections = [Pending(f"f:{i}", json.dumps({"id": f"d{i}"})) for i in range(3)]
    Sender(client, summary, sleep=lambda _: None).send(detections)
    assert [len(json.loads(body)["detections"]) for body in sent] == [3, 2]
    assert (summary.accepted, summary.duplicates, summary.rejected) == (2, 1, 0)
    assert summary.duplicates_after_retry == 1  # its first commit was cut off


def test_items_the_store_stayed_too_busy_for_are_not_stored_not_refused() -> None:
    """503 to every try: they were counted "rejected: 503: busy" beside the refusals, exit 1,
    as though sending them again would not help."""
    client, sent = _answers(
        (207, {"results": [_ok(0), _busy(1)]}),
        *[(207, {"results": [_busy(0)]})] * 4,
    )
    summary = Summary()
    detections = [Pending(f"f:{i}", json.dumps({"id": f"d{i}"})) for i in range(2)]
    Sender(client, summary, sleep=lambda _: None).send(detections)
    assert len(sent) == 5
    assert (summary.accepted, summary.rejected, summary.in_doubt) == (1, 0, 0)
    assert (summary.not_stored.count, summary.not_stored.places) == (1, ["f:1"])
    assert summary.exit_status() == 3
    assert any("1 more were not stored: the store was busy (503)" in x for x in summary.lines())


@pytest.mark.parametrize(
    "body", ["<html>proxy</html>", {"results": [_ok(0)]}, {"results": [_ok(0), _ok(0)]}]
)
def test_an_answer_that_does_not_account_for_every_detection_stops_the_run_in_doubt(
    body: dict[str, Any] | str,
) -> None:
    client, _ = _answers((202, body))
    summary = Summary()
    detections = [Pending(f"f:{i}", json.dumps({"id": f"d{i}"})) for i in range(2)]
    with pytest.raises(Stopped, match="does not list every detection"):
        Sender(client, summary, sleep=lambda _: None).send(detections)
    assert summary.in_doubt == 2
    assert summary.accepted == 0


def test_a_url_without_the_batch_endpoint_stops_the_run_at_once() -> None:
    client, sent = _answers((404, {"detail": "Not Found"}))
    detections = [Pending(f"f:{i}", json.dumps({"id": f"d{i}"})) for i in range(2)]
    with pytest.raises(Stopped, match="base URL"):
        Sender(client, Summary(), sleep=lambda _: None, batch_items=1).send(detections)
    assert len(sent) == 1  # not one 404 per batch of the file


def test_a_byte_order_mark_where_cat_joined_two_files_is_not_a_refusal() -> None:
    _length, found = read(b'{"id": "a"}\n\xef\xbb\xbf{"id": "b"}\n')
    assert [getattr(item, "value", None) for item in found] == [{"id": "a"}, {"id": "b"}]


def _cut_item(index: int) -> dict[str, Any]:
    error = {"detail": "not accepted, retry later", "errors": [], "stored": "unknown"}
    return {"index": index, "status": 503, "answer": None, "error": error}


def test_an_item_whose_commit_was_cut_off_ends_the_run_in_doubt_exit_3(
    scripted_service: tuple[int, list[bytes | None], list[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One item of a 207 answered 503 "stored": "unknown" to every try: it was counted in
    doubt, but the run exited 0, as though every detection were stored."""
    from typer.testing import CliRunner

    from copbridge import sender
    from copbridge.cli import app

    monkeypatch.setattr(sender, "MAX_ATTEMPTS", 2)  # one wait of 0.5 s, not four

    port, script, _bodies = scripted_service
    first = {"results": [_cut_item(0), {"index": 1, "status": 202, "answer": {"duplicate": False}}]}
    script += [_http(207, json.dumps(first))]
    script += [_http(207, json.dumps({"results": [_cut_item(0)]}))] * 5
    source = tmp_path / "two.jsonl"
    source.write_text('{"id": "d1"}\n{"id": "d2"}\n')
    result = CliRunner().invoke(
        app, ["send", "--url", f"http://127.0.0.1:{port}", "--api-key", "k", str(source)]
    )
    assert result.exit_code == 3, result.output
    assert "accepted 1, duplicates 0, rejected 0 of 1" in result.output
    assert "1 left in doubt: send the same files again to know" in result.output


@pytest.mark.parametrize(
    ("given", "posted_to"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000/api/v1/detections/batch"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/api/v1/detections/batch"),
        ("http://127.0.0.1:9000/api/v1/", "http://127.0.0.1:9000/api/v1/detections/batch"),
        ("http://h/tak/api/v1/detections", "http://h/tak/api/v1/detections/batch"),
        ("https://h/tak/api/v1/detections/batch", "https://h/tak/api/v1/detections/batch"),
        ("https://h/tak", "https://h/tak/api/v1/detections/batch"),
    ],
)
def test_a_url_with_the_api_s_own_path_is_taken_as_its_base(given: str, posted_to: str) -> None:
    """--url .../api/v1 posted to .../api/v1//api/v1/detections/batch (a 404)."""
    from copbridge.cli import _service_url

    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(207, json={"results": [{"index": 0, "status": 202, "answer": {}}]})

    transport = httpx.MockTransport(answer)
    with httpx.Client(base_url=_service_url(given), transport=transport) as client:
        client.post("/api/v1/detections/batch", content=b"[]")
    assert seen == [posted_to]
