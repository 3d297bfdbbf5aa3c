"""The store port implemented once in portable SQL; the adapters supply connections and dialect.

Writes go through the group-commit writer; reads use a connection per calling thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from copbridge.store import audit_log, intake
from copbridge.store.audit_chain import verify_chain
from copbridge.store.errors import StoreUnavailable
from copbridge.store.migrations import apply_migrations, current_version
from copbridge.store.records import (
    Acceptance,
    ApiKeyRecord,
    AuditEntry,
    AuditRecord,
    ChainReport,
    DetectionQuery,
    DetectionRecord,
    FeedEvent,
    ImageBlob,
    OutboxItem,
    OutboxStats,
    RefreshTokenRecord,
    StoredDetection,
)
from copbridge.store.tx import Dialect, Tx, chunks, placeholders
from copbridge.store.writer import DEFAULT_MAX_DELAY_S, BatchObserver, GroupWriter, ended_at_once

T = TypeVar("T")

_DETECTION_COLUMNS = (
    "id, seq, time_us, received_us, sensor_id, label, detection, answer, cot_xml, image_sha256"
)
_CLAIM_LOCK_WAIT_S = 1.0
_KEY_COLUMNS = "key_id, name, secret_hash, scopes, created_us, expires_us, last_used_us, revoked_us"
_REFRESH_COLUMNS = "jti, family, key_id, issued_us, expires_us, used_us, revoked_us"


def _now_us() -> int:
    return time.time_ns() // 1000


class SqlStore:
    """Shared implementation of :class:`copbridge.store.port.Store`."""

    writes_on_loop = False
    keeps_image_files = False

    def __init__(
        self,
        *,
        dialect: Dialect,
        connect: Callable[[], Any],
        is_store_error: Callable[[BaseException], bool],
        is_stale: Callable[[Any], bool] = lambda _: False,
        commit: Callable[[Any], object] = lambda c: c.execute("COMMIT"),
        commit_in_doubt: Callable[[BaseException], bool] = lambda _: False,
        begin_nowait: Callable[[Any], None] | None = None,
        is_busy: Callable[[BaseException], bool] = lambda _: False,
        busy_wait_s: float = 5.0,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        max_items: int = 512,
        observe: BatchObserver | None = None,
    ) -> None:
        self._dialect = dialect
        self._is_stale = is_stale
        self._connect = connect
        self._is_store_error = is_store_error
        self._local = threading.local()
        self._intake: list[tuple[intake.Intake, Future[list[Acceptance]]]] = []
        self._intake_lock = threading.Lock()
        self._intake_scheduled = False
        self._readers: list[_Reader] = []
        self._closed = False
        self._ingested_at = 0.0  # time.monotonic() of the last detections committed
        self._readers_lock = threading.Lock()
        self._writer: GroupWriter[Any] = GroupWriter(
            connect=connect,
            begin=lambda c: c.execute(dialect.begin_write),
            commit=commit,
            rollback=lambda c: c.execute("ROLLBACK"),
            savepoint=lambda c, sql: c.execute(sql),
            is_store_error=is_store_error,
            close=lambda c: c.close(),
            is_stale=is_stale,
            commit_in_doubt=commit_in_doubt,
            begin_nowait=begin_nowait,
            is_busy=is_busy,
            busy_wait_s=busy_wait_s,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self._dialect.name

    def _write(self, job: Callable[[Tx], T]) -> Future[T]:
        dialect = self._dialect
        return self._writer.submit(lambda conn: job(Tx(conn, dialect)))

    def _write_now(self, job: Callable[[Tx], T]) -> T:
        dialect = self._dialect
        return self._writer.run(lambda conn: job(Tx(conn, dialect)), timeout=60)

    async def attach_loop(self) -> None:
        """Run writes on the calling event loop (see ``GroupWriter.attach``) when the adapter
        allows it: SQLite only, whose statements never wait on a network."""
        if self.writes_on_loop:
            await self._writer.attach()

    async def detach_loop(self) -> None:
        await self._writer.detach()

    def _read(self, job: Callable[[Tx], T]) -> T:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = _Reader()
            self._local.reader = reader
            with self._readers_lock:
                self._readers.append(reader)
        # The reader's lock is held while it is used, so close() never pulls a connection out
        # from under a query running in another thread (SQLite would crash, not raise).
        with reader.lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if reader.conn is not None and self._is_stale(reader.conn):
                reader.drop()
            for attempt in (1, 2):
                reused, started = reader.conn is not None, time.monotonic()
                try:
                    if reader.conn is None:
                        reader.conn = self._connect()
                    return job(Tx(reader.conn, self._dialect))
                except Exception as exc:
                    if not self._is_store_error(exc):
                        raise
                    # An idle connection the server ended (PostgreSQL restarted) fails its
                    # next query at once: read again on a new one, not a 503 per thread.
                    ended = reused and ended_at_once(reader.conn, started)
                    reader.drop()
                    if attempt == 1 and ended:
                        continue
                    raise StoreUnavailable(f"the store cannot be read: {exc}") from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _drop_reader(self) -> None:
        """Forget this thread's read connection (the next read opens a new one)."""
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None:
            with reader.lock:
                reader.drop()

    # -- life cycle -----------------------------------------------------------------------------

    def upgrade(self) -> int:
        return self._writer.run(lambda conn: apply_migrations(Tx(conn, self._dialect)))

    def schema_version(self) -> int:
        return self._read(current_version)

    def ping(self) -> None:
        self._read(lambda tx: tx.one("SELECT 1"))

    def write_failure(self, within_s: float) -> str | None:
        """Why the store refused a write in the last ``within_s`` seconds, unless detections
        were committed since (other writes do not count: a full database still takes the
        delivery's updates while it refuses every new detection)."""
        last = self._writer.last_failure
        if last is None or time.monotonic() - last[0] > within_s or self._ingested_at > last[0]:
            return None
        return last[1]

    def close(self) -> None:
        self._closed = True
        self._writer.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            with reader.lock:  # waits for a query in flight in another thread
                reader.drop()

    # -- detections -----------------------------------------------------------------------------

    def submit_detections(
        self, records: Sequence[DetectionRecord], destinations: Sequence[str]
    ) -> Future[list[Acceptance]]:
        """Queue detections; every request waiting when the writer gets to them is written by
        one set-based job (see ``intake``), and each future resolves after that commit."""
        future: Future[list[Acceptance]] = Future()
        with self._intake_lock:
            self._intake.append((intake.Intake(tuple(records), tuple(destinations)), future))
            if self._intake_scheduled:
                return future
            self._intake_scheduled = True
        taken: list[tuple[intake.Intake, Future[list[Acceptance]]]] = []

        def job(tx: Tx) -> list[list[Acceptance]]:
            with self._intake_lock:
                taken.extend(self._intake)
                self._intake = []
                self._intake_scheduled = False
            items = [item for item, _ in taken]
            self._ensure_image_files([r for item in items for r in item.records])
            return intake.accept(tx, items, image_bytes=not self.keeps_image_files)

        self._write(job).add_done_callback(lambda done: self._settle(taken, done))
        return future

    def _settle(
        self,
        taken: list[tuple[intake.Intake, Future[list[Acceptance]]]],
        done: Future[list[list[Acceptance]]],
    ) -> None:
        error = done.exception()
        if error is not None and not taken:
            # The writer failed before the job ran: nobody else will take what is waiting.
            with self._intake_lock:
                taken, self._intake = list(self._intake), []
                self._intake_scheduled = False
        if error is not None:
            for _, waiting in taken:
                waiting.set_exception(error)
            return
        self._ingested_at = time.monotonic()
        for (_, waiting), answers in zip(taken, done.result(), strict=True):
            waiting.set_result(answers)

    def accept_detections(
        self, records: Sequence[DetectionRecord], destinations: Sequence[str]
    ) -> list[Acceptance]:
        return self._writer.wait(self.submit_detections(records, destinations))

    def record_rejection(self, entry: AuditEntry) -> None:
        self.append_audit([entry])

    def get_detection(self, detection_id: str) -> StoredDetection | None:
        row = self._read(
            lambda tx: tx.one(
                f"SELECT {_DETECTION_COLUMNS} FROM detections WHERE id = ?", (detection_id,)
            )
        )
        return None if row is None else _detection(row)

    def list_detections(self, query: DetectionQuery) -> list[StoredDetection]:
        where, params = ["1=1"], []
        for clause, value in (
            ("time_us >= ?", query.since_us),
            ("time_us < ?", query.until_us),
            ("sensor_id = ?", query.sensor_id),
            ("label = ?", query.label),
            ("seq > ?", query.after_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (
            f"SELECT {_DETECTION_COLUMNS} FROM detections WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT ?"
        )
        rows = self._read(lambda tx: tx.all(sql, [*params, query.limit]))
        return [_detection(r) for r in rows]

    def keep_image_files(self, images: Sequence[ImageBlob]) -> None:
        """Nothing to do here: the bytes go in the images row."""

    def forget_image_files(self, sha256s: Sequence[str]) -> None:
        """Nothing to do here: a refused detection's image row was never written."""

    def _ensure_image_files(self, records: Sequence[DetectionRecord]) -> None:
        """Inside the commit that writes the detections' image rows: nothing here (no files)."""

    def get_image(self, sha256: str) -> tuple[str, bytes] | None:
        row = self._read(
            lambda tx: tx.one("SELECT media_type, data FROM images WHERE sha256 = ?", (sha256,))
        )
        if row is None or row[1] is None:
            return None
        return str(row[0]), bytes(row[1])

    def claim_platform_slot(
        self, sensor_id: str, now_us: int, interval_us: int, pose_us: int | None = None
    ) -> bool:
        return self._write_now(
            lambda tx: intake.platform_due(tx, sensor_id, now_us, interval_us, pose_us)
        )

    # -- outbox ---------------------------------------------------------------------------------

    def claim(
        self, destination: str, owner: str, limit: int, lease_us: int, now_us: int
    ) -> list[OutboxItem]:
        # Another replica's claim of this destination holds its lock until it commits, a matter
        # of milliseconds: try again shortly, and past _CLAIM_LOCK_WAIT_S answer as an empty
        # outbox would (the courier polls again).
        give_up = time.monotonic() + _CLAIM_LOCK_WAIT_S
        pause = 0.001
        while True:
            claimed = self._write_now(
                lambda tx: _claim(tx, destination, owner, limit, lease_us, now_us)
            )
            if claimed is not None or time.monotonic() >= give_up:
                return claimed or []
            time.sleep(pause)
            pause = min(2 * pause, 0.02)

    def mark_sent(self, items: Sequence[OutboxItem], now_us: int) -> int:
        batch = list(items)
        return self._writer.wait(
            self._submit_settle_leased(
                batch,
                "state = 'sent', done_us = ?",
                (now_us,),
                lambda done: AuditEntry(
                    kind="delivery.sent",
                    subject=batch[0].destination,
                    data={
                        "count": done,
                        "outbox_ids": [i.id for i in batch],
                        "uids": sorted({i.uid for i in batch}),
                    },
                ),
                now_us,
            )
        )

    def release(
        self, items: Sequence[OutboxItem], error: str, next_attempt_us: int, now_us: int
    ) -> int:
        return self._writer.wait(self.submit_release(items, error, next_attempt_us, now_us))

    def submit_release(
        self, items: Sequence[OutboxItem], error: str, next_attempt_us: int, now_us: int
    ) -> Future[int]:
        """``release`` without waiting: safe from the event loop, e.g. while being cancelled."""
        batch = list(items)
        return self._submit_settle_leased(
            batch,
            "last_error = ?, next_attempt_us = ?",
            (error[:500], next_attempt_us),
            lambda done: AuditEntry(
                kind="delivery.failed",
                subject=batch[0].destination,
                data={"count": done, "error": error[:500]},
            ),
            now_us,
        )

    def _submit_settle_leased(
        self,
        batch: list[OutboxItem],
        assignments: str,
        values: tuple[object, ...],
        audit: Callable[[int], AuditEntry],
        now_us: int,
    ) -> Future[int]:
        """End the lease on rows this claim still holds (fencing: a lost lease changes nothing),
        setting ``assignments``; audit how many were changed."""
        if not batch:
            nothing: Future[int] = Future()
            nothing.set_result(0)
            return nothing

        def job(tx: Tx) -> int:
            done = 0
            for token, ids in _by_token(batch).items():
                rows = tx.all(
                    f"UPDATE outbox SET {assignments}, claim_token = NULL, lease_until_us = NULL "
                    f"WHERE claim_token = ? AND state = 'pending' "
                    f"AND id IN ({placeholders(len(ids))}) RETURNING id",
                    (*values, token, *ids),
                )
                done += len(rows)
            if done:
                audit_log.append(tx, [audit(done)], now_us)
            return done

        return self._write(job)

    def outbox_stats(self, destinations: Sequence[str]) -> list[OutboxStats]:
        def job(tx: Tx) -> list[OutboxStats]:
            out = []
            for name in destinations:
                counts: Counter[str] = Counter()
                for state, total in tx.all(
                    "SELECT state, COUNT(*) FROM outbox WHERE destination = ? GROUP BY state "
                    "UNION ALL SELECT state, total FROM outbox_purged WHERE destination = ?",
                    (name, name),
                ):
                    counts[str(state)] += int(total)
                oldest = tx.one(
                    "SELECT MIN(created_us) FROM outbox "
                    "WHERE destination = ? AND state = 'pending'",
                    (name,),
                )
                out.append(
                    OutboxStats(
                        destination=name,
                        pending=int(counts.get("pending", 0)),
                        sent=int(counts.get("sent", 0)),
                        expired=int(counts.get("expired", 0)),
                        superseded=int(counts.get("superseded", 0)),
                        oldest_pending_us=None
                        if oldest is None or oldest[0] is None
                        else int(oldest[0]),
                    )
                )
            return out

        return self._read(job)

    def expire_stale(self, now_us: int) -> int:
        def job(tx: Tx) -> int:
            # Every destination with stale rows, not only the configured ones: rows of a
            # destination taken out of the settings are never claimed, so only this expires
            # them. Both reads are ranges of the stale pending rows (index outbox_stale).
            stale = tx.all(
                "SELECT DISTINCT destination FROM outbox WHERE state = 'pending' AND stale_us <= ?",
                (now_us,),
            )
            return sum(_expire(tx, now_us, name) for name in sorted(str(r[0]) for r in stale))

        return self._write_now(job)

    def purge(self, done_before_us: int, now_us: int, chunk: int = 5000) -> int:
        """Delete delivered/expired outbox rows and spent events, ``chunk`` rows per commit, so
        a large purge never holds the writer (or, in serve, the event loop) for long."""

        def outbox(tx: Tx) -> int:
            gone = tx.all(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state <> "
                "'pending' AND done_us < ? LIMIT ?) RETURNING destination, state",
                (done_before_us, chunk),
            )
            # Counted where they went, in the same transaction: totals survive the rows.
            tally = Counter((str(r[0]), str(r[1])) for r in gone)
            tx.many(
                "INSERT INTO outbox_purged (destination, state, total) VALUES (?, ?, ?) "
                "ON CONFLICT (destination, state) "
                "DO UPDATE SET total = outbox_purged.total + excluded.total",
                [(d, state, n) for (d, state), n in tally.items()],
            )
            return len(gone)

        def events(tx: Tx) -> int:
            return len(
                tx.all(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE stale_us < ? "
                    "AND created_us < ? AND NOT EXISTS (SELECT 1 FROM outbox o "
                    "WHERE o.event_seq = events.seq) LIMIT ?) RETURNING seq",
                    (now_us, done_before_us, chunk),
                )
            )

        gone = 0
        for job in (outbox, events):
            while (deleted := self._write_now(job)) > 0:
                gone += deleted
                if deleted < chunk:
                    break
        return gone

    def feed_since(self, after_seq: int, now_us: int, limit: int = 1000) -> list[FeedEvent]:
        rows = self._read(
            lambda tx: tx.all(
                "SELECT seq, uid, time_us, stale_us, payload FROM events "
                "WHERE seq > ? AND stale_us > ? ORDER BY seq LIMIT ?",
                (after_seq, now_us, limit),
            )
        )
        return [_feed(r) for r in rows]

    def outdated(self, items: Sequence[OutboxItem]) -> set[int]:
        def job(tx: Tx) -> set[int]:
            found: set[int] = set()
            for chunk in chunks([i.id for i in items], 500):
                found.update(
                    int(r[0])
                    for r in tx.all(
                        f"SELECT o.id FROM outbox o WHERE o.id IN ({placeholders(len(chunk))}) "
                        "AND EXISTS (SELECT 1 FROM outbox n WHERE n.destination = o.destination "
                        "AND n.uid = o.uid AND n.state IN ('pending', 'sent') "
                        "AND (n.time_us > o.time_us OR (n.time_us = o.time_us AND n.id > o.id)))",
                        list(chunk),
                    )
                )
            return found

        return self._read(job)

    def feed_events(self, seqs: Sequence[int]) -> list[FeedEvent]:
        def job(tx: Tx) -> list[FeedEvent]:
            found = []
            for chunk in chunks(seqs, 500):
                found += tx.all(
                    "SELECT seq, uid, time_us, stale_us, payload FROM events "
                    f"WHERE seq IN ({placeholders(len(chunk))}) ORDER BY seq",
                    list(chunk),
                )
            return [_feed(r) for r in found]

        return self._read(job)

    def feed_snapshot(self, now_us: int) -> list[FeedEvent]:
        rows = self._read(
            lambda tx: tx.all(
                "SELECT e.seq, e.uid, e.time_us, e.stale_us, e.payload FROM events e "
                "WHERE e.stale_us > ? AND NOT EXISTS (SELECT 1 FROM events n WHERE n.uid = e.uid "
                "AND (n.time_us > e.time_us OR (n.time_us = e.time_us AND n.seq > e.seq))) "
                "ORDER BY e.seq",
                (now_us,),
            )
        )
        return [_feed(r) for r in rows]

    def last_event_seq(self, created_before_us: int | None = None) -> int:
        if created_before_us is None:
            row = self._read(lambda tx: tx.one("SELECT MAX(seq) FROM events"))
        else:  # walks the newest rows back to the first old enough (the primary key's order)
            row = self._read(
                lambda tx: tx.one(
                    "SELECT seq FROM events WHERE created_us < ? ORDER BY seq DESC LIMIT 1",
                    (created_before_us,),
                )
            )
        return 0 if row is None or row[0] is None else int(row[0])

    # -- audit ----------------------------------------------------------------------------------

    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        self._writer.wait(self.submit_audit(entries))

    def submit_audit(self, entries: Sequence[AuditEntry]) -> Future[None]:
        batch = list(entries)
        return self._write(lambda tx: audit_log.append(tx, batch))

    def audit_records(
        self, after_seq: int = 0, limit: int = 100, kind: str | None = None
    ) -> list[AuditRecord]:
        return self._read(lambda tx: audit_log.page(tx, after_seq, limit, kind))

    def verify_audit(self) -> ChainReport:
        def job(tx: Tx) -> ChainReport:
            outside = audit_log.below_chain(tx)
            if outside is not None:
                return ChainReport(
                    False, 0, outside, f"record {outside} is numbered outside the chain (below 1)"
                )
            return verify_chain(audit_log.walk(tx))

        return self._read(job)

    # -- keys and tokens ------------------------------------------------------------------------

    def create_key(self, record: ApiKeyRecord, actor: str | None) -> None:
        def job(tx: Tx) -> None:
            tx.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.key_id,
                    record.name,
                    record.secret_hash,
                    " ".join(record.scopes),
                    record.created_us,
                    record.expires_us,
                    record.last_used_us,
                    record.revoked_us,
                ),
            )
            audit_log.append(
                tx,
                [
                    AuditEntry(
                        kind="key.created",
                        subject=record.key_id,
                        actor=actor,
                        data={"name": record.name, "scopes": list(record.scopes)},
                    )
                ],
            )

        self._write_now(job)

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._read(
            lambda tx: tx.one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        )
        return None if row is None else _key(row)

    def list_keys(self) -> list[ApiKeyRecord]:
        rows = self._read(
            lambda tx: tx.all(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_us")
        )
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str, now_us: int, actor: str | None) -> bool:
        def job(tx: Tx) -> bool:
            row = tx.one(
                "UPDATE api_keys SET revoked_us = ? WHERE key_id = ? AND revoked_us IS NULL "
                "RETURNING key_id",
                (now_us, key_id),
            )
            if row is not None:
                audit_log.append(
                    tx, [AuditEntry(kind="key.revoked", subject=key_id, actor=actor)], now_us
                )
            return row is not None

        return self._write_now(job)

    def touch_key(self, key_id: str, now_us: int) -> None:
        self._write(
            lambda tx: tx.execute(
                "UPDATE api_keys SET last_used_us = ? WHERE key_id = ?", (now_us, key_id)
            )
        )

    def count_keys(self) -> int:
        row = self._read(lambda tx: tx.one("SELECT COUNT(*) FROM api_keys"))
        return 0 if row is None else int(row[0])

    def mark(self, name: str) -> str | None:
        return self._read(lambda tx: _mark(tx, name))

    def first_mark(self, name: str, value: str) -> str:
        def job(tx: Tx) -> str:
            tx.execute(
                "INSERT INTO service_marks (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            stored = _mark(tx, name)
            return value if stored is None else stored

        return self._write_now(job)

    def add_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._write_now(
            lambda tx: tx.execute(
                f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                (
                    record.jti,
                    record.family,
                    record.key_id,
                    record.issued_us,
                    record.expires_us,
                    record.used_us,
                    record.revoked_us,
                ),
            )
        )

    def use_refresh_token(self, jti: str, now_us: int) -> tuple[str, RefreshTokenRecord | None]:
        def job(tx: Tx) -> tuple[str, RefreshTokenRecord | None]:
            row = tx.one(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE jti = ?", (jti,))
            if row is None:
                return "unknown", None
            record = _refresh(row)
            if record.revoked_us is not None:
                return "revoked", record
            if record.used_us is not None:
                return _burn_family(tx, record, now_us)
            if record.expires_us <= now_us:
                return "expired", record
            # Guarded: two replicas may both read the row unused; on PostgreSQL the second
            # UPDATE waits for the first to commit, then finds it used: a reuse like any other.
            used = tx.all(
                "UPDATE refresh_tokens SET used_us = ? WHERE jti = ? AND used_us IS NULL "
                "AND revoked_us IS NULL RETURNING jti",
                (now_us, jti),
            )
            return ("ok", record) if used else _burn_family(tx, record, now_us)

        return self._write_now(job)

    def revoke_token(self, jti: str, expires_us: int, actor: str | None) -> None:
        def job(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO revoked_tokens (jti, expires_us) VALUES (?, ?) "
                "ON CONFLICT (jti) DO NOTHING",
                (jti, expires_us),
            )
            tx.execute(
                "UPDATE refresh_tokens SET revoked_us = ? WHERE revoked_us IS NULL AND family IN "
                "(SELECT family FROM refresh_tokens WHERE jti = ?)",
                (_now_us(), jti),
            )
            _mark_family_revoked(
                tx, "SELECT family FROM refresh_tokens WHERE jti = ?", (jti,), _now_us()
            )
            audit_log.append(tx, [AuditEntry(kind="token.revoked", subject=jti, actor=actor)])

        self._write_now(job)

    def is_token_revoked(self, jti: str) -> bool:
        row = self._read(lambda tx: tx.one("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)))
        return row is not None


class _Reader:
    """One thread's read connection and the lock held while it is in use."""

    __slots__ = ("conn", "lock")

    def __init__(self) -> None:
        self.conn: Any = None
        self.lock = threading.Lock()

    def drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # broken or closing: nothing left to save
                self.conn.close()
        self.conn = None


# -- transaction bodies ---------------------------------------------------------------------------


def _expire(tx: Tx, now_us: int, destination: str) -> int:
    """The destination's pending rows past their stale time become expired (one audit record).

    A row in flight (leased) waits for its holder's answer or the end of its lease: expiring it
    under the holder would free its uid, and a newer position could go out before the holder's
    late write of this older one (and a row that was sent would read as expired)."""
    expired = tx.all(
        "UPDATE outbox SET state = 'expired', done_us = ?, claim_token = NULL "
        "WHERE destination = ? AND state = 'pending' AND stale_us <= ? "
        "AND (lease_until_us IS NULL OR lease_until_us < ?) RETURNING uid",
        (now_us, destination, now_us, now_us),
    )
    if expired:
        audit_log.append(
            tx,
            [
                AuditEntry(
                    kind="delivery.expired",
                    subject=destination,
                    data={"count": len(expired), "uids": sorted({str(r[0]) for r in expired})},
                )
            ],
            now_us,
        )
    return len(expired)


def _claim(
    tx: Tx, destination: str, owner: str, limit: int, lease_us: int, now_us: int
) -> list[OutboxItem] | None:
    """Lease the destination's due rows; None while another claim of it is in progress."""
    if tx.dialect.claim_lock is not None:
        granted = tx.one(tx.dialect.claim_lock, (destination,))
        if granted is None or not granted[0]:
            return None
    _expire(tx, now_us, destination)
    token = f"{owner}:{uuid.uuid4().hex}"
    ids: list[int] = []
    # Bounded: each round either claims rows or retires a whole batch of superseded ones.
    for _ in range(8):
        # At most one claim in flight per uid: a row waits while another row of its uid is
        # leased. Otherwise a replica could claim a newer position while another still holds an
        # older one, write it first, and the late older one would be left on the map.
        candidates = tx.all(
            "SELECT id FROM outbox WHERE destination = ? AND state = 'pending' "
            "AND next_attempt_us <= ? AND (lease_until_us IS NULL OR lease_until_us < ?) "
            "AND NOT EXISTS (SELECT 1 FROM outbox f WHERE f.destination = outbox.destination "
            "AND f.uid = outbox.uid AND f.state = 'pending' AND f.lease_until_us >= ?) "
            f"ORDER BY id LIMIT ?{tx.dialect.skip_locked}",
            (destination, now_us, now_us, now_us, limit),
        )
        if not candidates:
            break
        batch = [int(r[0]) for r in candidates]
        # CoT semantics: a newer event for a uid replaces older ones, so a backlog sends the
        # newest. Checked for the rows about to be claimed only, so a claim costs O(batch) and
        # not O(backlog); older rows further back are retired when their turn comes.
        superseded = {
            int(r[0])
            for r in tx.all(
                "UPDATE outbox SET state = 'superseded', done_us = ? "
                f"WHERE id IN ({placeholders(len(batch))}) AND EXISTS (SELECT 1 FROM outbox n "
                "WHERE n.destination = outbox.destination AND n.uid = outbox.uid "
                "AND n.state IN ('pending', 'sent') AND (n.time_us > outbox.time_us "
                "OR (n.time_us = outbox.time_us AND n.id > outbox.id))) RETURNING id",
                (now_us, *batch),
            )
        }
        ids = [i for i in batch if i not in superseded]
        if ids:
            break
    if not ids:
        return []
    tx.execute(
        f"UPDATE outbox SET claim_token = ?, lease_until_us = ?, attempts = attempts + 1 "
        f"WHERE id IN ({placeholders(len(ids))})",
        (token, now_us + lease_us, *ids),
    )
    rows = tx.all(
        "SELECT o.id, o.event_seq, o.uid, e.cot_type, o.time_us, o.stale_us, e.payload, "
        f"o.attempts FROM outbox o JOIN events e ON e.seq = o.event_seq "
        f"WHERE o.id IN ({placeholders(len(ids))}) ORDER BY o.id",
        ids,
    )
    return [
        OutboxItem(
            id=int(r[0]),
            event_seq=int(r[1]),
            destination=destination,
            uid=str(r[2]),
            cot_type=str(r[3]),
            time_us=int(r[4]),
            stale_us=int(r[5]),
            payload=bytes(r[6]),
            attempts=int(r[7]),
            claim_token=token,
        )
        for r in rows
    ]


def _by_token(items: Sequence[OutboxItem]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for item in items:
        grouped.setdefault(item.claim_token, []).append(item.id)
    return grouped


def _detection(row: tuple[Any, ...]) -> StoredDetection:
    return StoredDetection(
        id=str(row[0]),
        seq=int(row[1]),
        time_us=int(row[2]),
        received_us=int(row[3]),
        sensor_id=str(row[4]),
        label=str(row[5]),
        detection=json.loads(str(row[6])),
        answer=json.loads(str(row[7])),
        cot_xml=bytes(row[8]),
        image_sha256=None if row[9] is None else str(row[9]),
    )


def _feed(row: tuple[Any, ...]) -> FeedEvent:
    return FeedEvent(int(row[0]), str(row[1]), int(row[2]), int(row[3]), bytes(row[4]))


def _key(row: tuple[Any, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=str(row[0]),
        name=str(row[1]),
        secret_hash=str(row[2]),
        scopes=tuple(str(row[3]).split()),
        created_us=int(row[4]),
        expires_us=None if row[5] is None else int(row[5]),
        last_used_us=None if row[6] is None else int(row[6]),
        revoked_us=None if row[7] is None else int(row[7]),
    )


def _refresh(row: tuple[Any, ...]) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        jti=str(row[0]),
        family=str(row[1]),
        key_id=str(row[2]),
        issued_us=int(row[3]),
        expires_us=int(row[4]),
        used_us=None if row[5] is None else int(row[5]),
        revoked_us=None if row[6] is None else int(row[6]),
    )


#: Access tokens live at most a day (``access_token_ttl_s`` <= 86400): a family's revocation
#: entry outlives every access token of that family.
_FAMILY_MARK_LIFE_US = 86_400 * 1_000_000


def _burn_family(tx: Tx, record: RefreshTokenRecord, now_us: int) -> tuple[str, RefreshTokenRecord]:
    """A rotated refresh token came back: someone holds a stolen copy. Revoke its family."""
    tx.execute(
        "UPDATE refresh_tokens SET revoked_us = ? WHERE family = ? AND revoked_us IS NULL",
        (now_us, record.family),
    )
    _mark_family_revoked(tx, "SELECT CAST(? AS TEXT) AS family", (record.family,), now_us)
    audit_log.append(
        tx,
        [
            AuditEntry(
                kind="token.family_revoked",
                subject=record.family,
                data={"reason": "refresh token reused", "key_id": record.key_id},
            )
        ],
        now_us,
    )
    return "reused", record


def _mark_family_revoked(
    tx: Tx, families_sql: str, params: tuple[object, ...], now_us: int
) -> None:
    """Record ``family:<id>`` among the revoked token ids for each family the query yields
    (the same text as ``security.tokens.family_mark``), so the family's access tokens end too."""
    tx.execute(
        "INSERT INTO revoked_tokens (jti, expires_us) "
        f"SELECT 'family:' || f.family, CAST(? AS BIGINT) FROM ({families_sql}) AS f "
        "WHERE f.family IS NOT NULL ON CONFLICT (jti) DO NOTHING",
        (now_us + _FAMILY_MARK_LIFE_US, *params),
    )


def _mark(tx: Tx, name: str) -> str | None:
    row = tx.one("SELECT value FROM service_marks WHERE name = ?", (name,))
    return None if row is None else str(row[0])
