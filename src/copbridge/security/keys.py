"""API keys: the ``cpb_<key id>_<secret><checksum>`` form, the peppered hash kept in the store,
and a short-lived cache of verified keys.

Only ``HMAC-SHA256(pepper, key id ":" secret)`` is stored; the pepper lives outside the database
(settings or a 0600 file in the data folder), so a stolen database alone cannot test guesses.
The checksum (CRC32, base62) lets leak scanners spot real keys without asking the server.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache

from copbridge.logs import get_logger
from copbridge.store import ApiKeyRecord, Store

_log = get_logger("copbridge.keys")

PREFIX = "cpb_"
#: Every scope a key may hold; the bootstrap key holds them all.
SCOPES = (
    "detections:write",
    "detections:read",
    "destinations:read",
    "audit:read",
    "keys:admin",
    "health:read",
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_LEN, _SECRET_LEN, _CHECK_LEN = 12, 32, 6
KEY_ID_PATTERN = r"[0-9a-f]{12}"  # as mint_key makes them (_ID_LEN hex digits)
# \Z: no "\n" after the checksum
_KEY = re.compile(rf"^cpb_({KEY_ID_PATTERN})_([0-9A-Za-z]{{32}})([0-9A-Za-z]{{6}})\Z")
_HASH_SCHEME = "hmac-sha256$"
#: Revocation reaches every replica within this many seconds (the verified-key cache lifetime).
MAX_CACHE_TTL_S = 5.0
REFRESH_AT = 0.6
"""A verified key is re-checked in the background once 60 % of the cache TTL has passed."""


@dataclass(frozen=True, slots=True)
class KeyText:
    """A parsed key: its public id and the secret part (never stored, never logged)."""

    key_id: str
    secret: str


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def format_key(key_id: str, secret: str) -> str:
    """The full key text for an id and a secret (with its checksum)."""
    body = f"{PREFIX}{key_id}_{secret}"
    return body + _checksum(body)


def mint_key() -> tuple[KeyText, str]:
    """A new random key: its parts and the text to show once."""
    key_id = secrets.token_hex(_ID_LEN // 2)
    secret = "".join(secrets.choice(_BASE62) for _ in range(_SECRET_LEN))
    return KeyText(key_id, secret), format_key(key_id, secret)


def parse_key(text: str) -> KeyText | None:
    """The parts of a well-formed key whose checksum matches, else None (no store lookup)."""
    found = _KEY.match(text)
    if found is None:
        return None
    key_id, secret, check = found.groups()
    if not hmac.compare_digest(check, _checksum(f"{PREFIX}{key_id}_{secret}")):
        return None
    return KeyText(key_id, secret)


def hash_secret(pepper: bytes, key: KeyText) -> str:
    digest = hmac.new(pepper, f"{key.key_id}:{key.secret}".encode(), hashlib.sha256).hexdigest()
    return _HASH_SCHEME + digest


def secret_matches(pepper: bytes, key: KeyText, stored_hash: str) -> bool:
    """Constant-time comparison of the key's hash with the stored one."""
    return hmac.compare_digest(hash_secret(pepper, key).encode(), stored_hash.encode())


class PepperMismatch(RuntimeError):
    """This process's pepper is not the one the store's keys were made with."""


PEPPER_MARK = "key_pepper"
_MISMATCH = (
    "the key pepper differs from the one this store's keys were made with (another "
    "replica's, or an earlier data folder's): give every process on this store the same "
    "COPBRIDGE_KEY_PEPPER, or one COPBRIDGE_DATA_DIR"
)


def pepper_mark(pepper: bytes) -> str:
    """The pepper's fingerprint kept in the store: an HMAC of a constant under it."""
    return hmac.new(pepper, b"copbridge key pepper", hashlib.sha256).hexdigest()


def check_pepper(store: Store, pepper: bytes, proof: KeyText | None = None) -> None:
    """Refuse a pepper other than the store's: a replica with its own (its own data folder, no
    ``COPBRIDGE_KEY_PEPPER``) refused every key with a 401.

    The store's fingerprint is written only where this pepper is known to be right: on a
    store without keys (its keys will be made with it), when ``proof`` (the configured
    bootstrap key) is stored and verifies with it, or when a serving process verifies a key
    (:class:`KeyRing`). A store with keys and no fingerprint yet (made before it existed) is not
    marked by a process that merely starts: a wrong pepper would lock the right ones out."""
    ours = pepper_mark(pepper)
    stored = store.mark(PEPPER_MARK)
    if stored is None:
        proven = store.count_keys() == 0
        if proof is not None and (record := store.get_key(proof.key_id)) is not None:
            if not secret_matches(pepper, proof, record.secret_hash):
                raise PepperMismatch(f"COPBRIDGE_BOOTSTRAP_KEY does not verify: {_MISMATCH}")
            proven = True
        if not proven:
            return
        stored = store.first_mark(PEPPER_MARK, ours)
    if stored != ours:
        raise PepperMismatch(_MISMATCH)


def load_pepper(configured: str | None, data_dir: Path) -> bytes:
    """The server pepper: from settings, else ``<data_dir>/key-pepper`` (created 0600 once).

    Replicas must share it (same setting, or a shared data folder) to verify each other's keys.
    """
    if configured is not None:
        return configured.encode()
    path = data_dir / "key-pepper"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            text = path.read_text().strip()
            if len(text) == 64:
                return text.encode()
            time.sleep(0.02)
        raise RuntimeError(f"{path} is not a 64-character pepper") from None
    with os.fdopen(fd, "w") as out:
        text = secrets.token_hex(32)
        out.write(text + "\n")
    return text.encode()


def new_key_record(
    key: KeyText,
    pepper: bytes,
    name: str,
    scopes: Iterable[str],
    now_us: int,
    expires_us: int | None = None,
) -> ApiKeyRecord:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return ApiKeyRecord(
        key_id=key.key_id,
        name=name,
        secret_hash=hash_secret(pepper, key),
        scopes=tuple(s for s in SCOPES if s in set(scopes)),
        created_us=now_us,
        expires_us=expires_us,
        last_used_us=None,
        revoked_us=None,
    )


def now_us() -> int:
    return time.time_ns() // 1000


def is_usable(record: ApiKeyRecord, at_us: int) -> bool:
    return record.revoked_us is None and (record.expires_us is None or record.expires_us > at_us)


UNKNOWN_KEY = "unknown key"
WRONG_SECRET = "wrong secret"  # noqa: S105 - a refusal reason, not a secret
UNPROVEN_REFUSALS = frozenset({UNKNOWN_KEY, WRONG_SECRET})
"""Refusals before the caller proved it holds the key: the audit may tell them apart, the
caller may not (that would say whether a key id exists)."""


def _refusal(record: ApiKeyRecord | None, matches: bool, at_us: int) -> str | None:
    if record is None:
        return UNKNOWN_KEY
    if not matches:
        return WRONG_SECRET
    if record.revoked_us is not None:
        return "revoked key"
    if record.expires_us is not None and record.expires_us <= at_us:
        return "expired key"
    return None


class KeyRing:
    """Verifies presented keys against the store, remembering answers for at most ``ttl_s``.

    A key revoked on any replica stops working everywhere within ``ttl_s`` (≤ 5 s): the cache
    is the only thing between a request and the store's ``revoked_us``.
    """

    def __init__(self, store: Store, pepper: bytes, ttl_s: float = MAX_CACHE_TTL_S) -> None:
        if not 0 < ttl_s <= MAX_CACHE_TTL_S:
            raise ValueError(f"key cache TTL must be in (0, {MAX_CACHE_TTL_S}] s")
        self.store = store
        self.pepper = pepper
        self._pepper_marked = False
        self._lock = threading.Lock()
        # Keyed by a digest of the presented text, so no key text sits in the cache; each entry
        # holds the record and when (monotonic) it was verified.
        self._verified: TTLCache[str, tuple[ApiKeyRecord, float]] = TTLCache(
            maxsize=10_000, ttl=ttl_s
        )
        self._records: TTLCache[str, ApiKeyRecord | None] = TTLCache(maxsize=10_000, ttl=ttl_s)
        self.refresh_after_s = ttl_s * REFRESH_AT

    @staticmethod
    def digest(text: str) -> str:
        """What identifies a presented key in caches: a digest, never the text."""
        return hashlib.sha256(text.encode()).hexdigest()

    def cached(self, text: str) -> ApiKeyRecord | None:
        """A key verified in the last ``ttl_s`` and still usable, without touching the store."""
        return self.lookup(text)[0]

    def due_for_refresh(self, text: str) -> bool:
        """True once a cached verification is older than ``refresh_after_s``: re-verify it in
        the background so that busy keys never wait for the store when the entry expires."""
        return self.lookup(text)[1]

    def lookup(self, text: str) -> tuple[ApiKeyRecord | None, bool]:
        """:meth:`cached` and :meth:`due_for_refresh` at once: one digest, one look in the
        cache (every authenticated request asks both)."""
        with self._lock:
            entry = self._verified.get(self.digest(text))
        if entry is None:
            return None, False
        record, verified_at = entry
        due = time.monotonic() - verified_at >= self.refresh_after_s
        return (record if is_usable(record, now_us()) else None), due

    def verify(self, text: str, *, refresh: bool = False) -> tuple[ApiKeyRecord | None, str]:
        """(record, "ok") for a usable key, else (record or None, reason). Blocking: store I/O.

        ``refresh`` asks the store even when the cache holds the key; a key found revoked or
        expired leaves the cache at once."""
        cached = None if refresh else self.cached(text)
        if cached is not None:
            return cached, "ok"
        key = parse_key(text)
        if key is None:
            return None, "malformed key"
        record = self.record(key.key_id, fresh=True)
        # An unknown id is hashed too, so it costs as much as a wrong secret.
        stored_hash = record.secret_hash if record is not None else _HASH_SCHEME + "0" * 64
        matches = secret_matches(self.pepper, key, stored_hash)
        at = now_us()
        reason = _refusal(record, matches, at)
        if reason is not None or record is None:
            # The cached answer (if any) keeps serving while a refresh asks the store; a key
            # found revoked or expired leaves the cache only now.
            with self._lock:
                self._verified.pop(self.digest(text), None)
            return record if matches else None, reason or UNKNOWN_KEY
        with self._lock:
            self._verified[self.digest(text)] = (record, time.monotonic())
        self.store.touch_key(record.key_id, at)
        if not self._pepper_marked:  # a key verified: this pepper is the store's
            self._pepper_marked = True
            ours = pepper_mark(self.pepper)
            if self.store.first_mark(PEPPER_MARK, ours) != ours:
                _log.error("the store holds another key pepper's fingerprint than this one's")
        return record, "ok"

    def record(self, key_id: str, fresh: bool = False) -> ApiKeyRecord | None:
        """The stored key (cached up to ``ttl_s`` unless ``fresh``); blocking on a miss."""
        if not fresh:
            with self._lock:
                if key_id in self._records:
                    return self._records[key_id]
        record = self.store.get_key(key_id)
        with self._lock:
            self._records[key_id] = record
        return record

    def has_record(self, key_id: str) -> bool:
        with self._lock:
            return key_id in self._records

    def forget(self, key_id: str) -> None:
        """Drop a key from this replica's caches at once (others follow within ``ttl_s``)."""
        with self._lock:
            self._records.pop(key_id, None)
            for digest, (record, _) in list(self._verified.items()):
                if record.key_id == key_id:
                    self._verified.pop(digest, None)
