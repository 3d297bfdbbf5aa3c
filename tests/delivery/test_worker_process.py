"""``copbridge worker`` on its own: delivers what is in the store, and SIGTERM ends it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from copbridge.store import open_store

from .events import detection_record, queue, uid_of

pytestmark = pytest.mark.timeout(60)


def test_worker_command_delivers_the_backlog_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'copbridge.db'}"
    out = tmp_path / "events.cot"
    url = f"file://{out}"
    store = open_store(database)
    store.upgrade()
    records = [detection_record(f"w{i}") for i in range(20)]
    queue(store, [url], records)
    store.close()
    env = {
        **os.environ,
        "COPBRIDGE_DATABASE_URL": database,
        "COPBRIDGE_DESTINATIONS": url,
        "COPBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "COPBRIDGE_LOG_FORMAT": "json",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "copbridge", "worker"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not out.exists() or len(out.read_bytes().splitlines()) < len(records):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    delivered = out.read_bytes()
    assert all(uid_of(r).encode() in delivered for r in records)
    store = open_store(database)
    try:
        (stats,) = store.outbox_stats([url])
    finally:
        store.close()
    assert (stats.pending, stats.sent) == (0, len(records))


def test_worker_without_destinations_says_so(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
        "COPBRIDGE_DESTINATIONS": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "copbridge", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no destinations" in result.stderr
