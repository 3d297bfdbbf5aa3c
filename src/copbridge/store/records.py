"""Plain records that cross the store port: what is written, what is read back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """A CoT event to keep and deliver to every destination until ``stale_us``."""

    uid: str
    cot_type: str
    kind: Literal["detection", "platform"]
    time_us: int
    stale_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DetectionRecord:
    """Everything one accepted detection writes, in one transaction."""

    id: str
    body_hash: str
    time_us: int
    received_us: int
    sensor_id: str
    label: str
    detection_json: str
    """The stored copy of the detection as compact JSON text, written where it is prepared: a
    helper process pipes this string to ``serve`` instead of a nested dict (12 us less per
    detection to pickle and unpickle, measured), and the store writes it as it is."""
    answer: JsonObject
    cot_xml: bytes
    events: tuple[QueuedEvent, ...]
    platform_event: QueuedEvent | None = None
    platform_interval_us: int = 0
    image_sha256: str | None = None
    actor: str | None = None
    earlier_body_hashes: tuple[str, ...] = ()
    """What earlier versions hashed this body to: a stored detection with one of them is its
    duplicate too (see ``pipeline.body_hashes``)."""
    image: ImageBlob | None = None
    """The image the detection names: its row is written with the detection, in the same
    commit, when the detection is accepted (its file already kept by ``keep_image_files`` where
    the adapter keeps files)."""


@dataclass(frozen=True, slots=True)
class Acceptance:
    """How the store took one detection: newly accepted, a duplicate of the same body, a clash."""

    id: str
    outcome: Literal["accepted", "duplicate", "conflict"]
    answer: JsonObject


@dataclass(frozen=True, slots=True)
class StoredDetection:
    id: str
    seq: int
    time_us: int
    received_us: int
    sensor_id: str
    label: str
    detection: JsonObject
    answer: JsonObject
    cot_xml: bytes
    image_sha256: str | None


@dataclass(frozen=True, slots=True)
class DetectionQuery:
    since_us: int | None = None
    until_us: int | None = None
    sensor_id: str | None = None
    label: str | None = None
    after_seq: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One event claimed for one destination under a lease (``claim_token`` fences the update)."""

    id: int
    event_seq: int
    destination: str
    uid: str
    cot_type: str
    time_us: int
    stale_us: int
    payload: bytes
    attempts: int
    claim_token: str


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int
    uid: str
    time_us: int
    stale_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    destination: str
    pending: int
    sent: int
    expired: int
    superseded: int
    oldest_pending_us: int | None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at_us: int
    kind: str
    actor: str | None
    subject: str | None
    data: JsonObject
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ImageBlob:
    """A verified image to keep: named by the SHA-256 of its bytes."""

    sha256: str
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record before the store numbers and chains it."""

    kind: str
    subject: str | None = None
    actor: str | None = None
    data: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    records: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_seq: int | None = None
    """The newest record of an intact chain: kept elsewhere, it shows later whether records
    were removed from the end or the chain rewritten (which the chain alone cannot show)."""
    head_hash: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_us: int
    expires_us: int | None
    last_used_us: int | None
    revoked_us: int | None


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    jti: str
    family: str
    key_id: str
    issued_us: int
    expires_us: int
    used_us: int | None
    revoked_us: int | None
