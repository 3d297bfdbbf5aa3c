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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}

                def add(name: bytes, value: bytes) -> None:
                    if name not in present:
                        headers.append((name, value))
                        present.add(name)

                for name, value in _ALWAYS:
                    add(name, value)
                add(b"content-security-policy", _CSP_DOCS if path.startswith(_DOCS) else _CSP_API)
                if path.startswith(("/api/", "/.well-known/")):
                    add(b"cache-control", b"no-store")
                if self.hsts:
                    add(b"strict-transport-security", _HSTS)
                verdict = scope.get("state", {}).get("ratelimit")
                if isinstance(verdict, Verdict):
                    for field, text in verdict.headers().items():
                        add(field.lower().encode(), text.encode())
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
