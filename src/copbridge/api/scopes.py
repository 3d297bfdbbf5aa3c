"""The one table of who may call what: (method, path template) → required scope, or PUBLIC.

The app refuses to start while any route is missing here (fail closed), and the authorisation
matrix test is generated from the app's routes against this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from copbridge.config import Settings

PUBLIC: Final = "public"

ROUTE_SCOPES: Final[dict[tuple[str, str], str]] = {
    ("POST", "/api/v1/detections"): "detections:write",
    ("POST", "/api/v1/detections/batch"): "detections:write",
    ("GET", "/api/v1/detections"): "detections:read",
    ("GET", "/api/v1/detections/{detection_id}"): "detections:read",
    ("GET", "/api/v1/detections/{detection_id}/cot"): "detections:read",
    ("GET", "/api/v1/detections/{detection_id}/image"): "detections:read",
    ("GET", "/api/v1/destinations"): "destinations:read",
    ("GET", "/api/v1/audit"): "audit:read",
    ("GET", "/api/v1/audit/verify"): "audit:read",
    ("GET", "/api/v1/keys"): "keys:admin",
    ("POST", "/api/v1/keys"): "keys:admin",
    ("DELETE", "/api/v1/keys/{key_id}"): "keys:admin",
    ("POST", "/api/v1/auth/token"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/revoke"): PUBLIC,
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/livez"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    # the contract puts every endpoint under /api/v1; probes usually ask at the root
    ("GET", "/api/v1/livez"): PUBLIC,
    ("GET", "/api/v1/readyz"): PUBLIC,
    ("GET", "/api/v1/metrics"): PUBLIC,
}

#: Families declared as a whole: reading anything under /api/v1/destinations is one scope.
PREFIX_SCOPES: Final[tuple[tuple[str, str, str], ...]] = (
    ("GET", "/api/v1/destinations/", "destinations:read"),
)

#: FastAPI's own documentation routes (plain Starlette routes, outside the dependency system).
DOC_PATHS: Final = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def scope_table(settings: Settings) -> dict[tuple[str, str], str]:
    """The table with the health routes' configurable scopes applied."""
    table = dict(ROUTE_SCOPES)
    for path, scope in (
        ("/livez", settings.livez_scope),
        ("/readyz", settings.readyz_scope),
        ("/metrics", settings.metrics_scope),
    ):
        if scope is not None:
            table[("GET", path)] = scope
            table[("GET", f"/api/v1{path}")] = scope
    return table


def required_scope(table: dict[tuple[str, str], str], method: str, path: str) -> str | None:
    """The scope (or PUBLIC) a route needs; None when the route is not declared at all."""
    found = table.get((method, path))
    if found is not None:
        return found
    for prefix_method, prefix, scope in PREFIX_SCOPES:
        if method == prefix_method and path.startswith(prefix):
            return scope
    return None


@dataclass(frozen=True, slots=True)
class ServedRoute:
    """One (method, path template) the app answers, as the router will resolve it."""

    method: str
    path: str
    route: BaseRoute  # the route object the router puts in ``scope["route"]``
    dependencies: tuple[Any, ...]


def served_routes(app: FastAPI) -> list[ServedRoute]:
    """Every (method, path) the app serves, HEAD aside, with included routers' prefixes applied."""
    out = []
    for context in _route_contexts(app):
        original = getattr(context, "original_route", context)
        path = getattr(context, "path", None)
        methods = getattr(context, "methods", None)
        if not isinstance(original, Route) or path is None:
            out.append(ServedRoute("*", str(path or original), original, ()))
            continue
        deps = tuple(getattr(context, "dependencies", None) or ())
        out.extend(
            ServedRoute(m, path, original, deps) for m in sorted(methods or ()) if m != "HEAD"
        )
    return out


def _route_contexts(app: FastAPI) -> list[Any]:
    try:  # FastAPI ≥ 0.16x includes routers lazily; this walks them as the router will
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI flattens routes on include
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def undeclared_routes(app: FastAPI, table: dict[tuple[str, str], str]) -> list[str]:
    """Routes that would be served without a declared scope (empty when all is well)."""
    missing = []
    for served in served_routes(app):
        if not isinstance(served.route, APIRoute):
            if served.path not in DOC_PATHS:
                missing.append(f"{served.path} (not a FastAPI route: outside the auth dependency)")
            continue
        if required_scope(table, served.method, served.path) is None:
            missing.append(f"{served.method} {served.path}")
    return missing


def route_index(
    app: FastAPI, table: dict[tuple[str, str], str]
) -> dict[tuple[int, str], tuple[str, str]]:
    """(id of the route object, method) → (path template, scope), for the per-request lookup.

    Keyed by the route object so a router included under an extra prefix is still found; a route
    included twice under paths that need different scopes gets the stricter one: not PUBLIC.
    """
    index: dict[tuple[int, str], tuple[str, str]] = {}
    for served in served_routes(app):
        scope = required_scope(table, served.method, served.path)
        if scope is None or not isinstance(served.route, APIRoute):
            continue
        key = (id(served.route), served.method)
        if key in index and index[key][1] != scope:
            if scope == PUBLIC:
                continue
            if index[key][1] != PUBLIC:
                raise RuntimeError(f"{served.path} is included twice with different scopes")
        index[key] = (served.path, scope)
    return index
