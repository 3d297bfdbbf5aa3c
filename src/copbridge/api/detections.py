"""``/api/v1/detections``: ingest one or many detections, read them back, their CoT and image."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic_core import from_json

from copbridge.api.deps import StoreDep
from copbridge.api.errors import (
    RETRY_AFTER_S,
    FastJSONResponse,
    not_accepted,
    problem,
    unprocessable,
)
from copbridge.api.prepare_process import InvalidFields, PrepareProcess
from copbridge.config import Settings
from copbridge.documents import unreadable_reason
from copbridge.images import ImageRejected, VerifiedImage, decode_inline, verify_image
from copbridge.model import (
    ID_PATTERN,
    Answer,
    BatchAnswer,
    Detection,
    Rfc3339Time,
    errors_detail,
    field_errors,
)
from copbridge.pipeline import Pipeline, Prepared, Rejection
from copbridge.store import (
    Acceptance,
    DetectionQuery,
    ImageBlob,
    SqlStore,
    StoredDetection,
    StoreUnavailable,
)

router = APIRouter(prefix="/api/v1", tags=["detections"])

MAX_BATCH = 1000
_CHUNK = 100
"""A batch is validated and located this many items at a time, the event loop free in between:
a 1,000-item batch held it ~100-250 ms in one go, and live single detections waited behind it."""
_COMMIT_SLICE = 250
_ID = re.compile(ID_PATTERN)
_JSON = "application/json"

_DETECTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {"schema": {"$ref": "#/components/schemas/Detection"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["detection"],
                    "properties": {
                        "detection": {"type": "string", "description": "the detection (JSON)"},
                        "image": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                        {
                            "type": "object",
                            "required": ["detections"],
                            "properties": {
                                "detections": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Detection"},
                                }
                            },
                        },
                    ]
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"description": "id reused with a different body"},
    413: {"description": "body or image too large"},
    422: {"description": "the body breaks the contract, or the geometry gives no ground point"},
    503: {"description": "the store cannot take writes; retry"},
}


def _actor(request: Request) -> str | None:
    principal = getattr(request.state, "principal", None)
    return getattr(principal, "subject", None)


@router.post(
    "/detections",
    status_code=202,
    response_model=Answer,
    responses=_ERRORS,
    openapi_extra=_DETECTION_BODY,
)
async def post_detection(request: Request) -> Response:
    """Accept one detection (JSON, or multipart with an image); 202 once durably stored."""
    # The ingest routes read pipeline and settings off the app state themselves: every
    # dependency FastAPI solves costs tens of µs per request on the hottest path we have.
    pipeline: Pipeline = request.app.state.pipeline
    settings: Settings = request.app.state.settings
    actor = _actor(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    image: ImageBlob | None = None
    helper: PrepareProcess | None = request.app.state.prepare_process
    try:
        prepared: Prepared | None = None
        if content_type == "multipart/form-data":
            raw, part_bytes, part_type = await _read_multipart(request, settings.max_body_bytes)
            detection = Detection.model_validate(raw)
            image_bytes, declared = _one_image(detection, part_bytes, part_type)
        else:
            body = await request.body()
            # The helper process reads, validates and prepares it when it can (None: here).
            prepared = None if helper is None else await helper.prepare(body, actor)
            if prepared is None:
                raw = json_object(body)
                detection = Detection.model_validate(raw)
                image_bytes, declared = _inline_image(detection)
        if prepared is None:
            if image_bytes is not None:
                image = await _verified_image(image_bytes, declared, settings.max_image_bytes)
            prepared = pipeline.prepare(detection, raw=raw, image=image, actor=actor)
            # Kept only once located: a detection refused before its commit leaves no file.
            await _keep_files(pipeline, [prepared])
    except (ValidationError, InvalidFields) as exc:
        errors = exc.errors if isinstance(exc, InvalidFields) else field_errors(exc.errors())
        pipeline.reject("contract", None, {"errors": errors}, actor)
        return unprocessable(errors)
    except Rejection as exc:
        pipeline.reject(exc.reason, exc.subject, exc.as_error(), actor)
        return unprocessable([{"field": exc.field, "message": exc.message}])
    except ImageRejected as exc:
        pipeline.reject("image", None, {"field": "image", "message": str(exc)}, actor)
        if exc.too_large:
            return problem(413, str(exc))
        return unprocessable([{"field": "image", "message": f"image: {exc}"}])
    [(result, answer)] = await pipeline.commit([prepared])
    if result.outcome == "conflict":
        _forget_images(pipeline, [prepared])
        used = f"id {prepared.record.id} was already used with a different body"
        pipeline.reject("conflict", prepared.record.id, {"field": "id", "message": used}, actor)
        return problem(409, used)
    return FastJSONResponse(answer, status_code=202)


@router.post(
    "/detections/batch",
    status_code=202,
    response_model=BatchAnswer,
    responses={**_ERRORS, 207: {"description": "some items were refused", "model": BatchAnswer}},
    openapi_extra=_BATCH_BODY,
)
async def post_batch(request: Request) -> Response:
    """Accept up to 1,000 detections; per-item results in input order, partial success allowed."""
    pipeline: Pipeline = request.app.state.pipeline
    settings: Settings = request.app.state.settings
    actor = _actor(request)
    body = await request.body()
    helper: PrepareProcess | None = request.app.state.batch_prepare_process
    # The helper process reads, validates and prepares a batch without images (None: here).
    sorted_out = None if helper is None else await helper.prepare_batch(body, actor)
    if sorted_out is None:
        items = _batch_items(body)
        if isinstance(items, _BodyRefused):  # the whole body refused: one record
            pipeline.reject("contract", None, {"batch": items.detail}, actor)
            return items.response
        sorted_out = await _prepare_batch_here(pipeline, settings, items, actor)
    results, prepared = sorted_out
    if prepared:
        await _commit_items(pipeline, prepared, results)

    final = [r for r in results if r is not None]
    _audit_refusals(pipeline, final, actor)
    answers = [r["answer"] for r in final if r["answer"] is not None]
    duplicates = sum(1 for a in answers if a["duplicate"])
    accepted = len(answers) - duplicates
    failed = len(final) - len(answers)
    batch = {"accepted": accepted, "duplicates": duplicates, "rejected": failed, "results": final}
    if failed and not answers and all(r["status"] == 503 for r in final):
        # as a single detection's 503: the client retries the batch, after Retry-After
        return FastJSONResponse(batch, status_code=503, headers={"Retry-After": RETRY_AFTER_S})
    return FastJSONResponse(batch, status_code=207 if failed else 202)


SortedBatch = tuple[list[dict[str, Any] | None], list[tuple[int, Prepared]]]
"""A batch's refusals by index (None where the item is prepared) and its prepared items."""


async def _prepare_batch_here(
    pipeline: Pipeline, settings: Settings, items: list[Any], actor: str | None
) -> SortedBatch:
    results: list[dict[str, Any] | None] = [None] * len(items)
    checked = await _check_items(items, results)
    images = await _verify_images(settings.max_image_bytes, checked, results)
    valid = [c for c in checked if results[c.index] is None]
    located: list[Prepared | Rejection] = []
    now = datetime.now(UTC)
    for start in range(0, len(valid), _CHUNK):
        chunk = valid[start : start + _CHUNK]
        located += pipeline.prepare_many(
            [(c.detection, c.raw, images.get(c.index)) for c in chunk], actor=actor, now=now
        )
        await asyncio.sleep(0)
    prepared = _sort_located(valid, located, results)
    await _keep_files(pipeline, [ready for _, ready in prepared])
    return results, prepared


def prepare_batch_without_images(
    pipeline: Pipeline, body: bytes, actor: str | None
) -> SortedBatch | None:
    """:func:`post_batch`'s preparation in one go, for the helper process; None for a body
    the route must answer itself (a refused body, or an item with an image to keep)."""
    items = _batch_items(body)
    if isinstance(items, _BodyRefused):
        return None
    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[_Checked] = []
    for index, raw in enumerate(items):
        outcome = _validate_item(index, raw)
        if isinstance(outcome, dict):
            results[index] = outcome
        elif outcome.image is not None:
            return None
        else:
            valid.append(outcome)
    located = pipeline.prepare_many(
        [(c.detection, c.raw, None) for c in valid], actor=actor, now=datetime.now(UTC)
    )
    return results, _sort_located(valid, located, results)


def _sort_located(
    valid: list[_Checked],
    located: list[Prepared | Rejection],
    results: list[dict[str, Any] | None],
) -> list[tuple[int, Prepared]]:
    """The prepared items by index; a geometry or time refusal goes into ``results``."""
    prepared: list[tuple[int, Prepared]] = []
    for item, ready in zip(valid, located, strict=True):
        if isinstance(ready, Rejection):
            refusal = (ready.reason, ready.subject or item.detection.id)
            results[item.index] = _refused(item.index, 422, ready.field, ready.message, refusal)
        else:
            prepared.append((item.index, ready))
    return prepared


@dataclass(frozen=True, slots=True)
class _BodyRefused:
    """A batch body refused as a whole: the answer, and its detail for the audit record."""

    response: Response
    detail: str


def _batch_items(body: bytes) -> list[Any] | _BodyRefused:
    """The batch's items (a list, or an object holding ``detections``), or the refusal."""
    try:
        parsed = _parse_json(body)
    except Rejection as exc:
        return _unprocessable_body(exc.as_error())
    if isinstance(parsed, dict):
        unknown = sorted(str(key) for key in parsed if key != "detections")
        if unknown:
            field = unknown[0]
            return _unprocessable_body({"field": field, "message": f"{field}: unknown field"})
    items = parsed.get("detections") if isinstance(parsed, dict) else parsed
    if not isinstance(items, list):
        message = "detections: expected a list of detections"
        return _unprocessable_body({"field": "detections", "message": message})
    if len(items) > MAX_BATCH:
        detail = f"a batch holds at most {MAX_BATCH} detections, got {len(items)}"
        return _BodyRefused(problem(413, detail), detail)
    return items


def _unprocessable_body(error: dict[str, str]) -> _BodyRefused:
    return _BodyRefused(unprocessable([error]), errors_detail([error]))


def _item(
    index: int,
    status: int,
    answer: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    refusal: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """One batch result, the JSON of :class:`copbridge.model.BatchItemResult`; ``refusal``,
    the reason and the detection's id for its audit record, leaves before it is sent."""
    item: dict[str, Any] = {"index": index, "status": status, "answer": answer, "error": error}
    if refusal is not None:
        item[_REFUSAL] = refusal
    return item


_REFUSAL = "_refusal"


def _refused(
    index: int, status: int, field: str, message: str, refusal: tuple[str, str | None]
) -> dict[str, Any]:
    """A refused item. Its error has the shape of a refused single detection's body
    (``detail``, and ``errors`` naming each field), the field named within the batch:
    ``detections[3].time``. (A 503 names no field: its ``errors`` is empty.)"""
    name = f"detections[{index}].{field}"
    entry = {"field": name, "message": f"{name}: {message.removeprefix(f'{field}: ')}"}
    return _item(
        index, status, error={"detail": entry["message"], "errors": [entry]}, refusal=refusal
    )


def _audit_refusals(pipeline: Pipeline, results: list[dict[str, Any]], actor: str | None) -> None:
    """One ``detection.rejected`` record per refused item, with its reason, index and id, as a
    refused single detection has; the private marks leave the answers."""
    refused = []
    for result in results:
        refusal = result.pop(_REFUSAL, None)
        if refusal is not None:
            reason, subject = refusal
            error = {"index": result["index"], "errors": result["error"]["errors"]}
            refused.append((reason, subject, error))
    if refused:
        pipeline.reject_many(refused, actor)


def _id_of(raw: object) -> str | None:
    """The id a refused item gave, for its audit record (only one the contract could take)."""
    given = raw.get("id") if isinstance(raw, dict) else None
    return given if isinstance(given, str) and _ID.fullmatch(given) else None


async def _check_items(items: list[Any], results: list[dict[str, Any] | None]) -> list[_Checked]:
    """Each item against the contract (refusals go into ``results``), yielding the loop now
    and then."""
    checked: list[_Checked] = []
    for index, raw in enumerate(items):
        outcome = _validate_item(index, raw)
        if isinstance(outcome, dict):
            results[index] = outcome
        else:
            checked.append(outcome)
        if index % _CHUNK == _CHUNK - 1:
            await asyncio.sleep(0)  # let live single detections in between
    return checked


@dataclass(frozen=True, slots=True)
class _Checked:
    """A batch item that met the contract, with its inline image still to verify."""

    index: int
    detection: Detection
    raw: dict[str, Any] | None
    image: bytes | None
    declared: str | None


def _validate_item(index: int, raw: object) -> _Checked | dict[str, Any]:
    try:
        detection = Detection.model_validate(raw)
        image_bytes, declared = _inline_image(detection)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), prefix=f"detections[{index}]")
        error = {"detail": errors_detail(errors), "errors": errors}
        return _item(index, 422, error=error, refusal=("contract", _id_of(raw)))
    except ImageRejected as exc:
        return _image_refused(index, exc, _id_of(raw))
    return _Checked(index, detection, raw if isinstance(raw, dict) else None, image_bytes, declared)


def _image_refused(index: int, exc: ImageRejected, detection_id: str | None) -> dict[str, Any]:
    status = 413 if exc.too_large else 422
    return _refused(index, status, "image", str(exc), ("image", detection_id))


async def _verify_images(
    max_bytes: int, checked: list[_Checked], results: list[dict[str, Any] | None]
) -> dict[int, ImageBlob]:
    """Verify the batch's images side by side (Pillow decodes outside the GIL); a refused
    image refuses its item only. Files are kept once the items are located (``_keep_files``)."""
    with_image = [c for c in checked if c.image is not None]
    if not with_image:
        return {}
    verified = await asyncio.gather(
        *(
            run_in_threadpool(_verify_or_refusal, c.image, c.declared, max_bytes)
            for c in with_image
            if c.image is not None
        )
    )
    kept: dict[int, ImageBlob] = {}
    for item, outcome in zip(with_image, verified, strict=True):
        if isinstance(outcome, ImageRejected):
            results[item.index] = _image_refused(item.index, outcome, item.detection.id)
            continue
        kept[item.index] = outcome.blob()
    return kept


def _verify_or_refusal(
    data: bytes, declared: str | None, max_bytes: int
) -> VerifiedImage | ImageRejected:
    try:
        return verify_image(data, declared, max_bytes)
    except ImageRejected as exc:
        return exc


async def _commit_items(
    pipeline: Pipeline,
    prepared: list[tuple[int, Prepared]],
    results: list[dict[str, Any] | None],
) -> None:
    committed: list[tuple[Acceptance, dict[str, Any]]] = []
    try:
        for start in range(0, len(prepared), _COMMIT_SLICE):
            # Slice by slice: a live detection's commit waits for one slice's statements, not
            # for a whole 1,000-item batch's (they run on the event loop).
            chunk = prepared[start : start + _COMMIT_SLICE]
            committed += await pipeline.commit([p for _, p in chunk])
    except StoreUnavailable as exc:
        for index, _ in prepared[len(committed) :]:
            results[index] = _item(index, 503, error={**not_accepted(exc), "errors": []})
        prepared = prepared[: len(committed)]
    conflicts: list[Prepared] = []
    for (index, item), (result, answer) in zip(prepared, committed, strict=True):
        if result.outcome == "conflict":
            conflicts.append(item)
            used = f"{item.record.id} was already used with a different body"
            results[index] = _refused(index, 409, "id", used, ("conflict", item.record.id))
        else:
            results[index] = _item(index, 202, answer=answer)
    _forget_images(pipeline, conflicts)


def _forget_images(pipeline: Pipeline, refused: Sequence[Prepared]) -> None:
    """The files kept for detections refused at their commit go, unless a stored one names
    the same image (the store decides that in its writer)."""
    names = [p.record.image.sha256 for p in refused if p.record.image is not None]
    if names:
        pipeline.store.forget_image_files(names)


@router.get("/detections", responses={422: {"description": "bad filter"}})
async def list_detections(
    store: StoreDep,
    since: Annotated[Rfc3339Time | None, Query(description="detection time ≥ since")] = None,
    until: Annotated[Rfc3339Time | None, Query(description="detection time < until")] = None,
    sensor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
    label: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    # At most 18 digits: every cursor fits the store's 64-bit sequence numbers.
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """A filtered page of detections in arrival order; pass ``next_cursor`` back for the next
    page (null: this was the last one). ``tail_cursor`` is never null: passed back later, it
    gives what arrived since this page, which is how a client follows new detections."""
    query = DetectionQuery(
        since_us=None if since is None else int(since.timestamp() * 1e6),
        until_us=None if until is None else int(until.timestamp() * 1e6),
        sensor_id=sensor,
        label=label,
        after_seq=None if cursor is None else int(cursor),
        limit=limit,
    )
    rows = await run_in_threadpool(store.list_detections, query)
    last = str(rows[-1].seq) if rows else (cursor or "0")
    return {
        "items": [_view(r) for r in rows],
        "next_cursor": last if len(rows) == limit else None,
        "tail_cursor": last,
    }


@router.get("/detections/{detection_id}", responses={404: {"description": "unknown id"}})
async def get_detection(detection_id: str, store: StoreDep) -> Response:
    """One stored detection with its answer."""
    row = await _stored(store, detection_id)
    if row is None:
        return problem(404, f"no detection {detection_id}")
    return JSONResponse(_view(row))


@router.get(
    "/detections/{detection_id}/cot",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}, 404: {"description": "unknown id"}},
)
async def get_detection_cot(detection_id: str, store: StoreDep) -> Response:
    """The detection's CoT event as sent to TAK."""
    row = await _stored(store, detection_id)
    if row is None:
        return problem(404, f"no detection {detection_id}")
    return Response(row.cot_xml, media_type="application/xml")


@router.get(
    "/detections/{detection_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}},
        404: {"description": "unknown id or no image"},
    },
)
async def get_detection_image(detection_id: str, store: StoreDep) -> Response:
    """The stored image of a detection."""
    row = await _stored(store, detection_id)
    if row is None or row.image_sha256 is None:
        return problem(404, f"no image for detection {detection_id}")
    found = await run_in_threadpool(store.get_image, row.image_sha256)
    if found is None:
        return problem(404, f"image of detection {detection_id} is missing")
    media_type, data = found
    return Response(
        data,
        media_type=media_type,
        headers={"ETag": f'"{row.image_sha256}"', "Cache-Control": "private, max-age=3600"},
    )


# -- helpers --------------------------------------------------------------------------------------


async def _stored(store: SqlStore, detection_id: str) -> StoredDetection | None:
    # No stored id can break the id pattern, so such a path is unknown without asking the store
    # (which could not even be asked on PostgreSQL for an id holding NUL).
    if _ID.match(detection_id) is None:
        return None
    return await run_in_threadpool(store.get_detection, detection_id)


def _view(row: StoredDetection) -> dict[str, Any]:
    return {
        "id": row.id,
        "received": row.received_us,
        "detection": row.detection,
        "answer": row.answer,
        "image": row.image_sha256 is not None,
    }


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a refusal naming the body."""
    value = _parse_json(body)
    if not isinstance(value, dict):
        raise Rejection("body", "body: expected a JSON object (one detection)", reason="contract")
    return value


def _one_image(
    detection: Detection, part: bytes | None, part_type: str | None
) -> tuple[bytes | None, str | None]:
    if part is None:
        return _inline_image(detection)
    if detection.image is not None:
        raise ImageRejected("give the image either inline or as a part, not both")
    return part, part_type


def _parse_json(body: bytes) -> Any:
    """pydantic's fast parser first; NaN and Infinity pass so that the model names the field
    holding them. It refuses a document with a lone surrogate escape as a whole, so the standard
    parser reads those and the model names the fields that are not Unicode text."""
    try:
        return from_json(body, allow_inf_nan=True)
    except ValueError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise Rejection("body", "body: JSON nested too deeply", reason="contract") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit integer
        reason = unreadable_reason(exc)
        raise Rejection("body", f"body: not valid JSON: {reason}", reason="contract") from None


def _inline_image(detection: Detection) -> tuple[bytes | None, str | None]:
    if detection.image is None:
        return None, None
    return decode_inline(detection.image.data), detection.image.media_type


async def _verified_image(data: bytes, declared: str | None, max_bytes: int) -> ImageBlob:
    verified = await run_in_threadpool(verify_image, data, declared, max_bytes)
    return verified.blob()


async def _keep_files(pipeline: Pipeline, prepared: Sequence[Prepared]) -> None:
    """Write the image files of detections about to be committed, where the store keeps files
    (SQLite); the rows go with the detections, in their commit. Written after locating, so a
    detection refused for its geometry or time leaves no file behind."""
    images = [p.record.image for p in prepared if p.record.image is not None]
    if images and pipeline.store.keeps_image_files:
        await run_in_threadpool(pipeline.store.keep_image_files, images)


_PART_TYPES: dict[str | None, str | None] = {
    None: None,
    "application/octet-stream": None,
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    # Names some cameras, phones and HTTP libraries give the same two formats.
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
}
"""An image part's declared type and what the bytes must then be (None: whichever they are)."""


async def _read_multipart(
    request: Request, max_bytes: int
) -> tuple[dict[str, Any], bytes | None, str | None]:
    """The ``detection`` part as a JSON object, and the ``image`` part's bytes and type."""
    # Two parts at most, and either may come as a file (curl -F detection=@det.json).
    form = await request.form(max_files=2, max_fields=2, max_part_size=max_bytes)
    try:
        unknown = sorted(name for name in form if name not in ("detection", "image"))
        if unknown:
            raise Rejection(unknown[0], f"{unknown[0]}: unknown part (detection and image only)")
        for name in ("detection", "image"):
            if len(form.getlist(name)) > 1:
                raise Rejection(name, f"{name}: the multipart body holds more than one")
        part = form.get("detection")
        if part is None:
            raise Rejection("detection", "detection: the multipart body needs a 'detection' part")
        text = part if isinstance(part, str) else await part.read()
        raw = json_object(text.encode() if isinstance(text, str) else text)
        upload = form.get("image")
        if upload is None:
            return raw, None, None
        if isinstance(upload, str):
            raise Rejection("image", "image: the part must be a file with the image's bytes")
        declared = (upload.content_type or "").split(";")[0].strip().lower() or None
        if declared not in _PART_TYPES:
            raise ImageRejected(f"image part type {declared} is not accepted (JPEG or PNG only)")
        data = await upload.read()
        return raw, data, _PART_TYPES[declared]
    finally:
        await form.close()
