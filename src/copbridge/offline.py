"""``copbridge geolocate``: the pipeline without a server or a store.

Reads one detection (a JSON document) or many (JSON lines) and gives one line per input, in
input order: the API's 202 answer (or the CoT event), or an error line naming the detection
and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from copbridge.model import Detection, field_errors
from copbridge.pipeline import Pipeline, Rejection

Format = Literal["json", "cot"]


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    ok: bool


def _documents(text: str) -> Iterator[tuple[int, str]]:
    """(line number, JSON text): the whole input if it is one JSON value, else each line."""
    stripped = text.strip()
    if not stripped:
        return
    try:
        json.loads(stripped)
    except (ValueError, RecursionError):  # not JSON, a 5,000-digit number, nested too deeply
        pass
    else:
        if "\n" not in stripped or not stripped.startswith("{") or _one_object(stripped):
            yield 1, stripped
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _one_object(text: str) -> bool:
    # A pretty-printed single object parses whole; JSON lines with one object do too.
    return isinstance(json.loads(text), dict)


def geolocate(text: str, pipeline: Pipeline, fmt: Format = "json") -> Iterator[Line]:
    for number, document in _documents(text):
        detection_id = _id_of(document)
        try:
            detection = Detection.model_validate_json(document)
            prepared = pipeline.prepare(detection)
        except ValidationError as exc:
            yield _error(number, detection_id, field_errors(exc.errors()))
            continue
        except Rejection as exc:
            yield _error(number, detection_id, [{"field": exc.field, "message": exc.message}])
            continue
        if fmt == "cot":
            yield Line(prepared.record.cot_xml.decode().replace("\n", ""), ok=True)
        else:
            answer = {k: v for k, v in prepared.answer.items() if k not in ("status", "duplicate")}
            yield Line(json.dumps(answer, ensure_ascii=False), ok=True)


def _id_of(document: str) -> str | None:
    try:
        value = json.loads(document)
    except (ValueError, RecursionError):
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _error(number: int, detection_id: str | None, errors: list[dict[str, str]]) -> Line:
    body = {"line": number, "id": detection_id, "error": errors[0]["message"], "errors": errors}
    return Line(json.dumps(body, ensure_ascii=False), ok=False)
