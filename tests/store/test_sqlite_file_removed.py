"""The SQLite file (or its WAL) removed or replaced behind the service's back: SQLite goes on
writing to the unlinked file without an error, so every commit after it would be lost. Such a
commit is refused (503), no empty database is made in its place, and writing resumes once
the file is back."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from copbridge.store import SqlStore, StoreUnavailable, open_store
from copbridge.store.intake import Intake, accept
from copbridge.store.tx import Tx
from tests.store.factories import detection

DEST = "tcp://127.0.0.1:8087"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "copbridge.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqlStore]:
    opened = open_store(f"sqlite:///{path}")
    opened.upgrade()
    try:
        yield opened
    finally:
        opened.close()


def _accepted(store: SqlStore, detection_id: str) -> bool:
    [answer] = store.accept_detections([detection(detection_id)], [DEST])
    return answer.outcome == "accepted"


def _remove(path: Path, suffixes: tuple[str, ...] = ("", "-wal", "-shm")) -> None:
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_database_removed_while_open_takes_no_write_until_it_is_back(
    store: SqlStore, path: Path, tmp_path: Path
) -> None:
    assert _accepted(store, "before")
    backup = tmp_path / "backup.db"
    with (
        contextlib.closing(sqlite3.connect(path)) as src,
        contextlib.closing(sqlite3.connect(backup)) as dst,
    ):
        src.backup(dst)
    _remove(path)

    for lost in ("lost-1", "lost-2"):
        with pytest.raises(StoreUnavailable):
            _accepted(store, lost)
    assert not path.exists(), "an empty database was made in place of the removed one"
    with pytest.raises(StoreUnavailable):
        store.ping()

    backup.rename(path)  # the operator puts it back
    assert _accepted(store, "after")
    assert store.get_detection("before") is not None
    assert store.get_detection("lost-1") is None
    assert store.verify_audit().ok


def test_a_commit_into_a_file_removed_meanwhile_is_refused(store: SqlStore, path: Path) -> None:
    """The file goes between the batch's BEGIN and its COMMIT: the commit succeeds into the
    unlinked file, and its callers must hear that nothing of it is stored."""
    assert _accepted(store, "before")

    def accept_then_lose_the_file(tx: Tx) -> object:
        answers = accept(tx, [Intake((detection("lost"),), (DEST,))])
        _remove(path)
        return answers

    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        store._write_now(accept_then_lose_the_file)


def test_a_wal_removed_while_open_stops_the_store_until_a_restart(
    store: SqlStore, path: Path
) -> None:
    """The open connections share an index of the removed log (-shm), which SQLite rebuilds
    only once every connection has closed: a reader went on reading through it ("file is not a
    database") and a checkpoint could copy garbage into the file. So no commit is answered as
    stored, nothing is read, and the store is not ready until copbridge restarts; then what is
    answered as stored is on disk and the file is sound."""
    assert _accepted(store, "before")
    _remove(path, ("-wal",))
    for lost in ("lost-1", "lost-2"):
        with pytest.raises(StoreUnavailable, match="restart copbridge"):
            _accepted(store, lost)
    with pytest.raises(StoreUnavailable, match="restart copbridge"):
        store.get_detection("before")
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()

    restarted = open_store(f"sqlite:///{path}")
    try:
        assert _accepted(restarted, "after")
        with contextlib.closing(sqlite3.connect(path)) as other:
            found = other.execute("SELECT count(*) FROM detections WHERE id = 'after'").fetchone()
            assert found == (1,)
            assert other.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        restarted.close()
