"""XML text hygiene: what may appear in a CoT document and how it is escaped.

Keeps every Unicode character XML 1.0 allows, drops the ones it forbids (C0 controls other
than tab/LF/CR, surrogates, U+FFFE/U+FFFF) and escapes markup: any input text gives well-formed XML.
"""

from __future__ import annotations

import re

# XML 1.0 §2.2 Char production, inverted. Python strings can hold surrogate code points (from
# "surrogateescape" decoding or JSON "\ud800"), which no XML document and no UTF-8 encoder accepts.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# Fast path: most text needs no work at all, and one regex scan is cheaper than a replace chain.
_NEEDS_ATTR_WORK = re.compile('[&<>"\x00-\x1f\ud800-\udfff\ufffe\uffff]')
_NEEDS_TEXT_WORK = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(value: str) -> str:
    """Return `value` without the characters XML 1.0 forbids; every other character is kept."""
    return _FORBIDDEN.sub("", value)


def has_forbidden(value: str) -> bool:
    """True when `value` holds a character that XML 1.0 forbids."""
    return _FORBIDDEN.search(value) is not None


def escape_attr(value: str) -> str:
    """Escape `value` for a double-quoted attribute.

    Tab, LF and CR become character references because a parser normalises literal ones to
    spaces (attribute-value normalisation), so they would not survive a round trip otherwise.
    """
    if _NEEDS_ATTR_WORK.search(value) is None:
        return value
    return (
        _FORBIDDEN.sub("", value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def escape_text(value: str) -> str:
    """Escape `value` for element content.

    `>` is always escaped so `]]>` cannot appear; CR becomes `&#13;` because parsers turn a
    literal CR (and CRLF) into LF.
    """
    if _NEEDS_TEXT_WORK.search(value) is None:
        return value
    return (
        _FORBIDDEN.sub("", value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", "&#13;")
    )
