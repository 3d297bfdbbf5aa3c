"""Refuse request bodies over the limit before any of them is parsed (413), and compressed
bodies, which nothing here decompresses (415).

Checks Content-Length up front and counts streamed bytes for chunked uploads.
"""

from __future__ import annotations

import contextlib

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from copbridge.api.auth import Guard, client_ip, credential_kind, presented_credential
from copbridge.api.errors import problem
from copbridge.metrics import DETECTIONS_REJECTED
from copbridge.store import AuditEntry


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                # Read as JSON it was "not valid JSON: 'utf-8' codec can't decode byte 0x8b".
                coding = value.decode("latin-1").strip()
                detail = f"Content-Encoding {coding!r} is not accepted: send the body uncompressed"
                await problem(415, detail)(scope, receive, send)
                return
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        started = too_large = False

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_large:
                # FastAPI's routes catch the refusal while reading the body and answer 400
                # ("error parsing the body"); the client is told 413 instead.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counted, tracking_send)
        if too_large and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body is over the {self.max_bytes} byte limit"
        if scope.get("method") == "POST" and scope.get("path") in _DETECTION_ROUTES:
            await _audit_refused(scope, detail)
        response = problem(413, detail)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


_DETECTION_ROUTES = ("/api/v1/detections", "/api/v1/detections/batch")


async def _audit_refused(scope: Scope, detail: str) -> None:
    """A detection body refused for its size is a detection rejected (counted and audited as
    the others are). It is refused before any credential is checked, so it is audited within
    a budget, like a failed credential, and without an actor."""
    DETECTIONS_REJECTED.labels("too_large").inc()
    app = scope.get("app")
    guard = getattr(getattr(app, "state", None), "guard", None)
    if not isinstance(guard, Guard):
        return
    request = Request(scope)
    credential = presented_credential(request)
    entry = AuditEntry(
        kind="detection.rejected",
        data={
            "reason": "too_large",
            "field": "body",
            "message": detail,
            "route": scope.get("path"),
            "ip": client_ip(request),
            "credential": credential_kind(credential),
        },
    )
    await guard.audit_within("oversize-audit", "all", entry)
