"""Someone edits the database behind our back: ``verify`` names the first broken record.

The triggers refuse UPDATE/DELETE through SQL, so each test first removes that guard the way an
intruder with file or superuser access would, then tampers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from copbridge.store import AuditEntry, SqlStore, open_store
from copbridge.store.audit_chain import UnreadableRecord
from copbridge.store.sqlite import path_from_url

Tamper = Callable[[str], None]


def _sqlite(url: str, *statements: str) -> None:
    conn = sqlite3.connect(path_from_url(url), isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        conn.execute("DROP TRIGGER IF EXISTS audit_append_only")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def _postgres(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit DISABLE TRIGGER USER")
        for sql in statements:
            conn.execute(sql)
        conn.execute("ALTER TABLE audit ENABLE TRIGGER USER")


def _edit(url: str, *statements: str) -> None:
    (_sqlite if url.startswith("sqlite") else _postgres)(url, *statements)


@pytest.fixture
def chained(store_url: str) -> tuple[str, SqlStore]:
    store = open_store(store_url)
    store.upgrade()
    store.append_audit([AuditEntry(kind=f"k{i}", subject=f"s{i}", data={"n": i}) for i in range(6)])
    assert store.verify_audit().ok
    return store_url, store


EDITS = {
    "kind": "UPDATE audit SET kind = 'forged' WHERE seq = 3",
    "subject": "UPDATE audit SET subject = 'someone else' WHERE seq = 3",
    "actor": "UPDATE audit SET actor = 'admin' WHERE seq = 3",
    "data": "UPDATE audit SET data = '{\"n\":99}' WHERE seq = 3",
    "at_us": "UPDATE audit SET at_us = at_us + 1 WHERE seq = 3",
    "hash": "UPDATE audit SET hash = '" + "f" * 64 + "' WHERE seq = 3",
    "prev_hash": "UPDATE audit SET prev_hash = '" + "e" * 64 + "' WHERE seq = 3",
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_editing_any_field_is_detected_at_that_record(
    chained: tuple[str, SqlStore], column: str
) -> None:
    url, store = chained
    try:
        _edit(url, EDITS[column])
        report = store.verify_audit()
        assert not report.ok
        # A forged hash is seen at the next record, whose link no longer matches.
        assert report.first_broken_seq in (3, 4)
        assert report.reason
    finally:
        store.close()


def test_deleting_a_record_is_detected(chained: tuple[str, SqlStore]) -> None:
    url, store = chained
    try:
        _edit(url, "DELETE FROM audit WHERE seq = 2")
        report = store.verify_audit()
        assert not report.ok
        assert report.first_broken_seq == 3
        assert "missing" in (report.reason or "")
    finally:
        store.close()


def test_reordering_records_is_detected(chained: tuple[str, SqlStore]) -> None:
    url, store = chained
    try:
        _edit(
            url,
            "UPDATE audit SET seq = 100 WHERE seq = 2",
            "UPDATE audit SET seq = 2 WHERE seq = 3",
            "UPDATE audit SET seq = 3 WHERE seq = 100",
        )
        report = store.verify_audit()
        assert not report.ok
        assert report.first_broken_seq == 2
    finally:
        store.close()


def test_untouched_chain_verifies(chained: tuple[str, SqlStore], tmp_path: Path) -> None:
    _, store = chained
    try:
        report = store.verify_audit()
        assert report.ok
        assert report.records == 6
    finally:
        store.close()


def test_a_record_numbered_outside_the_chain_is_detected(chained: tuple[str, SqlStore]) -> None:
    url, store = chained
    try:
        _edit(
            url,
            "INSERT INTO audit (seq, at_us, kind, actor, subject, data, prev_hash, hash) "
            "VALUES (0, 1, 'forged', NULL, NULL, '{}', 'x', 'y')",
        )
        report = store.verify_audit()
        assert not report.ok
        assert report.first_broken_seq == 0
        assert "outside the chain" in (report.reason or "")
    finally:
        store.close()


def test_data_stored_otherwise_than_hashed_is_detected(chained: tuple[str, SqlStore]) -> None:
    # Parsed, {"n":99,"n":3} is {"n":3} (the hash holds), but SQL's json_extract reads 99.
    url, store = chained
    try:
        _edit(url, 'UPDATE audit SET data = \'{"n":99,"n":3}\' WHERE seq = 4')
        report = store.verify_audit()
        assert not report.ok
        assert report.first_broken_seq == 4
        assert "not stored as it was hashed" in (report.reason or "")
    finally:
        store.close()


@pytest.mark.parametrize(
    "insert",
    [
        # SQLite fires no DELETE trigger for the row a REPLACE removes
        "INSERT OR REPLACE INTO audit (seq, at_us, kind, actor, subject, data, prev_hash, hash) "
        "SELECT seq, at_us, 'forged', actor, subject, data, prev_hash, hash FROM audit "
        "WHERE seq = 2",
        "INSERT INTO audit (seq, at_us, kind, actor, subject, data, prev_hash, hash) "
        "VALUES (0, 1, 'forged', NULL, NULL, '{}', 'x', 'y')",
        "INSERT INTO audit (seq, at_us, kind, actor, subject, data, prev_hash, hash) "
        "VALUES (-5, 1, 'forged', NULL, NULL, '{}', 'x', 'y')",
    ],
    ids=["replace", "zero", "negative"],
)
def test_the_database_refuses_a_record_not_appended_after_the_last(
    chained: tuple[str, SqlStore], insert: str
) -> None:
    url, store = chained
    try:
        if url.startswith("sqlite"):
            conn = sqlite3.connect(path_from_url(url), isolation_level=None)
            try:
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    conn.execute(insert)
            finally:
                conn.close()
        else:
            if insert.startswith("INSERT OR REPLACE"):
                insert = insert.replace("INSERT OR REPLACE", "INSERT") + " ON CONFLICT DO NOTHING"
            with (
                psycopg.connect(url, autocommit=True) as pg,
                pytest.raises(psycopg.errors.RaiseException, match="append-only"),
            ):
                pg.execute(insert)
        report = store.verify_audit()
        assert report.ok
        assert report.records == 6
    finally:
        store.close()


UNREADABLE = {
    "data-as-bytes": "UPDATE audit SET data = CAST(data AS BLOB) WHERE seq = 2",
    "data-not-json": "UPDATE audit SET data = 'not json' WHERE seq = 2",
    "data-an-array": "UPDATE audit SET data = '[1]' WHERE seq = 2",
    "data-nested-deep": "UPDATE audit SET data = '" + "[" * 100_000 + "' WHERE seq = 2",
    "time-as-text": "UPDATE audit SET at_us = 'soon' WHERE seq = 2",
    "actor-as-bytes": "UPDATE audit SET actor = X'41' WHERE seq = 2",
}


@pytest.mark.parametrize("edit", sorted(UNREADABLE))
def test_a_record_edited_into_something_unreadable_is_named_not_a_crash(
    edit: str, tmp_path: Path
) -> None:
    """verify (and the audit list) ended in a traceback (JSONDecodeError) on such a row, a 500
    over HTTP: the tool meant to report tampering fell over on it. (SQLite only: PostgreSQL's
    typed columns refuse these edits.)"""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    try:
        store.upgrade()
        store.append_audit([AuditEntry(kind=f"k{i}", data={"n": i}) for i in range(4)])
        _edit(url, UNREADABLE[edit])
        report = store.verify_audit()
        assert not report.ok
        assert (report.first_broken_seq, report.records) == (2, 2)
        assert (report.reason or "").startswith("record 2 cannot be read: ")
        with pytest.raises(UnreadableRecord, match="record 2 cannot be read"):
            store.audit_records(limit=10)
    finally:
        store.close()
