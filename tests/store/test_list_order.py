"""Replicas sharing one PostgreSQL: a reader that follows ``GET /detections``' cursor (the seq
of the last row it saw) never passes over a detection that a slower replica commits later."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from copbridge.store import DetectionQuery, SqlStore
from tests.store.factories import SECOND_US, detection, event

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

DEST = "tcp://127.0.0.1:8087"


def _follow(reader: SqlStore, cursor: int | None) -> tuple[list[str], int | None]:
    """Page through the list one row at a time, as a client keeping up with new detections."""
    seen: list[str] = []
    while page := reader.list_detections(DetectionQuery(after_seq=cursor, limit=1)):
        seen += [row.id for row in page]
        cursor = page[-1].seq
    return seen, cursor


def test_a_cursor_never_passes_a_detection_a_slower_replica_commits_later(
    replicas: list[SqlStore], pg_url: str
) -> None:
    """A has numbered its detection and waits on a row lock (another session holds the
    platform mark of A's sensor) when B's later detection is written. The reader must not be
    shown B's before A's: B's commit waits for A's."""
    a, b, reader = replicas
    b.accept_detections([detection("seed")], [DEST])
    slow = dataclasses.replace(
        detection("from-a", sensor="slow-cam"),
        platform_event=event("copbridge.slow-cam", kind="platform"),
        platform_interval_us=SECOND_US,
    )
    with psycopg.connect(pg_url) as holder, psycopg.connect(pg_url, autocommit=True) as watch:
        holder.execute("INSERT INTO platform_marks (sensor_id, emitted_us) VALUES ('slow-cam', 0)")
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(a.accept_detections, [slow], [DEST])
            _wait_for_lock_waits(watch, 1)
            later = pool.submit(b.accept_detections, [detection("from-b")], [DEST])
            time.sleep(0.5)  # B's commit lands here unless it waits for A's
            seen, cursor = _follow(reader, None)
            holder.rollback()
            [first] = held.result(10)
            [second] = later.result(10)
    more, _ = _follow(reader, cursor)

    assert (first.outcome, second.outcome) == ("accepted", "accepted")
    assert seen == ["seed"]
    assert seen + more == ["seed", "from-a", "from-b"]


def _wait_for_lock_waits(conn: psycopg.Connection[tuple[object, ...]], count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        if row is not None and int(str(row[0])) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} sessions came to wait on a lock in 10 s")
