"""The audit chain's hashing: each record's hash covers its canonical content and its predecessor.

Kept pure so the store adapters, ``audit verify`` and the tests compute exactly the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from copbridge import jsontext
from copbridge.store.records import AuditRecord, ChainReport, JsonObject

GENESIS_HASH = "0" * 64


def canonical(
    seq: int,
    at_us: int,
    kind: str,
    actor: str | None,
    subject: str | None,
    data: JsonObject,
    prev_hash: str,
) -> bytes:
    """The record as ``json.dumps({...}, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` in UTF-8 — fixed forever, or old chains stop verifying."""
    return canonical_with(seq, at_us, kind, actor, subject, jsontext.canonical(data), prev_hash)


def canonical_with(
    seq: int,
    at_us: int,
    kind: str,
    actor: str | None,
    subject: str | None,
    data_json: bytes,
    prev_hash: str,
) -> bytes:
    """:func:`canonical` with the data already in its canonical JSON (the stored column), put
    together piece by piece in sorted key order: the same bytes (tested), without serialising
    the data twice per record."""
    return b"".join(
        (
            b'{"actor":',
            _text(actor),
            b',"at_us":',
            str(int(at_us)).encode(),
            b',"data":',
            data_json,
            b',"kind":',
            _text(kind),
            b',"prev":',
            _text(prev_hash),
            b',"seq":',
            str(int(seq)).encode(),
            b',"subject":',
            _text(subject),
            b"}",
        )
    )


def _text(value: str | None) -> bytes:
    # A string (or null) is written alike by json.dumps and orjson (tests/test_jsontext.py).
    return b"null" if value is None else jsontext.canonical(value)


def record_hash(
    seq: int,
    at_us: int,
    kind: str,
    actor: str | None,
    subject: str | None,
    data: JsonObject,
    prev_hash: str,
) -> str:
    return hashlib.sha256(canonical(seq, at_us, kind, actor, subject, data, prev_hash)).hexdigest()


class UnreadableRecord(ValueError):
    """A stored audit row whose columns do not hold what appending writes (edited behind our
    back): ``seq`` is its number as stored."""

    def __init__(self, seq: object, reason: str) -> None:
        super().__init__(f"record {seq} cannot be read: {reason}")
        self.seq = seq


def verify_chain(records: Iterable[tuple[AuditRecord, str]]) -> ChainReport:
    """Walk the records in stored order, each with its data as stored; name the first one whose
    link or content is broken. The stored data must be the canonical text the hash covers: any
    other text that parses alike (a key given twice: SQL's json_extract reads the first, a JSON
    parser the last) would show one thing to a query and verify another."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    readable = iter(records)
    while True:
        try:
            rec, stored = next(readable)
        except StopIteration:
            break
        except UnreadableRecord as exc:  # edited into something else: no chain past it
            seq = exc.seq if isinstance(exc.seq, int) else expected_seq
            return ChainReport(False, count + 1, seq, str(exc))
        count += 1
        broken = _broken(rec, stored, expected_seq, expected_prev)
        if broken is not None:
            return ChainReport(False, count, rec.seq, broken)
        expected_prev = rec.hash
        expected_seq += 1
    if count == 0:
        return ChainReport(True, 0)
    return ChainReport(True, count, head_seq=expected_seq - 1, head_hash=expected_prev)


def _broken(rec: AuditRecord, stored: str, expected_seq: int, expected_prev: str) -> str | None:
    """Why ``rec`` breaks the chain at its place, or None."""
    if rec.seq != expected_seq:
        return f"record {rec.seq} follows {expected_seq - 1}: records missing"
    if rec.prev_hash != expected_prev:
        return f"record {rec.seq} does not link to record {rec.seq - 1}"
    actual = record_hash(
        rec.seq, rec.at_us, rec.kind, rec.actor, rec.subject, rec.data, rec.prev_hash
    )
    if actual != rec.hash:
        return f"record {rec.seq} content does not match its hash"
    if jsontext.canonical(rec.data) != stored.encode():
        return f"record {rec.seq} data is not stored as it was hashed"
    return None
