"""One error shape for every refusal: ``{"detail": ..., "errors": [{"field", "message"}]}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from copbridge import jsontext
from copbridge.model import errors_detail, field_errors
from copbridge.store import CommitInDoubt, StoreUnavailable

RETRY_AFTER_S = "1"
STORED_UNKNOWN = "unknown"
"""``"stored"`` of a 503 whose commit was cut off: the client cannot count it as not stored."""


class FastJSONResponse(JSONResponse):
    """A JSON response written by orjson: the ingest answers are on the hot path."""

    def render(self, content: Any) -> bytes:
        return jsontext.dumps(content)


def unprocessable(errors: list[dict[str, str]]) -> JSONResponse:
    # FastJSONResponse: what a client sent is echoed here, lone surrogates included
    return FastJSONResponse({"detail": errors_detail(errors), "errors": errors}, status_code=422)


def problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return FastJSONResponse({"detail": detail}, status_code=status, headers=headers or None)


#: The 422 body as sent, documented under the names FastAPI's generated schema refers to (its own
#: ``HTTPValidationError`` shape, a list under ``detail``, is never sent by this API).
_DOCUMENTED_422 = {
    "ValidationError": {
        "title": "FieldError",
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
    "HTTPValidationError": {
        "title": "Unprocessable",
        "type": "object",
        "required": ["detail", "errors"],
        "properties": {
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
        },
    },
}


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI schema describe the error bodies this module really sends."""
    schema.setdefault("components", {}).setdefault("schemas", {}).update(_DOCUMENTED_422)
    return schema


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        # A body the framework cannot even parse (not UTF-8, a malformed multipart form) breaks
        # the contract like any other bad body: 422 naming the body, not an undocumented 400.
        if exc.status_code == 400:
            return unprocessable([{"field": "body", "message": f"body: {exc.detail}"}])
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return unprocessable(field_errors(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return unprocessable(field_errors(exc.errors()))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        if request.method in ("GET", "HEAD"):  # a read: nothing was sent to be stored
            body = {"detail": f"the store cannot answer now, retry later: {exc}"}
        else:
            body = not_accepted(exc)
        return FastJSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


def not_accepted(exc: StoreUnavailable) -> dict[str, str]:
    """What a write's 503 says: not stored, or (a commit cut off) perhaps stored, marked
    ``"stored": "unknown"``; retried with the same id, a stored detection is answered as a
    duplicate either way."""
    if isinstance(exc, CommitInDoubt):
        detail = f"not accepted, retry later with the same id (it may have been stored): {exc}"
        return {"detail": detail, "stored": STORED_UNKNOWN}
    return {"detail": f"not stored, retry later: {exc}"}
