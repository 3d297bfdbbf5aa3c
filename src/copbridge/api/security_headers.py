"""Hardening headers on every answer (nosniff, no framing, no referrer, ``no-store`` on the API,
HSTS under TLS, ``RateLimit-*``) and CORS that stays closed unless origins are configured."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from copbridge.config import Settings
from copbridge.security.ratelimit import Verdict

_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_CSP_API = b"default-src 'none'; frame-ancestors 'none'"
# The interactive docs load Swagger UI / ReDoc from a CDN; they still may not be framed.
_CSP_DOCS = b"frame-ancestors 'none'"
_HSTS = b"max-age=31536000; includeSubDomains"
_DOCS = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts
        # The fixed headers of each kind of path, built once: this runs on every answer.
        self._fixed = {kind: self._fixed_headers(kind) for kind in ("api", "docs", "other")}

    def _fixed_headers(self, kind: str) -> tuple[tuple[bytes, bytes], ...]:
        fixed = [
            *_ALWAYS,
            (b"content-security-policy", _CSP_DOCS if kind == "docs" else _CSP_API),
        ]
        if kind == "api":
            fixed.append((b"cache-control", b"no-store"))
        if self.hsts:
            fixed.append((b"strict-transport-security", _HSTS))
        return tuple(fixed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(_DOCS):
            fixed = self._fixed["docs"]
        elif path.startswith(("/api/", "/.well-known/")):
            fixed = self._fixed["api"]
        else:
            fixed = self._fixed["other"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}
                # A header the route set itself (an image's Cache-Control) is left as it is.
                headers.extend(pair for pair in fixed if pair[0] not in present)
                verdict = scope.get("state", {}).get("ratelimit")
                if isinstance(verdict, Verdict):
                    headers.extend(
                        pair for pair in verdict.header_pairs() if pair[0] not in present
                    )
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the headers middleware, and CORS only for the configured origins."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=[
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "X-Request-ID",
            ],
            max_age=600,
        )
    app.add_middleware(
        SecurityHeaders, hsts=settings.tls_cert is not None and settings.tls_key is not None
    )
