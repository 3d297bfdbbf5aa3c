"""ASGI middleware: request id, one structured log line and the HTTP metrics for every request.

Plain ASGI (not BaseHTTPMiddleware) so streaming and the hot path pay no extra task per request.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from copbridge.logs import get_logger
from copbridge.metrics import HTTP_LATENCY, HTTP_REQUESTS

_log = get_logger("copbridge.http")
_CLIENT_CLOSED = 499  # nginx's name for it: the client closed the connection mid-request
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A request id needs to be unique, not secret: a random prefix per process and a counter cost a
# fraction of uuid4's urandom call (~4 % of a single detection's CPU on the event loop).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming
            if incoming and _SAFE_ID.match(incoming)
            else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        )
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Gone before its body was read: nobody to answer, and not a server error.
            status = _CLIENT_CLOSED
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(template, method, str(status)).inc()
            HTTP_LATENCY.labels(template, method).observe(elapsed)
            _log.info(
                "request",
                method=method,
                route=template,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
            structlog.contextvars.clear_contextvars()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
