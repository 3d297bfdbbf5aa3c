"""Liveness, readiness and metrics through the real app and store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.config import load_settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}", data_dir=tmp_path, feed="off"
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_livez_answers(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}


def test_readyz_reports_the_store(client: TestClient) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["store"] == "sqlite"


def test_readyz_is_503_with_the_reason_when_the_store_is_gone(tmp_path: Path) -> None:
    db = tmp_path / "gone" / "api.db"
    settings = load_settings(database_url=f"sqlite:///{db}", data_dir=tmp_path, feed="off")
    app = create_app(settings)
    with TestClient(app) as client:
        for name in os.listdir(db.parent):
            os.remove(db.parent / name)
        os.rmdir(db.parent)
        db.parent.write_text("not a directory")  # the database path cannot be opened any more
        for reader in app.state.store._readers:  # every thread's open connection, not just ours
            with reader.lock:
                reader.drop()
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "unavailable"
    assert answer.json()["reason"]


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    client.get("/livez")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'copbridge_http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "copbridge_http_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


def test_every_answer_carries_a_request_id(client: TestClient) -> None:
    answer = client.get("/livez", headers={"X-Request-ID": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    made = [client.get("/livez").headers["x-request-id"] for _ in range(3)]
    assert all(len(rid) == 32 for rid in made)
    assert len(set(made)) == 3
