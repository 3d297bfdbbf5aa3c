"""Appending to and reading the hash-chained audit table inside a store transaction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from copbridge import jsontext
from copbridge.store.audit_chain import GENESIS_HASH, UnreadableRecord, canonical_with
from copbridge.store.records import AuditEntry, AuditRecord, JsonObject
from copbridge.store.tx import Tx

_COLUMNS = "seq, at_us, kind, actor, subject, data, prev_hash, hash"


def append(tx: Tx, entries: Sequence[AuditEntry], at_us: int | None = None) -> None:
    """Chain ``entries`` after the current head; the caller's transaction makes it atomic."""
    if not entries:
        return
    if tx.dialect.audit_lock:
        # Replicas append to one chain: serialise appenders until this transaction ends.
        tx.execute(tx.dialect.audit_lock)
    head = tx.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    seq, prev = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
    when = at_us if at_us is not None else time.time_ns() // 1000
    rows = []
    for entry in entries:
        seq += 1
        data = _canonical_data(entry.data)
        content = canonical_with(seq, when, entry.kind, entry.actor, entry.subject, data, prev)
        digest = hashlib.sha256(content).hexdigest()
        text = data.decode()
        rows.append((seq, when, entry.kind, entry.actor, entry.subject, text, prev, digest))
        prev = digest
    tx.many(f"INSERT INTO audit ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)


def _canonical_data(data: JsonObject) -> bytes:
    """The record's data as canonical JSON. Text that is not Unicode (a lone surrogate a client
    sent, echoed in a refusal) cannot be written as UTF-8: it is kept as its escape, text
    (``\\ud800``), so the record is written rather than lost with its whole batch."""
    try:
        return jsontext.canonical(data)
    except (TypeError, UnicodeEncodeError):
        return jsontext.canonical(_as_unicode(data))


def _as_unicode(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_as_unicode(k): _as_unicode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_unicode(v) for v in value]
    return value


def _record(row: tuple[object, ...]) -> AuditRecord:
    """The row as appending wrote it, or :class:`UnreadableRecord` for one edited behind our
    back into something else (SQLite keeps any type in any column)."""
    seq, at_us, kind, actor, subject, data, prev_hash, digest = row
    if not isinstance(seq, int) or not isinstance(at_us, int):
        raise UnreadableRecord(seq, "its number or time is not an integer")
    texts = (kind, prev_hash, digest, data)
    if not all(isinstance(v, str) for v in texts) or not all(
        v is None or isinstance(v, str) for v in (actor, subject)
    ):
        raise UnreadableRecord(seq, "a column that holds text holds something else")
    try:
        parsed = json.loads(str(data))
    except (ValueError, RecursionError):
        raise UnreadableRecord(seq, "its data is not JSON") from None
    if not isinstance(parsed, dict):
        raise UnreadableRecord(seq, "its data is not a JSON object")
    return AuditRecord(
        seq=seq,
        at_us=at_us,
        kind=str(kind),
        actor=None if actor is None else str(actor),
        subject=None if subject is None else str(subject),
        data=parsed,
        prev_hash=str(prev_hash),
        hash=str(digest),
    )


def page(tx: Tx, after_seq: int, limit: int, kind: str | None) -> list[AuditRecord]:
    if kind is None:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
    else:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM audit WHERE seq > ? AND kind = ? ORDER BY seq LIMIT ?",
            (after_seq, kind, limit),
        )
    return [_record(r) for r in rows]


def walk(tx: Tx, chunk: int = 5000) -> Iterator[tuple[AuditRecord, str]]:
    """Every record in sequence order with its data as stored, read in chunks so a long chain
    is not held in memory."""
    after = 0
    while True:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, chunk)
        )
        if not rows:
            return
        for row in rows:
            record = _record(row)
            after = record.seq
            yield record, str(row[5])


def below_chain(tx: Tx) -> int | None:
    """The lowest number of a record numbered below 1, outside the chain ``walk`` reads."""
    row = tx.one("SELECT MIN(seq) FROM audit WHERE seq < 1")
    return None if row is None or row[0] is None else int(row[0])
