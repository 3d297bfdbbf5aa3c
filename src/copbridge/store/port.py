"""The persistence port: what the rest of copbridge may ask of a store.

Adapters (SQLite, PostgreSQL) implement it; one conformance suite holds them to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

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


class Store(Protocol):
    """Durable state of copbridge. Every write is committed before its call returns."""

    @property
    def dialect(self) -> str: ...

    # -- life cycle ---------------------------------------------------------------------------
    def upgrade(self) -> int:
        """Apply pending migrations; return the schema version now in force."""
        ...

    def schema_version(self) -> int: ...

    def ping(self) -> None:
        """Answer a trivial query or raise ``StoreUnavailable`` with the reason."""
        ...

    def write_failure(self, within_s: float) -> str | None:
        """Why the store refused a write in the last ``within_s`` seconds (None: it did not)."""
        ...

    def close(self) -> None: ...

    # -- detections -----------------------------------------------------------------------------
    def submit_detections(
        self, records: Sequence[DetectionRecord], destinations: Sequence[str]
    ) -> Future[list[Acceptance]]:
        """Queue detections for the next group commit; resolves once committed (or failed)."""
        ...

    def accept_detections(
        self, records: Sequence[DetectionRecord], destinations: Sequence[str]
    ) -> list[Acceptance]: ...

    def record_rejection(self, entry: AuditEntry) -> None: ...

    def get_detection(self, detection_id: str) -> StoredDetection | None: ...

    def list_detections(self, query: DetectionQuery) -> list[StoredDetection]: ...

    keeps_image_files: bool
    """True when image bytes live in files beside the database (SQLite), not in its rows."""

    def keep_image_files(self, images: Sequence[ImageBlob]) -> None:
        """Make the images' files durable (where the adapter keeps files); their rows are then
        written with the detections that name them (``DetectionRecord.image``)."""
        ...

    def forget_image_files(self, sha256s: Sequence[str]) -> None:
        """Delete the files of images no stored detection names (kept for a detection that was
        then refused at its commit: a 409); not awaited."""
        ...

    def get_image(self, sha256: str) -> tuple[str, bytes] | None: ...

    def claim_platform_slot(
        self, sensor_id: str, now_us: int, interval_us: int, pose_us: int | None = None
    ) -> bool:
        """True when the sensor's platform event is due (and marks it emitted): none within
        the interval, and none yet of a pose captured at or after ``pose_us`` (default now)."""
        ...

    # -- outbox ---------------------------------------------------------------------------------
    def claim(
        self, destination: str, owner: str, limit: int, lease_us: int, now_us: int
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` due rows; expire stale ones and supersede older ones per uid.
        A row whose uid has another row leased (for this destination) waits for that lease to
        end, so one uid's rows are never in flight twice."""
        ...

    def mark_sent(self, items: Sequence[OutboxItem], now_us: int) -> int:
        """Mark rows sent, only where the claim token still matches (fencing)."""
        ...

    def release(
        self, items: Sequence[OutboxItem], error: str, next_attempt_us: int, now_us: int
    ) -> int: ...

    def submit_release(
        self, items: Sequence[OutboxItem], error: str, next_attempt_us: int, now_us: int
    ) -> Future[int]:
        """``release`` without waiting for the commit (safe on an event loop)."""
        ...

    def outdated(self, items: Sequence[OutboxItem]) -> set[int]:
        """The ids of the rows whose destination has a newer row of their uid (pending or
        sent): another replica may have sent it since, so they must not be sent again."""
        ...

    def outbox_stats(self, destinations: Sequence[str]) -> list[OutboxStats]: ...

    def expire_stale(self, now_us: int) -> int:
        """Mark the pending rows whose stale time passed as expired (audited per destination),
        for every destination in the outbox, configured or no longer, whatever the state of
        their links; how many."""
        ...

    def purge(self, done_before_us: int, now_us: int, chunk: int = 5000) -> int: ...

    def feed_since(self, after_seq: int, now_us: int, limit: int = 1000) -> list[FeedEvent]: ...

    def feed_events(self, seqs: Sequence[int]) -> list[FeedEvent]:
        """The stored events of these sequence numbers (stale or not), in sequence order."""
        ...

    def last_event_seq(self, created_before_us: int | None = None) -> int:
        """The highest event number (of those received before ``created_before_us``); 0."""
        ...

    def feed_snapshot(self, now_us: int) -> list[FeedEvent]:
        """The newest non-stale event of every uid, for replay to a newly connected client."""
        ...

    # -- audit ----------------------------------------------------------------------------------
    def append_audit(self, entries: Sequence[AuditEntry]) -> None: ...

    def submit_audit(self, entries: Sequence[AuditEntry]) -> Future[None]:
        """Queue audit records for the next group commit without waiting for it."""
        ...

    def audit_records(
        self, after_seq: int = 0, limit: int = 100, kind: str | None = None
    ) -> list[AuditRecord]: ...

    def verify_audit(self) -> ChainReport: ...

    # -- keys and tokens ------------------------------------------------------------------------
    def create_key(self, record: ApiKeyRecord, actor: str | None) -> None: ...

    def get_key(self, key_id: str) -> ApiKeyRecord | None: ...

    def list_keys(self) -> list[ApiKeyRecord]: ...

    def revoke_key(self, key_id: str, now_us: int, actor: str | None) -> bool: ...

    def touch_key(self, key_id: str, now_us: int) -> None: ...

    def count_keys(self) -> int: ...

    def mark(self, name: str) -> str | None:
        """The value the store holds for ``name``, if any."""
        ...

    def first_mark(self, name: str, value: str) -> str:
        """The value the store holds for ``name``: ``value`` if it held none yet."""
        ...

    def add_refresh_token(self, record: RefreshTokenRecord) -> None: ...

    def use_refresh_token(self, jti: str, now_us: int) -> tuple[str, RefreshTokenRecord | None]:
        """Mark a refresh token used: ("ok"|"reused"|"unknown"|"revoked"|"expired", record)."""
        ...

    def revoke_token(self, jti: str, expires_us: int, actor: str | None) -> None: ...

    def is_token_revoked(self, jti: str) -> bool: ...
