"""``copbridge send`` against a real ``serve``: batches, summary with reasons and lines, exit
status, and never a detection stored twice or lost from the count."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from copbridge.documents import read
from copbridge.sender import Sender, Summary, pending, retry_after
from tests.api.conftest import example
from tests.conftest import ADMIN_HEADERS
from tests.system.processes import COPBRIDGE, Serve, run_copbridge, start_serve


def _send(
    serve: Serve, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``copbridge send ARGS`` against ``serve``, from its working directory."""
    return run_copbridge(
        ["send", *args], {**serve.client_env(), **(env or {})}, serve.log.parent, timeout=120
    )


def _stored(workdir: Path) -> int:
    with sqlite3.connect(workdir / "copbridge.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM detections").fetchone()[0])


def test_send_posts_json_lines_and_sums_up(tmp_path: Path) -> None:
    lines = [json.dumps(example(id=f"s{i}")) for i in range(1200)]
    lines[10] = json.dumps(example(id="bad", confidence=7))
    lines[20] = "{oops"
    lines.append(json.dumps(example(id="s0")))  # a retry of the first one
    source = tmp_path / "detections.jsonl"
    source.write_text("\n".join(lines) + "\n")
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    try:
        result = _send(serve, str(source))
    finally:
        serve.stop()
    assert result.returncode == 1, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == "accepted 1198, duplicates 1, rejected 2 of 1201"
    # the example's time is days old: every accepted one is stored but will expire unsent
    assert (
        "  1198 of the accepted were stale on arrival: stored, but they will expire without "
        f"being delivered (at {source}:1, {source}:2,"
    ) in result.stdout
    assert "confidence" in result.stdout
    assert "not JSON: Expecting property name" in result.stdout
    assert f"{source}:11" in result.stdout  # the refused detection's line
    assert f"{source}:21" in result.stdout  # the unreadable line


def test_a_messy_file_is_read_line_by_line_and_a_rerun_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    """A byte-order mark, CRLF, NaN, a number beyond float, bytes that are not UTF-8, an array,
    pretty-printed objects one after another (as jq writes them), detections without an id, and
    trailing garbage: each detection is stored once or refused with its line."""
    without_id = example()
    without_id.pop("id")
    pretty = json.dumps(without_id, indent=2)
    parts = [
        "\ufeff" + json.dumps(example(id="m1")),  # line 1
        json.dumps(example(id="nan")).replace('"confidence": 0.91', '"confidence": NaN'),  # 2
        json.dumps(example(id="huge", confidence=0.4242)).replace("0.4242", "1e400"),  # 3
        # 4, written in Latin-1 below
        json.dumps(example(id="latin1", label="caf\u00e9"), ensure_ascii=False),
        "[1, 2]",  # 5
        pretty,  # 6..
        pretty,  # the same detection again: the same id made from its text
        "oops",
    ]
    data = "\r\n".join(parts).encode()
    data = data.replace("caf\u00e9".encode(), b"caf\xe9")
    source = tmp_path / "messy.json"
    source.write_bytes(data)
    second_pretty = 6 + pretty.count("\n") + 1
    garbage = second_pretty + pretty.count("\n") + 1
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    try:
        first = _send(serve, str(source))
        stored_once = _stored(tmp_path)
        again = _send(serve, str(source))
        stored_twice = _stored(tmp_path)
    finally:
        serve.stop()
    assert "Traceback" not in first.stderr + again.stderr
    assert first.returncode == 1, first.stderr
    out = first.stdout
    assert out.splitlines()[0] == "accepted 2, duplicates 1, rejected 5 of 8", out
    assert f"not JSON: confidence: NaN is not a JSON number (at {source}:2)" in out
    assert f"{source}:3)" in out
    assert "confidence" in out
    assert "not UTF-8 (byte" in out
    assert f"{source}:4" in out
    assert f"not a JSON object but an array (at {source}:5)" in out
    assert f"{source}:{garbage}" in out
    assert stored_once == 2
    assert again.stdout.splitlines()[0] == "accepted 0, duplicates 3, rejected 5 of 8"
    assert stored_twice == 2


class _AnswerLostOnce(httpx.BaseTransport):
    """Forwards to the real service; the first answer is dropped after the service has stored
    the batch, as when a link fails between the commit and the reply."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        if self.lost == 0:
            self.lost += 1
            raise httpx.RemoteProtocolError("server disconnected without sending a response")
        return response


def test_a_retry_after_a_lost_answer_stores_detections_without_id_once(tmp_path: Path) -> None:
    lines = []
    for k in range(3):
        body = example(track_id=str(k))
        body.pop("id")
        lines.append(json.dumps(body))
    _length, found = read("\n".join(lines).encode())
    summary = Summary()
    ready = [p for item in found if (p := pending("f", item, summary)) is not None]
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    transport = _AnswerLostOnce()
    try:
        with httpx.Client(base_url=serve.url, headers=ADMIN_HEADERS, transport=transport) as client:
            Sender(client, summary, sleep=lambda _: None).send(ready)
        stored = _stored(tmp_path)
    finally:
        serve.stop()
    assert transport.lost == 1
    assert stored == 3  # without the ids made from the text, the retry stored them again
    assert (summary.accepted, summary.duplicates, summary.rejected) == (0, 3, 0)
    assert summary.duplicates_after_retry == 3
    assert "answered to a retry after a lost connection" in "\n".join(summary.lines())


def test_images_too_large_for_one_batch_are_split_until_they_fit(tmp_path: Path) -> None:
    rng = random.Random(5)
    lines = []
    for k in range(12):
        picture = io.BytesIO()
        noise = bytes(rng.getrandbits(8) for _ in range(160 * 160 * 3))
        Image.frombytes("RGB", (160, 160), noise).save(picture, "PNG")  # ~77 KB, incompressible
        image = {"media_type": "image/png", "data": base64.b64encode(picture.getvalue()).decode()}
        lines.append(json.dumps(example(id=f"img{k}", image=image)))
    source = tmp_path / "images.jsonl"
    source.write_text("\n".join(lines))
    serve = start_serve(
        tmp_path, env={"COPBRIDGE_RUN_WORKER": "false", "COPBRIDGE_MAX_BODY_BYTES": "300000"}
    )
    try:
        result = _send(serve, str(source))
        stored = _stored(tmp_path)
    finally:
        serve.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "accepted 12, duplicates 0, rejected 0 of 12"
    assert stored == 12


def test_a_refused_credential_stops_at_once_and_nothing_is_half_counted(tmp_path: Path) -> None:
    source = tmp_path / "many.jsonl"
    source.write_text("\n".join(json.dumps(example(id=f"k{i}")) for i in range(3000)))
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    try:
        started = time.monotonic()
        wrong = _send(serve, str(source), env={"COPBRIDGE_API_KEY": "cpb_000000000000_" + "x" * 38})
        took = time.monotonic() - started
        typo = _send(serve, str(source), env={"COPBRIDGE_API_KEY": "cpb_secret with space"})
        missing = _send(serve, str(source), str(tmp_path / "nope.jsonl"))
        stored = _stored(tmp_path)
    finally:
        serve.stop()
    assert wrong.returncode == 3, wrong.stdout + wrong.stderr
    assert "refused the credential (401" in wrong.stderr
    assert f"not sent: {source}:1 and all after it" in wrong.stderr
    assert took < 30  # not 3,000 refusals, each waited out behind the failed-login limit
    assert typo.returncode == 2
    assert "secret" not in typo.stderr + typo.stdout  # never echoes the credential
    assert missing.returncode == 2
    assert "nope.jsonl: no such file" in missing.stderr
    assert stored == 0  # the missing second file was found before the first was sent


def test_a_service_gone_mid_run_is_reported_with_what_was_stored(tmp_path: Path) -> None:
    source = tmp_path / "long.jsonl"
    source.write_text("\n".join(json.dumps(example(id=f"g{i}")) for i in range(40_000)))
    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    sender = subprocess.Popen(
        [*COPBRIDGE, "send", str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **serve.client_env()},
    )
    try:
        deadline = time.monotonic() + 60
        while _stored(tmp_path) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        serve.stop(signal.SIGKILL)
        out, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(5)
        serve.stop(signal.SIGKILL)
    stored = _stored(tmp_path)
    assert sender.returncode == 3, out + err
    assert "stopped: cannot reach" in err
    assert "not sent: " in err
    accepted = int(out.splitlines()[0].split(",")[0].removeprefix("accepted "))
    # The kill may land between a batch's commit and its answer: that batch is then reported
    # as in doubt: sent, never answered, and maybe stored.
    in_doubt = re.search(r"(\d+) more were sent and no answer told", out)
    maybe = int(in_doubt.group(1)) if in_doubt else 0
    assert 1000 <= stored < 40_000
    assert accepted <= stored <= accepted + maybe, out + err
    assert maybe == 0 or "which may have been stored" in err


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after("3", 0.5) == 3.0
    assert retry_after(None, 0.5) == 0.5
    assert retry_after("soon", 0.5) == 0.5
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 0.5) == 0.0  # in the past: at once
    later = time.time() + 120
    header = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(later))
    assert 100 < retry_after(header, 0.5) <= 120


def test_geolocate_reads_files_as_send_does(tmp_path: Path) -> None:
    pretty = json.dumps(example(id="p1"), indent=2)
    data = ("\ufeff[\n" + pretty + ",\n" + json.dumps(example(id="p2")) + "\n]\n").encode()
    source = tmp_path / "array.json"
    source.write_bytes(data)
    result = run_copbridge(["geolocate", str(source)], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["p1", "p2"]


def test_send_reads_a_named_pipe_like_a_file(tmp_path: Path) -> None:
    """`copbridge send <(grep person today.jsonl)`: a pipe, not a regular file, was refused."""
    fifo = tmp_path / "detections.pipe"
    os.mkfifo(fifo)
    lines = [json.dumps(example(id=f"p{i}")) for i in range(3)]

    def feed() -> None:
        with fifo.open("w") as pipe:
            pipe.write("\n".join(lines) + "\n")

    serve = start_serve(tmp_path, env={"COPBRIDGE_RUN_WORKER": "false"})
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        result = _send(serve, str(fifo))
    finally:
        serve.stop()
        if writer.is_alive():  # send never opened it: let the writer go
            with contextlib.suppress(OSError), fifo.open("r"):
                pass
        writer.join(5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "accepted 3, duplicates 0, rejected 0 of 3"
