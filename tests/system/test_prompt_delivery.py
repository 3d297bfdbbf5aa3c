"""A commit wakes delivery at once: with a 30 s poll interval, an accepted detection still reaches
its destination within a couple of seconds (the API notifies the couriers after each commit)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.api.conftest import example
from tests.conftest import ADMIN_HEADERS
from tests.system.processes import start_serve


def test_accepted_detection_is_delivered_without_waiting_for_the_poll(tmp_path: Path) -> None:
    out = tmp_path / "delivered.cot"
    config = tmp_path / "copbridge.toml"
    # An idle courier looks again after min(poll, keepalive / 4): make both long, so only the
    # API's notify() can explain a prompt delivery.
    config.write_text(
        f'delivery_poll_s = 30\n\n[[destinations]]\nurl = "file://{out}"\nkeepalive_s = 600\n'
    )
    serve = start_serve(tmp_path, args=["--config", str(config)])
    try:
        time.sleep(3.0)  # let the courier reach its idle wait
        fresh = example(time=datetime.now(UTC).isoformat())  # the contract's example is stale
        answer = httpx.post(
            f"{serve.url}/api/v1/detections", json=fresh, headers=ADMIN_HEADERS, timeout=10
        )
        assert answer.status_code == 202, answer.text
        accepted = time.monotonic()
        uid = answer.json()["uid"]
        while time.monotonic() - accepted < 5:
            if out.exists() and uid in out.read_text():
                break
            time.sleep(0.05)
        waited = time.monotonic() - accepted
        assert out.exists(), serve.output()
        assert uid in out.read_text()
        assert waited < 2
    finally:
        serve.stop()
