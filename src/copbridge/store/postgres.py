"""PostgreSQL adapter (psycopg 3) for several replicas sharing one store.

Claims use ``FOR UPDATE SKIP LOCKED``; audit appends take a transaction-scoped advisory lock.
"""

from __future__ import annotations

import psycopg

from copbridge.store.sql import SqlStore
from copbridge.store.stalls import StallWatch, WatchedConnection
from copbridge.store.tx import Dialect
from copbridge.store.writer import BatchObserver

DIALECT = Dialect(
    name="postgresql",
    begin_write="BEGIN",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    audit_lock="SELECT pg_advisory_xact_lock(7461002)",
)

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 30
SILENCE_LIMIT_S = STATEMENT_TIMEOUT_S + 5
"""A statement still without an answer this long after the server's own timeout would have
ended it is talking to a silent path: its connection is cut (see ``store.stalls``)."""


def _connect(url: str, stalls: StallWatch) -> WatchedConnection:
    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="copbridge",
        # A peer that vanished (no FIN, no RST) is noticed by the kernel: unacknowledged data
        # after 15 s, an idle connection after 10 + 3 x 5 s of unanswered keepalives.
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=15_000,
    )
    conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'")
    return WatchedConnection(conn, stalls)


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.InternalError_) or (
        isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.IntegrityError)
    )


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        max_delay_s: float = 0.002,
        max_items: int = 512,
        observe: BatchObserver | None = None,
        silence_limit_s: float = SILENCE_LIMIT_S,
    ) -> None:
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.stalls = StallWatch(silence_limit_s)
        super().__init__(
            dialect=DIALECT,
            connect=lambda: _connect(self.url, self.stalls),
            is_store_error=_is_store_error,
            is_stale=lambda conn: bool(conn.stale),
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )

    def close(self) -> None:
        super().close()
        self.stalls.close()
