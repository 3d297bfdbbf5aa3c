"""Who is calling and may they: API keys or access tokens → ``Principal``, checked against the
scope table by one app-level dependency, after the per-IP and before the per-credential limits.

Failures answer 401 with ``WWW-Authenticate: Bearer``, missing scopes 403, floods 429. Failed
attempts count against a tight per-IP limit before anything is written to the audit trail, so a
flood of garbage credentials cannot grow it without bound.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, NoReturn

from cachetools import TTLCache
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from prometheus_client import Counter

from copbridge.api.scopes import PUBLIC, route_index, scope_table, served_routes, undeclared_routes
from copbridge.config import Settings
from copbridge.logs import get_logger
from copbridge.security.keys import (
    UNPROVEN_REFUSALS,
    KeyRing,
    is_usable,
    load_pepper,
    now_us,
)
from copbridge.security.ratelimit import RateLimits, Verdict
from copbridge.security.signing import SigningKeys
from copbridge.security.tokens import TokenAuthority, TokenRejected, family_mark
from copbridge.store import ApiKeyRecord, AuditEntry, SqlStore, StoreError

KeyAnswer = tuple[ApiKeyRecord | None, str]

_log = get_logger("copbridge.auth")

AUTH_FAILURES = Counter(
    "copbridge_auth_failures_total", "Refused credentials by kind of failure.", ["reason"]
)
RATE_LIMITED = Counter("copbridge_rate_limited_total", "Requests answered 429.", ["limit"])

#: At most this many auth-failure audit records per minute across all clients; the failures
#: past it are counted and the count written with the next record the budget lets through.
_FAILURE_AUDITS_PER_MINUTE = 600
_LOCKED_OUT_ADDRESSES = 10_000
"""Addresses whose refused attempts are counted one by one; past this many, together."""
_OTHER_ADDRESSES = "other addresses"
_LOCKED_OUT_RECORD_EVERY_S = 60.0
_LOCKED_OUT_RECORDED = 100  # addresses recorded one by one each minute; the rest together
#: At most this many ``auth.forbidden`` records per minute for one credential (a valid key
#: calling what it may not, in a loop, must not grow the audit without bound).
_FORBIDDEN_AUDITS_PER_MINUTE = 60


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: an API key, directly or through an access token."""

    subject: str  # the key id
    scopes: frozenset[str]
    kind: Literal["key", "token"]
    token_id: str | None = None


class Unauthorized(HTTPException):
    def __init__(self, detail: str, presented: bool) -> None:
        challenge = 'Bearer realm="copbridge"'
        if presented:
            challenge += ', error="invalid_token"'
        super().__init__(401, detail, headers={"WWW-Authenticate": challenge})


MAX_CREDENTIAL_CHARS = 8192
"""Longer than any key (55 characters) or token we issue (about 1 KB): refused unparsed."""
MAX_REASON_CHARS = 200
"""A refusal's reason, as audited and answered, is cut to this: it may quote the credential."""


class Guard:
    """Credentials, tokens and limits of one running app (``app.state.guard``)."""

    def __init__(self, settings: Settings, store: SqlStore) -> None:
        self.settings = settings
        self.store = store
        pepper = settings.key_pepper.get_secret_value() if settings.key_pepper else None
        self.keyring = KeyRing(
            store, load_pepper(pepper, settings.data_dir), settings.key_cache_ttl_s
        )
        self.signing = SigningKeys(
            settings.data_dir / "jwt-keys",
            pem=settings.jwt_signing_key,
            previous=settings.jwt_previous_keys,
            rotate_after_s=settings.jwt_rotate_days * 86400,
            retain_s=max(settings.access_token_ttl_s, settings.refresh_token_ttl_s),
        )
        self.tokens = TokenAuthority(
            self.signing,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.access_token_ttl_s,
            settings.refresh_token_ttl_s,
        )
        self.limits = RateLimits(
            settings.rate_limit_storage,
            {
                "credential": settings.rate_limit_credential,
                "ip": settings.rate_limit_ip,
                "auth": settings.rate_limit_auth,
                "failure": settings.rate_limit_auth,
                "failure-audit": f"{_FAILURE_AUDITS_PER_MINUTE}/minute",
                "oversize-audit": f"{_FAILURE_AUDITS_PER_MINUTE}/minute",
                "forbidden-audit": f"{_FORBIDDEN_AUDITS_PER_MINUTE}/minute",
            },
            prefix=settings.rate_limit_prefix,
            timeout_s=settings.rate_limit_storage_timeout_ms / 1000,
        )
        self.index: dict[tuple[int, str], tuple[str, str]] = {}
        self._revoked: TTLCache[str, bool] = TTLCache(maxsize=50_000, ttl=settings.key_cache_ttl_s)
        self._unaudited: dict[tuple[str, str], int] = {}  # past a budget: (kind, identity)
        # Failed attempts answered 429 (the address is locked out) since its last record.
        self._locked_out: dict[str, int] = {}
        self._locked_out_since = time.monotonic()
        self._verifying: dict[str, asyncio.Future[KeyAnswer]] = {}

    # -- the gate ----------------------------------------------------------------------------------
    async def check(self, request: Request) -> None:
        found = self.index.get((id(request.scope.get("route")), request.method))
        if found is None:  # cannot happen after the start-up check; fail closed regardless
            raise HTTPException(403, "route has no declared scope")
        path, needed = found
        request.state.route_template = path
        ip = client_ip(request)
        tier = "auth" if path.startswith("/api/v1/auth/") else "ip"
        await self.limit(request, tier, ip)
        if needed == PUBLIC:
            return
        credential = presented_credential(request)
        if credential is None:
            await self.refuse(request, "missing credential", None)
        principal, reason = await self.authenticate(credential)
        if principal is None:
            await self.refuse(request, reason, credential)
        await self.limit(request, "credential", principal.subject)
        request.state.principal = principal
        if needed not in principal.scopes:
            AUTH_FAILURES.labels("forbidden").inc()
            await self.audit_within(
                "forbidden-audit",
                principal.subject,
                AuditEntry(
                    kind="auth.forbidden",
                    subject=principal.subject,
                    actor=principal.subject,
                    data={"route": path, "method": request.method, "scope": needed},
                ),
            )
            raise HTTPException(403, f"this credential lacks the {needed} scope")

    async def limit(self, request: Request, name: str, identity: str) -> Verdict:
        verdict = await self.limits.hit(name, identity)
        request.state.ratelimit = verdict
        if not verdict.allowed:
            RATE_LIMITED.labels(name).inc()
            raise HTTPException(429, "too many requests", headers=verdict.headers())
        return verdict

    async def refuse(self, request: Request, reason: str, credential: str | None) -> NoReturn:
        """Count a failed attempt against the caller's IP, audit it (bounded), answer 401."""
        if len(reason) > MAX_REASON_CHARS:  # a reason may quote what the caller sent
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        AUTH_FAILURES.labels(_reason_label(reason)).inc()
        ip = client_ip(request)
        verdict = await self.limits.hit("failure", ip)
        if not verdict.allowed:
            request.state.ratelimit = verdict
            RATE_LIMITED.labels("failure").inc()
            await self._locked_out_attempt(request, ip, credential)
            raise HTTPException(429, "too many failed attempts", headers=verdict.headers())
        data: dict[str, Any] = {"reason": reason, **_attempt(request, ip, credential)}
        if locked := self._locked_out.pop(ip, 0):
            data["locked_out_attempts"] = locked
        await self.audit_within(
            "failure-audit",
            "all",
            AuditEntry(kind="auth.failed", subject=_key_id_of(credential), data=data),
        )
        # The audit keeps the exact reason; the caller is not told whether the key id exists
        # (the secret check already costs the same either way).
        shown = _UNPROVEN if reason in UNPROVEN_REFUSALS else reason
        raise Unauthorized(shown, presented=credential is not None)

    # -- credentials -------------------------------------------------------------------------------
    async def authenticate(self, credential: str) -> tuple[Principal | None, str]:
        if len(credential) > MAX_CREDENTIAL_CHARS:  # refused before anything parses it
            return None, f"credential longer than {MAX_CREDENTIAL_CHARS} characters"
        if credential.startswith("cpb_"):
            record, due = self.keyring.lookup(credential)
            reason = "ok"
            if record is None:
                record, reason = await self._verify_key(credential, refresh=False)
            elif due:
                # Re-checked while the cached answer still serves: a busy key never waits for
                # the store (which a whole burst of requests did, each time the entry expired).
                self._verify_key_soon(credential)
            if reason != "ok" or record is None:
                return None, reason
            return Principal(record.key_id, frozenset(record.scopes), "key"), "ok"
        if credential.count(".") == 2:
            return await self._from_token(credential)
        return None, "malformed credential"

    def _verify_key(self, credential: str, *, refresh: bool) -> asyncio.Future[KeyAnswer]:
        """One store verification per key at a time: concurrent callers share its answer."""
        digest = KeyRing.digest(credential)
        running = self._verifying.get(digest)
        if running is None:
            running = asyncio.ensure_future(
                run_in_threadpool(self.keyring.verify, credential, refresh=refresh)
            )
            self._verifying[digest] = running
            running.add_done_callback(lambda _: self._verifying.pop(digest, None))
        return asyncio.shield(running)

    def _verify_key_soon(self, credential: str) -> None:
        if KeyRing.digest(credential) not in self._verifying:
            self._verify_key(credential, refresh=True).add_done_callback(_report_refresh)

    async def _from_token(self, token: str) -> tuple[Principal | None, str]:
        try:
            claims = self.tokens.check(token, "access")
        except TokenRejected as exc:
            return None, str(exc)
        if await self.token_revoked(claims.jti):
            return None, "token revoked"
        if claims.family is not None and await self.token_revoked(family_mark(claims.family)):
            return None, "token revoked: its refresh family was revoked"
        record = await self.key_record(claims.subject)
        if record is None or not is_usable(record, now_us()):
            return None, "the token's key is revoked or expired"
        scopes = frozenset(claims.scopes) & frozenset(record.scopes)
        return Principal(record.key_id, scopes, "token", claims.jti), "ok"

    async def token_revoked(self, jti: str) -> bool:
        found = self._revoked.get(jti)
        if found is None:
            found = await run_in_threadpool(self.store.is_token_revoked, jti)
            self._revoked[jti] = found
        return found

    def remember_revoked(self, jti: str) -> None:
        self._revoked[jti] = True

    async def key_record(self, key_id: str) -> ApiKeyRecord | None:
        if self.keyring.has_record(key_id):
            return self.keyring.record(key_id)
        return await run_in_threadpool(self.keyring.record, key_id)

    async def _locked_out_attempt(self, request: Request, ip: str, credential: str | None) -> None:
        """A failed attempt from a locked-out address: the first one is recorded, the rest
        counted (``locked_out_attempts`` in the address's next record, or at shutdown) so that
        a guessing run shows its size, not only the attempts before the lock-out."""
        # Written every minute (queued, not awaited): a table of every address ever locked out
        # would fill, and counts would wait for the address's next failure.
        due = time.monotonic() - self._locked_out_since >= _LOCKED_OUT_RECORD_EVERY_S
        if due and (entries := self._locked_out_entries()):
            self.audit_many(entries)
        if ip in self._locked_out:
            self._locked_out[ip] += 1
            return
        if len(self._locked_out) >= _LOCKED_OUT_ADDRESSES:
            self._locked_out[_OTHER_ADDRESSES] = self._locked_out.get(_OTHER_ADDRESSES, 0) + 1
            return
        self._locked_out[ip] = 0
        reason = "too many failed attempts: locked out (further ones are counted, not recorded)"
        await self.audit_within(
            "failure-audit",
            "all",
            AuditEntry(
                kind="auth.failed",
                subject=_key_id_of(credential),
                data={"reason": reason, **_attempt(request, ip, credential)},
            ),
        )

    def _locked_out_entries(self) -> list[AuditEntry]:
        """The counted attempts of the locked-out addresses: one record each for the 100 with
        the most, one for the rest together; the count starts again (an address still locked
        out is recorded anew at its next attempt)."""
        counted, self._locked_out = self._locked_out, {}
        self._locked_out_since = time.monotonic()
        ranked = sorted(((n, ip) for ip, n in counted.items() if n), reverse=True)
        reason = "failed attempts while locked out, since the last record"
        entries = [
            AuditEntry(
                kind="auth.failed",
                data={"reason": reason, "ip": ip, "locked_out_attempts": n},
            )
            for n, ip in ranked[:_LOCKED_OUT_RECORDED]
        ]
        if rest := ranked[_LOCKED_OUT_RECORDED:]:
            data = {
                "reason": reason,
                "ip": f"{len(rest)} other addresses",
                "locked_out_attempts": sum(n for n, _ in rest),
            }
            entries.append(AuditEntry(kind="auth.failed", data=data))
        return entries

    async def _record_locked_out(self) -> None:
        """At shutdown: what the lock-outs counted since the last minute's records."""
        entries = self._locked_out_entries()
        if not entries:
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.store.submit_audit(entries)), 5.0)
        except (StoreError, TimeoutError) as exc:
            _log.warning("locked-out attempts not recorded", count=len(entries), error=str(exc))

    async def audit_within(self, budget: str, identity: str, entry: AuditEntry) -> None:
        """Audit ``entry`` if the budget allows; else count it. The next record let through
        says how many of its kind went unrecorded meanwhile (``"unrecorded"``)."""
        key = (entry.kind, identity)  # counted for whoever was left out, not the next one
        if not (await self.limits.hit(budget, identity)).allowed:
            self._unaudited[key] = self._unaudited.get(key, 0) + 1
            return
        missed = self._unaudited.pop(key, 0)
        if missed:
            entry = replace(entry, data={**entry.data, "unrecorded": missed})
        self.audit(entry)

    def audit(self, entry: AuditEntry) -> None:
        """Queue an audit record without waiting for its commit."""
        self.audit_many([entry])

    def audit_many(self, entries: list[AuditEntry]) -> None:
        """Queue audit records (one write) without waiting for their commit."""
        try:
            future = self.store.submit_audit(entries)
        except StoreError as exc:
            _log.warning("audit records not queued", kind=entries[0].kind, error=str(exc))
            return
        future.add_done_callback(_report_audit_failure)

    async def close(self) -> None:
        await self._record_locked_out()
        storage = self.limits.storage
        closer = getattr(storage, "close", None)
        if closer is not None:
            result = closer()
            if hasattr(result, "__await__"):
                await result


def _report_refresh(future: asyncio.Future[KeyAnswer]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("key re-verification failed", error=str(future.exception()))


def _report_audit_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        _log.warning("audit record not written", error=str(exc))


def presented_credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return header  # a credential in an unknown scheme still counts as presented (invalid)
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def client_ip(request: Request) -> str:
    client = request.scope.get("client")  # as request.client, without building an Address
    return str(client[0]) if client else "unknown"


def _attempt(request: Request, ip: str, credential: str | None) -> dict[str, Any]:
    """What an ``auth.failed`` record says of the attempt (never what was presented)."""
    return {
        "route": getattr(request.state, "route_template", None),
        "method": request.method,
        "ip": ip,
        "credential": credential_kind(credential),
    }


def credential_kind(credential: str | None) -> str | None:
    if credential is None:
        return None
    if credential.startswith("cpb_"):
        return "key"
    return "token" if credential.count(".") == 2 else "other"


def _key_id_of(credential: str | None) -> str | None:
    """The public key id of a well-formed key (never any part of the secret)."""
    from copbridge.security.keys import parse_key

    parsed = parse_key(credential) if credential else None
    return parsed.key_id if parsed else None


_UNPROVEN = "unknown key or wrong secret"


def _reason_label(reason: str) -> str:
    if reason == "missing credential":
        return "missing"
    if reason.endswith("key"):
        return "key"
    return "token" if "token" in reason or "JWT" in reason or "algorithm" in reason else "other"


# -- wiring ----------------------------------------------------------------------------------------


async def authorize(request: Request) -> None:
    """The app-level dependency: every route passes here before its own code runs."""
    guard: Guard = request.app.state.guard
    await guard.check(request)


def _principal(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized("missing credential", presented=False)
    return principal


def _guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


PrincipalDep = Annotated[Principal, Depends(_principal)]
GuardDep = Annotated[Guard, Depends(_guard)]
AUTHORIZE = Depends(authorize)


def check_routes(app: FastAPI, settings: Settings) -> None:
    """Refuse to start when a route has no declared scope or bypasses the auth dependency."""
    missing = undeclared_routes(app, scope_table(settings))
    for served in served_routes(app):
        if isinstance(served.route, APIRoute) and not any(
            getattr(d, "dependency", None) is authorize for d in served.dependencies
        ):
            missing.append(f"{served.method} {served.path} (without the app-level auth dependency)")
    if missing:
        raise RuntimeError(
            "routes without a declared scope (add them to copbridge/api/scopes.py): "
            + ", ".join(missing)
        )


def open_guard(app: FastAPI, settings: Settings, store: SqlStore) -> Guard:
    """Check the route table, then build the guard and honour ``COPBRIDGE_BOOTSTRAP_KEY``."""
    check_routes(app, settings)
    guard = Guard(settings, store)
    guard.index = route_index(app, scope_table(settings))
    if settings.bootstrap_key is not None:
        from copbridge.security.bootstrap import ensure_bootstrap_key

        ensure_bootstrap_key(store, guard.keyring.pepper, settings.bootstrap_key.get_secret_value())
    app.state.guard = guard
    _log.info(
        "security ready",
        kid=guard.signing.current().kid,
        limits=settings.rate_limit_storage.split(":", 1)[0],
    )
    return guard
