"""PostgreSQL adapter (psycopg 3) for several replicas sharing one store.

Claims use ``FOR UPDATE SKIP LOCKED`` under a transaction-scoped advisory lock per destination;
audit appends take one of their own.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from copbridge.logs import get_logger
from copbridge.store.errors import MigrationError
from copbridge.store.sql import SqlStore
from copbridge.store.stalls import StallWatch, WatchedConnection
from copbridge.store.tx import Dialect
from copbridge.store.writer import DEFAULT_MAX_DELAY_S, BatchObserver

DIALECT = Dialect(
    name="postgresql",
    begin_write="BEGIN",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    audit_lock="SELECT pg_advisory_xact_lock(7461002)",
    # Claims of one destination take turns, so none misses a lease another has just set (READ
    # COMMITTED would show the row unleased, SKIP LOCKED would pass over it, and a newer row of
    # its uid would go out beside it). Only tried, never waited for: the group commit may hold
    # the audit lock already, and a replica holding this one may be waiting for that.
    claim_lock="SELECT pg_try_advisory_xact_lock(7461003, hashtext(?))",
)

_log = get_logger("copbridge.store")

CONNECT_TIMEOUT_S = 5
SILENCE_LIMIT_S = 35.0
"""A statement still unanswered this long is talking to a silent path: its connection is cut
(see ``store.stalls``). The server ends our statements 5 s before that (``statement_timeout``),
so a slow but healthy statement fails there first, with PostgreSQL's own error."""
SERVER_GRACE_S = 5.0


def _connect(url: str, stalls: StallWatch) -> WatchedConnection:
    born = stalls.cuts  # read first: a cut during the connect makes this connection stale too
    statement_timeout_ms = int(max(1.0, stalls.limit_s - SERVER_GRACE_S) * 1000)
    # idle_in_transaction_session_timeout (twice the limit; our transactions never pause for
    # long): a transaction whose client was cut mid-way, the server never hearing of it, would
    # otherwise hold the audit chain's lock, and with it every replica's ingest, until the
    # server's keepalives notice (2 h by default; ~25 s with the settings below, when the peer
    # is really gone rather than a frozen proxy that still answers them).
    idle_in_transaction_ms = int(2 * stalls.limit_s * 1000)
    server = (
        f"-c statement_timeout={statement_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={idle_in_transaction_ms}"
        " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
    )
    # Sent with the startup packet (covered by connect_timeout), after the URL's own options.
    # The URL's options, else PGOPTIONS (an explicit options= would silently override it).
    given = conninfo_to_dict(url).get("options") or os.environ.get("PGOPTIONS")
    conn = psycopg.connect(
        make_conninfo(url, options=f"{given} {server}" if given else server),
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
    try:
        watched = WatchedConnection(conn, stalls, born)
        row = watched.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        watched.who = (int(row[0]), row[1]) if row else None
        _end_orphans(watched, stalls)
    except BaseException:
        conn.close()
        raise
    return watched


def _end_orphans(conn: WatchedConnection, stalls: StallWatch) -> None:
    """End the server sides of connections cut earlier. The server never heard of those cuts: a
    backend left waiting for the rest of a message is neither idle in a transaction nor running
    a statement, so no server timeout ends it, and its transaction keeps the audit chain's lock
    (every replica's ingest waits on it). Matched by pid and start time, so a pid the server
    has since given to another session is never touched."""
    orphans = stalls.take_orphans()
    if not orphans:
        return
    pids, starts = zip(*orphans, strict=True)
    try:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a "
            "JOIN unnest(%s::int[], %s::timestamptz[]) AS o(pid, started) "
            "ON a.pid = o.pid AND a.backend_start = o.started",
            (list(pids), list(starts)),
        ).fetchone()
    except BaseException:
        stalls.give_back(orphans)
        raise
    _log.warning("ended backends of cut connections", ended=int(row[0]) if row else 0)


def _grant_serving_role(conn: WatchedConnection, role: str) -> None:
    row = conn.execute(
        "SELECT current_user, current_schema(), EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
        (role,),
    ).fetchone()
    if row is None or not row[2]:
        raise MigrationError(f"there is no PostgreSQL role {role!r}")
    if row[0] == role:
        raise MigrationError(
            f"{role!r} runs the migrations and owns the tables: serve with another role"
        )
    schema, who = sql.Identifier(str(row[1])), sql.Identifier(role)
    for statement in (
        "GRANT USAGE ON SCHEMA {schema} TO {who}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {who}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {who}",
        # and on what later migrations create (run by this same owner): an upgrade without
        # --serving-role left serve refused on the new tables (0002's outbox_purged)
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema}"
        " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {who}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {who}",
        "REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit FROM {who}",
        "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
        " ON schema_migrations FROM {who}",
    ):
        conn.execute(sql.SQL(statement).format(schema=schema, who=who))


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
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
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
            # A connection lost during COMMIT may have lost it before or after the server made
            # it durable. (SQLite's COMMIT either returns or left nothing.)
            commit_in_doubt=lambda exc: isinstance(exc, psycopg.OperationalError),
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )

    def grant_serving_role(self, role: str) -> None:
        """Let ``role`` serve from this database without owning it: read and write every table
        but ``audit`` (SELECT and INSERT only) and ``schema_migrations`` (SELECT only). The audit
        trigger then binds it for good: only a table's owner (or a superuser) may disable a
        trigger, and the owner is the role that ran the migrations, not ``role``."""
        self._writer.run(lambda conn: _grant_serving_role(conn, role))

    def close(self) -> None:
        # A statement stuck on a silent path would outlive the writer's join: cut it first.
        self.stalls.cut_all()
        super().close()
        self.stalls.close()
