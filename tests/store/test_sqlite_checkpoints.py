"""SQLite checkpoints happen beside the writer, never inside a commit: the writer's connection
has SQLite's automatic checkpoint off, a checkpointer thread copies committed frames every
second, and the WAL file is given back (truncated) once writes pause."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from copbridge.store import open_store
from copbridge.store.sqlite import SqliteStore
from tests.store.factories import detection

DESTS = ("tcp://127.0.0.1:9",)


def _wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_commits_do_not_checkpoint_and_the_checkpointer_does(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = open_store(f"sqlite:///{db}", checkpoint_every_s=0.5)
    assert isinstance(store, SqliteStore)
    try:
        store.upgrade()
        autocheckpoint = store._writer.run(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        for i in range(40):
            store.accept_detections([detection(f"cp{i}")], DESTS)
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 0
        # Frames are copied in the background; once writes pause, the file is truncated.
        assert _wait_for(lambda: wal.stat().st_size == 0, 6.0), wal.stat().st_size
        with sqlite3.connect(db) as other:
            count = other.execute("SELECT count(*) FROM detections").fetchone()[0]
        assert count == 40
    finally:
        store.close()


def test_close_stops_the_checkpointer_thread(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'stop.db'}")
    assert isinstance(store, SqliteStore)
    store.upgrade()
    thread = store._checkpointer._thread
    assert thread.is_alive()
    store.close()
    assert not thread.is_alive()
