"""SQLite adapter, the embedded default: WAL, synchronous=FULL, BEGIN IMMEDIATE, checkpoints.

One writer connection per process (the group-commit thread); readers get their own connections.

Checkpoints never run inside a commit: SQLite's automatic one (every 1,000 WAL pages, ~2.7 s
at 500 detections/s) copied pages and synced the database file within the commit that crossed
the mark, and the periodic TRUNCATE ran on the writer's connection; each stalled every request
behind it for ~100-150 ms (measured at a fixed 500/s: p50 jumped to 30-70 ms for half a second
every few seconds). A checkpointer thread with its own connection now copies committed frames
every second without taking the write lock (PASSIVE), and truncates the WAL file (giving the
disk back) at most every ``checkpoint_every_s``, only once writes have paused, with a short busy
timeout. Under steady load the WAL file is bounded by ``journal_size_limit`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from copbridge.store.errors import StoreUnavailable
from copbridge.store.records import DetectionRecord, ImageBlob
from copbridge.store.sql import SqlStore
from copbridge.store.tx import Dialect, Tx
from copbridge.store.writer import DEFAULT_MAX_DELAY_S, BatchObserver

DIALECT = Dialect(
    name="sqlite", begin_write="BEGIN IMMEDIATE", skip_locked="", audit_lock=None, claim_lock=None
)

BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
PASSIVE_EVERY_S = 1.0
TRUNCATE_BUSY_TIMEOUT_MS = 100
QUIET_S = 2.0

_log = logging.getLogger("copbridge.store")
_IMAGE_WRITERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="image-write")


def path_from_url(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url}")
    return Path(url.removeprefix("sqlite:///"))


class _Connection(sqlite3.Connection):
    """A connection that knows which files it opened. The database file (or its WAL) can be
    removed or replaced at its path while the connection stays open, and SQLite then goes on
    writing to the unlinked file without an error: every commit after it would be lost."""

    file_id: tuple[int, int] | None = None
    wal_id: tuple[int, int] | None = None


def _file_id(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class _Files:
    """The database's files as this process opened them. A commit that finds other files at the
    path fails its batch; a connection about to be used whose file is gone is replaced. A
    write-ahead log removed or replaced under open connections cannot be recovered from in
    this process: the connections share an index of the old log (the -shm file), which SQLite
    rebuilds only when every connection to the database has closed. From then on this store
    serves nothing and says to restart."""

    def __init__(self, path: Path, max_pages: int | None) -> None:
        self.path = path
        self.wal = f"{path}-wal"
        self._max_pages = max_pages
        self.wal_lost: str | None = None

    def open(self, timeout: float, configure: Callable[[_Connection], object]) -> _Connection:
        """A connection that knows the files it opened. mode=rw: it never creates the file. One
        removed behind our back must stay an error (503, not ready) until it is back, not become
        an empty database (SqliteStore makes the file once, when it is first opened)."""
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=rw",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=timeout,
            factory=_Connection,
        )
        conn.file_id = _file_id(self.path)
        configure(conn)
        conn.wal_id = _file_id(self.wal)  # None until the first write makes it
        return conn

    def connect(self) -> _Connection:
        """A connection of the writer or a reader."""
        if self.wal_lost is not None:
            raise StoreUnavailable(self.wal_lost)
        return self.open(5.0, lambda conn: _configure(conn, self.path, self._max_pages))

    def replaced(self, conn: _Connection) -> bool:
        if conn.file_id is None or _file_id(self.path) != conn.file_id:
            return True
        if conn.wal_id is not None and _file_id(self.wal) != conn.wal_id:
            self.lose_wal()
            return True
        return self.wal_lost is not None

    def commit(self, conn: _Connection) -> None:
        """COMMIT, then check it went into the files at the path. The WAL stays while any
        connection is open (a checkpoint truncates it, never removes it), so after a commit it
        must be there, and be the one this connection first wrote to."""
        conn.execute("COMMIT")
        if conn.file_id is None or _file_id(self.path) != conn.file_id:
            raise StoreUnavailable(
                f"the database file {self.path} was removed or replaced while in use: what "
                "this commit wrote is not in it"
            )
        wal = _file_id(self.wal)
        if wal is not None and conn.wal_id is None:
            conn.wal_id = wal
        elif wal is None or wal != conn.wal_id:
            self.lose_wal()
        if self.wal_lost is not None:
            raise StoreUnavailable(self.wal_lost)

    def lose_wal(self) -> None:
        if self.wal_lost is None:
            self.wal_lost = (
                f"the write-ahead log {self.wal} was removed or replaced while in use: what it "
                "held that was not yet in the database is gone; restart copbridge (until then "
                "it neither reads nor writes this database)"
            )
            _log.error(self.wal_lost)


def _begin_nowait(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE that fails at once (SQLITE_BUSY) when another connection writes."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute(DIALECT.begin_write)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _is_busy(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF == 5


def _configure(conn: sqlite3.Connection, path: Path, max_pages: int | None) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")


class _Checkpointer:
    """Copies committed WAL frames into the database file beside the writer, never inside a
    commit: PASSIVE every second, TRUNCATE (to give the disk back) when writes have paused."""

    def __init__(self, files: _Files, truncate_every_s: float) -> None:
        self._files = files
        self._path = files.path
        self._truncate_every_s = truncate_every_s
        self._stop = threading.Event()
        self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: _Connection | None = None
        last_truncate = time.monotonic()
        while not self._stop.wait(PASSIVE_EVERY_S):
            # Let go of a file removed or replaced; with the WAL replaced, a checkpoint would
            # copy garbage into the file, so none runs any more.
            if conn is not None and self._files.replaced(conn):
                conn.close()
                conn = None
            if self._files.wal_lost:
                continue
            if conn is None and not self._path.exists():
                continue  # nothing written yet
            try:
                if conn is None:
                    conn = self._files.open(
                        0.1,
                        lambda c: c.execute(f"PRAGMA busy_timeout = {TRUNCATE_BUSY_TIMEOUT_MS}"),
                    )
                if time.monotonic() - last_truncate >= self._truncate_every_s and self._quiet():
                    last_truncate = time.monotonic()
                    # TRUNCATE resets the WAL to zero bytes when no reader holds an old
                    # snapshot; otherwise it does what it can and a later round finishes.
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                else:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # a full disk, a vanished file: the next round retries
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    _log.warning("sqlite checkpoint failed: %s", exc)
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def _quiet(self) -> bool:
        """No commit for QUIET_S: a truncated WAL has to grow again, and growing the file makes
        each following commit's sync slower (measured: ~1.5 s of 50-90 ms answers at 500/s after
        a TRUNCATE under load), so the file is only given back while nobody writes."""
        try:
            wal = os.stat(self._files.wal)
        except FileNotFoundError:
            return False
        return wal.st_size > 0 and time.time() - wal.st_mtime >= QUIET_S

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    )


class SqliteStore(SqlStore):
    """The store in one SQLite file."""

    writes_on_loop = True
    keeps_image_files = True

    def __init__(
        self,
        path: Path,
        *,
        checkpoint_every_s: float = 30.0,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        max_items: int = 512,
        max_page_count: int | None = None,
        observe: BatchObserver | None = None,
        images_dir: Path | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            sqlite3.connect(path).close()  # the one place the database file is made
        self.path = path
        self.images_dir = images_dir or self.legacy_images_dir
        files = _Files(path, max_page_count)
        self._files = files
        super().__init__(
            dialect=DIALECT,
            connect=files.connect,
            commit=files.commit,
            is_stale=files.replaced,
            begin_nowait=_begin_nowait,
            is_busy=_is_busy,
            busy_wait_s=BUSY_TIMEOUT_MS / 1000,
            is_store_error=_is_store_error,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )
        self._checkpointer = _Checkpointer(files, checkpoint_every_s)

    def close(self) -> None:
        self._checkpointer.stop()
        super().close()

    # Images live on disk (content-addressed), not in the WAL: in the service's data directory
    # (``COPBRIDGE_DATA_DIR/images``, the contract's place), or next to the database file when
    # no directory is given (where versions before it kept them, and read from there still).

    @property
    def legacy_images_dir(self) -> Path:
        return self.path.parent / "images"

    def _image_path(self, sha256: str, folder: Path | None = None) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("an image is named by its lowercase hex SHA-256")
        return (folder or self.images_dir) / sha256[:2] / sha256

    def keep_image_files(self, images: Sequence[ImageBlob]) -> None:
        """Write each new image file and sync it (concurrently: the file system's journal then
        commits many syncs together — one at a time, a 1,000-image batch took ~4 s) and sync the
        folders; the rows come after, in their own commit or the detections' (a crash leaves at
        most unreferenced files, never a row without its file)."""
        fresh = {i.sha256: i for i in images if not self._image_path(i.sha256).exists()}
        try:
            list(_IMAGE_WRITERS.map(self._write_image_file, fresh.values()))
            # Every image's folder, not only the new files': a file another request has just
            # renamed into place may not have its folder entry on disk yet.
            for folder in {self._image_path(i.sha256).parent for i in images}:
                _fsync_dir(folder)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store the image: {exc.strerror}") from exc

    def forget_image_files(self, sha256s: Sequence[str]) -> None:
        """In the writer, so no commit of an image row can fall between the check and the
        delete; a commit after it writes the file again (``_ensure_image_files``)."""
        names = sorted(set(sha256s))
        if not names:
            return

        def job(tx: Tx) -> None:
            marks = ",".join("?" * len(names))
            named = {
                r[0] for r in tx.all(f"SELECT sha256 FROM images WHERE sha256 IN ({marks})", names)
            }
            for sha256 in names:
                if sha256 not in named:
                    self._image_path(sha256).unlink(missing_ok=True)

        self._write(job).add_done_callback(_log_forget_failure)

    def _ensure_image_files(self, records: Sequence[DetectionRecord]) -> None:
        """Each image file of the detections this commit writes, again if it went missing since
        ``keep_image_files`` (a refused request's image of the same bytes, forgotten meanwhile)."""
        images = [r.image for r in records if r.image is not None]
        missing = [i for i in images if not self._image_path(i.sha256).exists()]
        if missing:  # rare: the usual commit stats its files and syncs nothing
            self.keep_image_files(missing)

    def _write_image_file(self, image: ImageBlob) -> None:
        target = self._image_path(image.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        try:
            with partial.open("wb") as out:
                out.write(image.data)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(target)
        except OSError:
            partial.unlink(missing_ok=True)
            raise

    def get_image(self, sha256: str) -> tuple[str, bytes] | None:
        row = self._read(
            lambda tx: tx.one("SELECT media_type FROM images WHERE sha256 = ?", (sha256,))
        )
        if row is None:
            return None
        for folder in dict.fromkeys((self.images_dir, self.legacy_images_dir)):
            # The same name is the same bytes, whichever folder holds it.
            with contextlib.suppress(FileNotFoundError):
                return str(row[0]), self._image_path(sha256, folder).read_bytes()
        return None


def _log_forget_failure(done: Future[None]) -> None:
    error = done.exception()
    if error is not None:  # the file stays: unreferenced, never served
        _log.warning("cannot delete an unreferenced image file: %s", error)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
