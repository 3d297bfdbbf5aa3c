"""Detections in a file, as users write them: one JSON object, a JSON array of objects, JSON
lines, or objects one after another (pretty-printed, as ``jq`` writes them), in UTF-8 with or
without a byte-order mark, LF or CRLF.

Each item comes with the line it starts on and its exact text, so that a tool can name the line
of every refusal and forward the bytes as written (no float re-formatting, no 64-bit limit). A
part that cannot be read (bad JSON, bytes that are not UTF-8, NaN, a number too long for Python)
is one :class:`Unreadable` item naming its line; reading goes on at the next line that starts an
object or an array, so one bad line never hides the rest of the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_BLANK = " \t\r\n\ufeff"  # a byte-order mark also starts each file cat joined after the first


@dataclass(frozen=True, slots=True)
class Document:
    """One JSON value of the file: where it starts, its text and its value."""

    line: int
    text: str
    value: Any
    end: int  # offset in the decoded text just past this item, for progress


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A part of the file that is not a JSON value. When it is an object that holds one value
    JSON does not have (NaN, a number too long), ``field`` names where (``gimbal.roll``) and
    ``detection_id`` is its ``id``."""

    line: int
    error: str
    end: int
    field: str | None = None
    detection_id: str | None = None


Item = Document | Unreadable


def read(data: bytes) -> tuple[int, Iterator[Item]]:
    """The length of the decoded text (what ``end`` counts up to) and every item of a file's
    bytes in file order, the lines that are not UTF-8 included."""
    text, bad = decode(data)
    return len(text), _merged(items(text), bad)


def _merged(found: Iterator[Item], bad: list[Unreadable]) -> Iterator[Item]:
    pending = iter(bad)
    next_bad = next(pending, None)
    for item in found:
        while next_bad is not None and next_bad.line <= item.line:
            yield next_bad
            next_bad = next(pending, None)
        yield item
    if next_bad is not None:
        yield next_bad
        yield from pending


def decode(data: bytes) -> tuple[str, list[Unreadable]]:
    """UTF-8 text without its byte-order mark. A line holding bytes that are not UTF-8 is blanked
    (line numbers stay right) and reported, instead of failing the whole file."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff"), []
    except UnicodeDecodeError:
        pass
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append("")
            bad.append(Unreadable(number, f"not UTF-8 (byte {exc.start + 1} of the line)", 0))
    return "\n".join(lines).removeprefix("\ufeff"), bad


def items(text: str) -> Iterator[Item]:
    """Every JSON value of ``text`` in order; an array at the top is read item by item."""
    return _Reader(text).items()


class _Reader:
    """A forward-only walk over the text, with the line number of where it stands."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._counted = 0
        self._line = 1

    def items(self) -> Iterator[Item]:
        self.skip_blank()
        if self.pos < len(self.text) and self.text[self.pos] == "[":
            yield from self.array()
            self.skip_blank()
        while self.pos < len(self.text):
            try:
                value, end = _LENIENT.raw_decode(self.text, self.pos)
            except (ValueError, RecursionError) as exc:
                after = _next_object(self.text, self.pos)
                yield Unreadable(self.line(), unreadable_reason(exc), after)
                self.pos = after
            else:
                yield self._checked(value, end)
                self.pos = end
            self.skip_blank()

    def _checked(self, value: Any, end: int) -> Item:
        """The value as a document, or as unreadable where it holds a value JSON lacks."""
        try:
            found = _first_bad(value)
        except RecursionError:
            found = ("", _Bad("nested too deeply"))
        if found is None:
            return Document(self.line(), self.text[self.pos : end], value, end)
        field, bad = found
        found_id = value.get("id") if isinstance(value, dict) else None
        return Unreadable(
            self.line(),
            f"{field}: {bad.reason}" if field else bad.reason,
            end,
            field=field or None,
            detection_id=found_id if isinstance(found_id, str) else None,
        )

    def array(self) -> Iterator[Item]:
        text = self.text
        self.pos += 1
        self.skip_blank()
        if self.pos < len(text) and text[self.pos] == "]":
            self.pos += 1
            return
        while True:
            try:
                value, end = _LENIENT.raw_decode(text, self.pos)
            except (ValueError, RecursionError) as exc:
                # The rest of the array cannot be split reliably: one refusal for all of it.
                yield Unreadable(
                    self.line(), f"{unreadable_reason(exc)} (the rest of the array)", len(text)
                )
                self.pos = len(text)
                return
            # A NaN or an endless integer breaks its element, not the rest.
            yield self._checked(value, end)
            self.pos = end
            self.skip_blank()
            if self.pos < len(text) and text[self.pos] == ",":
                self.pos += 1
                self.skip_blank()
                continue
            if self.pos < len(text) and text[self.pos] == "]":
                self.pos += 1
                return
            yield Unreadable(self.line(), "expected , or ] in the array", len(text))
            self.pos = len(text)
            return

    def skip_blank(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        self.pos = pos

    def line(self) -> int:
        self._line += self.text.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self._line


class _Bad:
    """A value JSON does not have, kept in place so that its array element alone is refused."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _bad_int(digits: str) -> int | _Bad:
    try:
        return int(digits)
    except ValueError as exc:  # more digits than Python converts (4,300)
        return _Bad(unreadable_reason(exc))


_LENIENT = json.JSONDecoder(
    parse_constant=lambda name: _Bad(f"{name} is not a JSON number"), parse_int=_bad_int
)


def _first_bad(value: Any, path: str = "") -> tuple[str, _Bad] | None:
    """The first value JSON does not have, with where it is (``a.b[2]``; "" at the top)."""
    if isinstance(value, _Bad):
        return path, value
    if isinstance(value, dict):
        pairs: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        pairs = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in pairs:
        found = _first_bad(item, where)
        if found is not None:
            return found
    return None


def unreadable_reason(exc: BaseException) -> str:
    """Why a JSON text could not be read, in words for the user (no Python hints)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string ..."


def _next_object(text: str, pos: int) -> int:
    """The start of the first line after ``pos`` whose first non-blank character opens an
    object or an array: the next JSON line, or the next top-level object of a pretty-printed
    file (whose inner lines start with a key or a closing bracket)."""
    while True:
        newline = text.find("\n", pos)
        if newline < 0:
            return len(text)
        pos = newline + 1
        first = _skip_blank_in_line(text, pos)
        if first < len(text) and text[first] in "{[":
            return first


def _skip_blank_in_line(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r":
        pos += 1
    return pos


def kind_of(value: Any) -> str:
    """What a JSON value that is not an object is, as a refusal names it."""
    return {list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )
