"""202 only after commit: when the store cannot take writes, clients get 503 and nothing is
half-written; the service recovers by itself once the store is back."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from tests.api.conftest import DESTINATIONS, app_settings, example
from tests.conftest import ADMIN_HEADERS

URL = "/api/v1/detections"


def _check_consistent(client: TestClient, accepted: list[str], refused: list[str]) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    for detection_id in accepted:
        assert store.get_detection(detection_id) is not None, detection_id
    for detection_id in refused:
        assert store.get_detection(detection_id) is None, detection_id
    report = store.verify_audit()
    assert report.ok, report
    queued = sum(1 for r in store.audit_records(limit=100_000) if r.kind == "detection.accepted")
    assert queued == len(accepted)
    stats = store.outbox_stats(DESTINATIONS.split(","))
    events = len(store.feed_since(0, 0, limit=100_000))
    assert all(s.pending == events for s in stats)


def test_full_sqlite_disk_gives_503_and_nothing_half_written(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, sqlite_max_pages=80)
    accepted: list[str] = []
    refused: list[str] = []
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        for i in range(400):
            answer = client.post(URL, json=example(id=f"d{i}", label="x" * 60))
            if answer.status_code == 202:
                accepted.append(f"d{i}")
            else:
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "1"
                assert "not stored" in answer.json()["detail"]
                refused.append(f"d{i}")
            if len(refused) >= 5:
                break
        assert accepted
        assert refused, "the capped database never filled up"
        assert client.get("/livez").status_code == 200
        _check_consistent(client, accepted, refused)


def _database(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    admin = f"{parts.scheme}://{parts.netloc}/postgres"
    return admin, parts.path.lstrip("/")


def test_postgres_refusing_connections_gives_503_then_recovers(tmp_path: Path, pg_url: str) -> None:
    admin_url, name = _database(pg_url)
    assert parse_qs(urlsplit(pg_url).query)["options"]
    settings = app_settings(tmp_path, url=pg_url)
    with (
        TestClient(create_app(settings), headers=ADMIN_HEADERS) as client,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        assert client.post(URL, json=example(id="before")).status_code == 202
        try:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            down = client.post(URL, json=example(id="during"))
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "1"
            assert client.get("/readyz").status_code == 503
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert client.post(URL, json=example(id="after")).status_code == 202
        assert client.get("/readyz").status_code == 200
        _check_consistent(client, ["before", "after"], ["during"])
