"""JSON text on the hot path: orjson (C, several times faster than the standard library), with
``json`` as the fallback for the few values orjson refuses (integers beyond 64 bits).

Why not orjson alone: a client may send ``"track_id": 123456789012345678901234567890``, which the
contract accepts (as its decimal string) and which must still be stored and hashed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_INT_MIN = -(2**63)
_INT_END = 2**64


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, keys in their given order. Text that is not Unicode (a lone
    surrogate a client sent as ``"\\ud800"``, echoed in an error) is written escaped."""
    try:
        return orjson.dumps(value)
    except TypeError:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def dumps_text(value: Any) -> str:
    """:func:`dumps` as text (what the stores keep in their JSON columns)."""
    return dumps(value).decode()


def dumps_sorted(value: Any) -> bytes:
    """Compact JSON with sorted keys (for hashing what a client sent)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(value: Any) -> bytes:
    """Exactly ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    as UTF-8 — the audit chain's canonical form, which must never change — taking orjson's
    fast road only for values it writes byte for byte the same (floats are not among them:
    orjson spells 1e-07 as 1e-7)."""
    if type(value) is str or _same_in_both(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _same_in_both(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(_INT_MIN <= value < _INT_END)
    if kind is dict:
        return all(type(k) is str and _same_in_both(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_same_in_both(v) for v in value)
    return False
