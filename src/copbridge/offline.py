"""``copbridge geolocate``: the pipeline without a server or a store.

Reads detections as ``copbridge send`` does (one object, an array, JSON lines or objects one
after another) and gives one line per detection, in input order: the API's 202 answer (or the
CoT event), or an error line naming the line, the detection and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from copbridge import documents
from copbridge.images import ImageRejected, decode_inline, verify_image
from copbridge.model import Detection, field_errors
from copbridge.pipeline import Pipeline, Rejection
from copbridge.store import ImageBlob

Format = Literal["json", "cot"]


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    ok: bool


_SERVICE_ONLY = ("status", "duplicate", "warnings")


def geolocate(data: bytes, pipeline: Pipeline, fmt: Format = "json") -> Iterator[Line]:
    """One line per detection of ``data`` (read as :mod:`copbridge.documents` reads files)."""
    _, found = documents.read(data)
    for item in found:
        if isinstance(item, documents.Unreadable):
            # A NaN is named where it is, as the API names it (its model sees the value).
            field = item.field or "body"
            error = {"field": field, "message": f"not JSON: {item.error}"}
            yield _error(item.line, item.detection_id, [error])
            continue
        if not isinstance(item.value, dict):
            kind = documents.kind_of(item.value)
            message = f"body: expected a JSON object (one detection), not {kind}"
            yield _error(item.line, None, [{"field": "body", "message": message}])
            continue
        detection_id = _id_of(item.value)
        try:
            # The value the reader parsed, validated as the API validates a body's.
            detection = Detection.model_validate(item.value)
            prepared = pipeline.prepare(detection, image=_image(detection, pipeline))
        except ValidationError as exc:
            yield _error(item.line, detection_id, field_errors(exc.errors()))
            continue
        except Rejection as exc:
            yield _error(item.line, detection_id, [{"field": exc.field, "message": exc.message}])
            continue
        except ImageRejected as exc:
            yield _error(item.line, detection_id, [{"field": "image", "message": f"image: {exc}"}])
            continue
        if fmt == "cot":
            yield Line(_one_line(prepared.record.cot_xml), ok=True)
        else:
            # Nothing is stored or delivered here: no status, and no warning about delivery.
            answer = {k: v for k, v in prepared.answer.items() if k not in _SERVICE_ONLY}
            yield Line(json.dumps(answer, ensure_ascii=False), ok=True)


def _image(detection: Detection, pipeline: Pipeline) -> ImageBlob | None:
    """An inline image checked as the API checks it (base64, decoded, size), kept nowhere; the
    event links to it as the service's would."""
    if detection.image is None:
        return None
    data = decode_inline(detection.image.data)
    max_bytes = pipeline.settings.max_image_bytes
    return verify_image(data, detection.image.media_type, max_bytes).blob()


def _one_line(cot_xml: bytes) -> str:
    """The stored event on one line: the declaration's line break dropped, one in text kept
    as the character reference it is (deleting it changed the text the service sends)."""
    text = cot_xml.decode()
    head, event = ("", text)
    if text.startswith("<?xml"):
        head, _, event = text.partition("\n")
    return head + event.replace("\n", "&#10;")


def _id_of(value: Any) -> str | None:
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _error(number: int, detection_id: str | None, errors: list[dict[str, str]]) -> Line:
    body = {"line": number, "id": detection_id, "error": errors[0]["message"], "errors": errors}
    return Line(json.dumps(body, ensure_ascii=False), ok=False)
