"""A short headless run of all three locust profiles against a real ``serve``: no failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.load import run_locust, serve_for_load

pytestmark = pytest.mark.timeout(180)

PROFILES = (
    "POST /detections",
    "POST /detections/batch (1000 + images)",
    "GET /detections",
    "GET /destinations",
    "GET /audit",
    "GET /metrics",
)


def test_drone_feed_batch_uploader_and_operators_run_without_failures(tmp_path: Path) -> None:
    serve = serve_for_load(tmp_path)
    try:
        run = run_locust(tmp_path, serve, users=11, seconds=12)  # a batch takes ~4-8 s here
    finally:
        serve.stop()
    assert run.returncode == 0, run.output[-4000:]
    for name in PROFILES:
        row = run.row(name)
        assert int(row["Request Count"]) > 0, (name, run.output[-2000:])
        assert int(row["Failure Count"]) == 0, (name, run.output[-4000:])
    assert "Traceback" not in run.serve_log
