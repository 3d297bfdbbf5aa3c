"""The README's first command: ``make run`` serves /livez within 15 s (install already done)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.system.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_answers_livez_within_15_s(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "COPBRIDGE_PORT": str(port),
        "COPBRIDGE_HOST": "127.0.0.1",
        "COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "COPBRIDGE_DATA_DIR": str(tmp_path),
        "COPBRIDGE_FEED": f"tcp://127.0.0.1:{free_port()}",
    }
    log = (tmp_path / "make-run.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        answered = None
        while time.monotonic() - started < 15 and proc.poll() is None:
            try:
                answered = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        assert answered is not None, (tmp_path / "make-run.log").read_text()
        assert answered.json() == {"status": "ok"}
        assert elapsed < 15
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()
    output = (tmp_path / "make-run.log").read_text()
    assert "bootstrap admin key (shown once" in output
    assert "Traceback" not in output
