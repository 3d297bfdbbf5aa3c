"""SQLite adapter, the embedded default: WAL, synchronous=FULL, BEGIN IMMEDIATE, checkpoints.

One writer connection per process (the group-commit thread); readers get their own connections.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from copbridge.store.sql import SqlStore
from copbridge.store.tx import Dialect
from copbridge.store.writer import BatchObserver

DIALECT = Dialect(name="sqlite", begin_write="BEGIN IMMEDIATE", skip_locked="", audit_lock=None)

BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def path_from_url(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url}")
    return Path(url.removeprefix("sqlite:///"))


def _connect(path: Path, max_pages: int | None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
    return conn


def _checkpoint(conn: sqlite3.Connection) -> None:
    # TRUNCATE resets the WAL to zero bytes when no reader holds an old snapshot; otherwise it
    # checkpoints what it can and the next round finishes the job, so the WAL stays bounded.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    )


class SqliteStore(SqlStore):
    """The store in one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        checkpoint_every_s: float = 30.0,
        max_delay_s: float = 0.002,
        max_items: int = 512,
        max_page_count: int | None = None,
        observe: BatchObserver | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        super().__init__(
            dialect=DIALECT,
            connect=lambda: _connect(path, max_page_count),
            is_store_error=_is_store_error,
            idle=_checkpoint,
            idle_every_s=checkpoint_every_s,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )

    def checkpoint(self) -> None:
        self._writer.run(_checkpoint)
