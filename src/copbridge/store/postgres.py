"""PostgreSQL adapter (psycopg 3) for several replicas sharing one store.

Claims use ``FOR UPDATE SKIP LOCKED``; audit appends take a transaction-scoped advisory lock.
"""

from __future__ import annotations

import psycopg

from copbridge.store.sql import SqlStore
from copbridge.store.tx import Dialect
from copbridge.store.writer import BatchObserver

DIALECT = Dialect(
    name="postgresql",
    begin_write="BEGIN",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    audit_lock="SELECT pg_advisory_xact_lock(7461002)",
)

CONNECT_TIMEOUT_S = 5


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="copbridge"
    )
    conn.execute("SET statement_timeout = '30s'")
    return conn


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
    ) -> None:
        self.url = url.replace("postgres://", "postgresql://", 1)
        super().__init__(
            dialect=DIALECT,
            connect=lambda: _connect(self.url),
            is_store_error=_is_store_error,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )
