"""The persistence port and its adapters: detections, outbox, audit chain, keys and tokens."""

from __future__ import annotations

from pathlib import Path

from copbridge.store.errors import CommitInDoubt, MigrationError, StoreError, StoreUnavailable
from copbridge.store.port import Store
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
    QueuedEvent,
    RefreshTokenRecord,
    StoredDetection,
)
from copbridge.store.sql import SqlStore
from copbridge.store.writer import DEFAULT_MAX_DELAY_S, BatchObserver

__all__ = [
    "Acceptance",
    "ApiKeyRecord",
    "AuditEntry",
    "AuditRecord",
    "ChainReport",
    "CommitInDoubt",
    "DetectionQuery",
    "DetectionRecord",
    "FeedEvent",
    "ImageBlob",
    "MigrationError",
    "OutboxItem",
    "OutboxStats",
    "QueuedEvent",
    "RefreshTokenRecord",
    "SqlStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredDetection",
    "open_store",
]


def open_store(
    url: str,
    *,
    checkpoint_every_s: float = 30.0,
    max_delay_s: float = DEFAULT_MAX_DELAY_S,
    max_items: int = 512,
    observe: BatchObserver | None = None,
    sqlite_max_pages: int | None = None,
    pg_silence_limit_s: float | None = None,
    images_dir: Path | None = None,
) -> SqlStore:
    """Open the store a ``COPBRIDGE_DATABASE_URL`` names (no connection is made yet).
    ``images_dir``: where SQLite keeps image files (PostgreSQL keeps them in rows)."""
    if url.startswith("sqlite:///"):
        from copbridge.store.sqlite import SqliteStore, path_from_url

        return SqliteStore(
            Path(path_from_url(url)),
            checkpoint_every_s=checkpoint_every_s,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
            max_page_count=sqlite_max_pages,
            images_dir=images_dir,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from copbridge.store.postgres import SILENCE_LIMIT_S, PostgresStore

        return PostgresStore(
            url,
            max_delay_s=max_delay_s,
            max_items=max_items,
            observe=observe,
            silence_limit_s=pg_silence_limit_s or SILENCE_LIMIT_S,
        )
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")
