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
import itertools
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

from copbridge.logs import get_logger

_log = get_logger("copbridge.store")

_SWEEP_S = 0.1
_IDLE_SWEEPS = 50


class StallWatch:
    """Shuts the socket of a statement that has waited longer than ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        # token -> (socket, deadline, who): ``who`` names the server side of the connection
        self._busy: dict[int, tuple[socket.socket, float, Hashable]] = {}
        self._orphans: set[Hashable] = set()
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cuts = 0

    @contextlib.contextmanager
    def watching(self, sock: socket.socket, who: Hashable = None) -> Iterator[None]:
        with self._lock:
            key = next(self._tokens)
            self._busy[key] = (sock, time.monotonic() + self.limit_s, who)
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

    def take_orphans(self) -> set[Hashable]:
        """The server sides of cut connections (as given to ``watching``), not yet ended: the
        server never heard of the cut, so a transaction there may still hold locks."""
        with self._lock:
            orphans, self._orphans = self._orphans, set()
        return orphans

    def give_back(self, orphans: set[Hashable]) -> None:
        with self._lock:
            self._orphans |= orphans

    def cut_all(self) -> None:
        """Cut every connection still waiting (a store shutting down will not wait for them)."""
        self._cut(math.inf)

    def close(self) -> None:
        """Stop the watcher (a store being closed has no statements left to watch)."""
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=2)

    def _run(self) -> None:
        idle = 0
        while not self._wake.wait(_SWEEP_S):
            self._cut(time.monotonic())
            with self._lock:
                idle = 0 if self._busy else idle + 1
                if idle >= _IDLE_SWEEPS:  # nothing to watch for a while: the next one restarts it
                    self._thread = None
                    return

    def _cut(self, now: float) -> None:
        with self._lock:
            stalled = [(k, sock, who) for k, (sock, due, who) in self._busy.items() if due <= now]
            for key, sock, who in stalled:
                del self._busy[key]
                if who is not None:
                    self._orphans.add(who)
                # shutdown() acts on the connection that every descriptor of it shares, so the
                # statement blocked on libpq's descriptor wakes with an error at once.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.cuts += len(stalled)
        for _ in stalled:
            _log.warning("database connection silent; cut it", waited_s=self.limit_s)


class WatchedConnection:
    """A DB-API connection whose every statement runs under a :class:`StallWatch`.

    It holds its own duplicate of the connection's socket: libpq closes its descriptor when the
    connection breaks, and the number may then be reused by any other socket of the process; the
    duplicate always names this connection, so a late cut can never hit a stranger.
    """

    def __init__(self, conn: Any, watch: StallWatch, born: int) -> None:
        self.raw = conn
        self.watch = watch
        self.who: Hashable = None  # the server side's identity, once known
        self._born = born  # the watch's cut count read before connecting
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._closed = weakref.finalize(self, self._sock.close)

    @property
    def stale(self) -> bool:
        """True once any connection of the same store was cut after this one was made: a path
        that went silent for one most likely froze the idle ones too, and each of those would
        cost a request the whole silence limit when next used."""
        return self.watch.cuts != self._born

    @property
    def broken(self) -> bool:
        """The server ended the connection (a restart, an administrator): a new one is needed."""
        return bool(getattr(self.raw, "broken", False))

    def execute(self, sql: Any, params: Any = None, /) -> Any:
        with self.watch.watching(self._sock, self.who):
            return self.raw.execute(sql, params)

    def cursor(self) -> _WatchedCursor:
        return _WatchedCursor(self)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            self._closed()


class _WatchedCursor:
    def __init__(self, conn: WatchedConnection) -> None:
        self._conn = conn

    def executemany(self, sql: Any, rows: Sequence[Sequence[Any]]) -> None:
        conn = self._conn
        with conn.watch.watching(conn._sock, conn.who):
            conn.raw.cursor().executemany(sql, rows)
