"""The ingest routes dispatched straight to their handlers, past FastAPI's router.

``POST /api/v1/detections`` (and ``/batch``) is by far the most called route. Routing, dependency
solving and the exception middleware cost ~130 µs of the ~500 µs of CPU each request took
(``bench/bench_inproc.py``); here the request goes from our own middleware to the same guard
check the app-level dependency runs, the same handler and the same exception handlers. Every other
request takes FastAPI's way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from copbridge.api import detections
from copbridge.api.auth import Guard
from copbridge.api.scopes import served_routes

Handler = Callable[[Request], Awaitable[Response]]

_HANDLERS: dict[str, Handler] = {
    "/api/v1/detections": detections.post_detection,
    "/api/v1/detections/batch": detections.post_batch,
}


class IngestRoutes:
    """Pure ASGI middleware, innermost of ours: body limit, request id, logs, metrics and the
    hardening headers still wrap every answer it gives."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._routes: dict[str, tuple[APIRoute, Handler]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = self._table().get(_route_path(scope))
        if found is None:
            await self.app(scope, receive, send)
            return
        route, handler = found
        scope["route"] = route  # what the router would set: the guard and the logs read it
        request = Request(scope, receive, send)
        try:
            guard: Guard = self.api.state.guard
            await guard.check(request)
            response = await handler(request)
        except Exception as exc:
            answer = self._exception_handler(exc)
            if answer is None:
                raise  # as past the router: the server error middleware answers 500
            response = await answer(request, exc)
        await response(scope, receive, send)

    def _table(self) -> dict[str, tuple[APIRoute, Handler]]:
        if self._routes is None:
            # Built on the first request, when every router is included; only routes that are
            # really served (with their scope declared, checked at start) are taken.
            table: dict[str, tuple[APIRoute, Handler]] = {}
            for served in served_routes(self.api):
                handler = _HANDLERS.get(served.path)
                if (
                    served.method == "POST"
                    and handler is not None
                    and isinstance(served.route, APIRoute)
                    and served.route.endpoint is handler
                ):
                    table[served.path] = (served.route, handler)
            self._routes = table
        return self._routes

    def _exception_handler(
        self, exc: Exception
    ) -> Callable[[Request, Exception], Awaitable[Response]] | None:
        """The handler the exception middleware would pick: the nearest class registered."""
        handlers = self.api.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None and cls is not Exception:
                return handler  # type: ignore[return-value]
        return None


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy put in front of it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path
