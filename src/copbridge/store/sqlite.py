"""SQLite adapter, the embedded default: WAL, synchronous=FULL, BEGIN IMMEDIATE, checkpoints.

One writer connection per process (the group-commit thread); readers get their own connections.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from copbridge.store.errors import StoreUnavailable
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

    writes_on_loop = True

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

    # Images live on disk next to the database file (content-addressed), not in the WAL.

    @property
    def images_dir(self) -> Path:
        return self.path.parent / "images"

    def _image_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("an image is named by its lowercase hex SHA-256")
        return self.images_dir / sha256[:2] / sha256

    def put_image(self, sha256: str, media_type: str, data: bytes) -> None:
        target = self._image_path(sha256)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            try:
                with partial.open("wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                partial.replace(target)
                _fsync_dir(target.parent)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise StoreUnavailable(f"cannot store the image: {exc.strerror}") from exc
        self._write_now(
            lambda tx: tx.execute(
                "INSERT INTO images (sha256, media_type, size, data, created_us) "
                "VALUES (?,?,?,NULL,?) ON CONFLICT (sha256) DO NOTHING",
                (sha256, media_type, len(data), time.time_ns() // 1000),
            )
        )

    def get_image(self, sha256: str) -> tuple[str, bytes] | None:
        row = self._read(
            lambda tx: tx.one("SELECT media_type FROM images WHERE sha256 = ?", (sha256,))
        )
        if row is None:
            return None
        try:
            return str(row[0]), self._image_path(sha256).read_bytes()
        except FileNotFoundError:
            return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
