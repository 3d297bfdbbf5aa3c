"""The fast JSON paths write what the standard library writes where bytes must never change
(the audit chain's canonical form), and never fail where the standard library would not."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from copbridge import jsontext
from copbridge.store.audit_chain import canonical, canonical_with

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


def _reference(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=400)
@given(_json)
def test_canonical_is_byte_for_byte_the_standard_library(value: Any) -> None:
    assert jsontext.canonical(value) == _reference(value)


@settings(max_examples=200)
@given(
    st.integers(min_value=1, max_value=2**62),
    st.integers(min_value=0, max_value=2**62),
    _text,
    st.none() | _text,
    st.none() | _text,
    st.dictionaries(_text, _json, max_size=4),
)
def test_the_audit_record_assembled_piecewise_equals_the_whole_dump(
    seq: int, at_us: int, kind: str, actor: str | None, subject: str | None, data: Any
) -> None:
    prev = "ab" * 32
    whole = _reference(
        {
            "seq": seq,
            "at_us": at_us,
            "kind": kind,
            "actor": actor,
            "subject": subject,
            "data": data,
            "prev": prev,
        }
    )
    assert canonical(seq, at_us, kind, actor, subject, data, prev) == whole
    piece = canonical_with(seq, at_us, kind, actor, subject, _reference(data), prev)
    assert piece == whole


@given(_json)
def test_dumps_reads_back_as_the_same_value(value: Any) -> None:
    assert json.loads(jsontext.dumps(value)) == value
    assert json.loads(jsontext.dumps_sorted(value)) == value
