"""202 only after commit: when the store cannot take writes, clients get 503 and nothing is
half-written; the service recovers by itself once the store is back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
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
    settings = app_settings(tmp_path, sqlite_max_pages=80, ready_after_write_failure_s=1.0)
    accepted: list[str] = []
    refused: list[str] = []
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        before = _store_metrics(client)
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
        # Counted as store errors and as detections refused for the store (both stayed at 0:
        # the refused write was inside a transaction whose commit went through).
        after = _store_metrics(client)
        assert after[0] - before[0] >= 1
        assert after[1] - before[1] == len(refused)
        assert client.get("/livez").status_code == 200
        # Reads still work, yet the store takes no detection: not ready, saying why.
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert "refused a write in the last 1 s" in ready.json()["reason"]
        assert "full" in ready.json()["reason"]
        # Out of service nothing would write to show the store is back: ready again after 1 s.
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.1)
        _check_consistent(client, accepted, refused)


def _store_metrics(client: TestClient) -> tuple[float, float]:
    """copbridge_store_errors_total and the detections refused because of the store."""
    lines = client.get("/metrics").text.splitlines()

    def value(prefix: str) -> float:
        return sum(float(x.split()[-1]) for x in lines if x.startswith(prefix))

    refused = 'copbridge_detections_rejected_total{reason="store_unavailable"} '
    return value("copbridge_store_errors_total "), value(refused)


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
            read = client.get(f"{URL}/before")
            assert read.status_code == 503, read.text
            assert read.json()["detail"].startswith("the store cannot answer now, retry later")
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert client.post(URL, json=example(id="after")).status_code == 202
        assert client.get("/readyz").status_code == 200
        _check_consistent(client, ["before", "after"], ["during"])


def test_a_postgres_commit_cut_off_midway_is_not_accepted_and_says_it_may_be_stored(
    tmp_path: Path, pg_url: str
) -> None:
    """The backend is ended while COMMIT runs (a deferred trigger holds it there): the server
    may have made it durable or not, so the answer must not say "not stored". A retry with the
    same id is then stored once, or answered as the duplicate it is."""
    admin_url, name = _database(pg_url)
    settings = app_settings(tmp_path, url=pg_url)
    with (
        TestClient(create_app(settings), headers=ADMIN_HEADERS) as client,
        psycopg.connect(pg_url, autocommit=True) as owner,
        psycopg.connect(admin_url, autocommit=True) as admin,
    ):
        assert client.post(URL, json=example(id="before")).status_code == 202
        owner.execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$"
        )
        owner.execute(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON detections "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
        )
        with ThreadPoolExecutor(1) as pool:
            cut = pool.submit(client.post, URL, json=example(id="cut"))
            deadline = time.monotonic() + 20
            ended = 0
            while not ended and time.monotonic() < deadline:
                time.sleep(0.05)
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND query = 'COMMIT' AND wait_event = 'PgSleep'",
                    (name,),
                ).fetchone()
                ended = int(str(row[0])) if row else 0
            assert ended == 1, "no commit came to wait in the deferred trigger"
            answer = cut.result(30)
        owner.execute("DROP TRIGGER slow_commit ON detections")
        assert answer.status_code == 503, answer.text
        assert "may have been stored" in answer.json()["detail"]
        assert "not stored" not in answer.json()["detail"]
        assert answer.json()["stored"] == "unknown"  # what copbridge send reads
        retried = client.post(URL, json=example(id="cut"))
        assert retried.status_code == 202, retried.text
        _check_consistent(client, ["before", "cut"], [])
