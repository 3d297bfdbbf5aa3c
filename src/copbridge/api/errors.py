"""One error shape for every refusal: ``{"detail": ..., "errors": [{"field", "message"}]}``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from copbridge.store import StoreUnavailable

RETRY_AFTER_S = "1"


def field_errors(errors: Iterable[Any], prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as ``field`` (dotted path) + ``message``; root errors name their field."""
    out = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            field = "body"
            message = f"body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        elif loc:
            field = ".".join(loc)
        else:
            field = message.split(" ", 1)[0] or "body"
        if prefix:
            field = f"{prefix}.{field}" if field != "body" else prefix
        out.append({"field": field, "message": f"{field}: {message}"})
    return out


def unprocessable(errors: list[dict[str, str]]) -> JSONResponse:
    detail = "; ".join(e["message"] for e in errors[:5])
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return unprocessable(field_errors(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return unprocessable(field_errors(exc.errors()))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return problem(503, f"not stored, retry later: {exc}", **{"Retry-After": RETRY_AFTER_S})
