"""Connections that stop answering are cut, so a silent database path fails instead of hanging.

A PostgreSQL behind a path that went silent (a node gone without a reset, a frozen proxy) leaves
a statement waiting for its answer forever: the group commit stalls, every request queued behind
it waits with it, and the connection never recovers after the path heals. libpq has no client-side
timeout, so a watcher thread shuts the socket of any statement still waiting past its limit; the
statement then fails at once (the callers get 503) and the next use reconnects. Written by hand:
the watch must wrap our own connection use, which no library does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from copbridge.logs import get_logger

_log = get_logger("copbridge.store")

_SWEEP_S = 0.1


class StallWatch:
    """Shuts the socket of a statement that has waited longer than ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._busy: dict[int, tuple[int, float]] = {}  # statement token -> (socket fd, deadline)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cuts = 0

    @contextlib.contextmanager
    def watching(self, fileno: int) -> Iterator[None]:
        token = object()
        key = id(token)
        with self._lock:
            self._busy[key] = (fileno, time.monotonic() + self.limit_s)
            if self._thread is None and not self._wake.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="copbridge-stall-watch", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(key, None)

    def close(self) -> None:
        """Stop the watcher (a store being closed has no statements left to watch)."""
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=2)

    def _run(self) -> None:
        while not self._wake.wait(_SWEEP_S):
            now = time.monotonic()
            # Cut under the lock: the statement's thread cannot leave ``watching`` (and so cannot
            # close the connection and free its descriptor for reuse) until the cut is done.
            with self._lock:
                stalled = [(k, fd) for k, (fd, due) in self._busy.items() if due <= now]
                for key, fd in stalled:
                    del self._busy[key]
                    _shut(fd)
                    self.cuts += 1
            for _ in stalled:
                _log.warning("database connection silent; cut it", waited_s=self.limit_s)


def _shut(fd: int) -> None:
    # shutdown() acts on the connection every descriptor of it shares, so the statement blocked
    # on the original descriptor wakes with an error; closing our duplicate leaves it open.
    try:
        dup = os.dup(fd)
    except OSError:
        return  # closed meanwhile: nothing left to cut
    with contextlib.suppress(OSError), socket.socket(fileno=dup) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class WatchedConnection:
    """A DB-API connection whose every statement runs under a :class:`StallWatch`."""

    def __init__(self, conn: Any, watch: StallWatch) -> None:
        self.raw = conn
        self.watch = watch
        self._born = watch.cuts

    @property
    def stale(self) -> bool:
        """True once any connection of the same store was cut after this one was made: a path
        that went silent for one most likely froze the idle ones too, and each of those would
        cost a request the whole silence limit when next used."""
        return self.watch.cuts != self._born

    def execute(self, sql: Any, params: Any = None, /) -> Any:
        with self.watch.watching(self.raw.fileno()):
            return self.raw.execute(sql, params)

    def cursor(self) -> _WatchedCursor:
        return _WatchedCursor(self)

    def close(self) -> None:
        self.raw.close()


class _WatchedCursor:
    def __init__(self, conn: WatchedConnection) -> None:
        self._conn = conn

    def executemany(self, sql: Any, rows: Sequence[Sequence[Any]]) -> None:
        raw = self._conn.raw
        with self._conn.watch.watching(raw.fileno()):
            raw.cursor().executemany(sql, rows)
