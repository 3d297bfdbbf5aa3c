"""``/api/v1/auth``: trade an API key for tokens, rotate refresh tokens, revoke; and the JWKS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from copbridge.api.auth import Guard, GuardDep
from copbridge.security.keys import is_usable, now_us
from copbridge.security.tokens import TokenClaims, TokenRejected, TokenUse, family_mark
from copbridge.store import AuditEntry

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
jwks_router = APIRouter(tags=["auth"])

_MAX_CREDENTIAL = 4096


class TokenRequest(BaseModel):
    model_config = {"extra": "forbid"}
    api_key: str = Field(max_length=_MAX_CREDENTIAL)


class RefreshRequest(BaseModel):
    model_config = {"extra": "forbid"}
    refresh_token: str = Field(max_length=_MAX_CREDENTIAL)


class RevokeRequest(BaseModel):
    model_config = {"extra": "forbid"}
    token: str = Field(max_length=_MAX_CREDENTIAL)


class TokenAnswer(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"description": "invalid credential"},
    429: {"description": "too many attempts"},
}


@router.post("/token", response_model=TokenAnswer, responses=_REFUSED)
async def issue_token(body: TokenRequest, request: Request, guard: GuardDep) -> dict[str, Any]:
    """Exchange an API key for an access token (the key's scopes) and a refresh token."""
    record, reason = await run_in_threadpool(guard.keyring.verify, body.api_key)
    if record is None or reason != "ok":
        await guard.refuse(request, reason, body.api_key)
    pair = guard.tokens.issue(record.key_id, record.scopes)
    await run_in_threadpool(guard.store.add_refresh_token, pair.refresh)
    guard.audit(
        AuditEntry(
            kind="token.issued",
            subject=record.key_id,
            actor=record.key_id,
            data={"family": pair.refresh.family},
        )
    )
    return pair.answer()


@router.post("/refresh", response_model=TokenAnswer, responses=_REFUSED)
async def refresh_token(body: RefreshRequest, request: Request, guard: GuardDep) -> dict[str, Any]:
    """Rotate a refresh token; presenting an already-rotated one revokes its whole family."""
    try:
        claims = guard.tokens.check(body.refresh_token, "refresh")
    except TokenRejected as exc:
        await guard.refuse(request, str(exc), body.refresh_token)
    status, stored = await run_in_threadpool(guard.store.use_refresh_token, claims.jti, now_us())
    if status == "reused":
        if stored is not None:
            guard.remember_revoked(family_mark(stored.family))  # here at once, elsewhere ≤ TTL
        await guard.refuse(
            request, "refresh token reused: its family is revoked", body.refresh_token
        )
    if status != "ok" or stored is None:
        await guard.refuse(request, f"refresh token {status}", body.refresh_token)
    record = await run_in_threadpool(guard.keyring.record, claims.subject, True)
    if record is None or not is_usable(record, now_us()):
        await guard.refuse(request, "the token's key is revoked or expired", body.refresh_token)
    pair = guard.tokens.issue(record.key_id, record.scopes, family=stored.family)
    await run_in_threadpool(guard.store.add_refresh_token, pair.refresh)
    guard.audit(
        AuditEntry(
            kind="token.refreshed",
            subject=record.key_id,
            actor=record.key_id,
            data={"family": stored.family},
        )
    )
    return pair.answer()


@router.post("/revoke", responses={429: {"description": "too many attempts"}})
async def revoke_token(body: RevokeRequest, guard: GuardDep) -> dict[str, bool]:
    """Revoke an access or refresh token (a refresh token takes its family with it)."""
    claims = _claims(guard, body.token)
    if claims is None:
        return {"revoked": False}  # RFC 7009: an invalid token is not an error
    await run_in_threadpool(
        guard.store.revoke_token, claims.jti, claims.expires_s * 1_000_000, claims.subject
    )
    guard.remember_revoked(claims.jti)
    if claims.use == "refresh" and claims.family is not None:
        guard.remember_revoked(family_mark(claims.family))
    return {"revoked": True}


def _claims(guard: Guard, token: str) -> TokenClaims | None:
    uses: tuple[TokenUse, ...] = ("access", "refresh")
    for use in uses:
        try:
            claims = guard.tokens.check(token, use)
        except TokenRejected:
            continue
        return claims
    return None


@jwks_router.get("/.well-known/jwks.json")
async def jwks(guard: GuardDep) -> dict[str, Any]:
    """The public keys that verify copbridge's tokens."""
    return guard.signing.jwks()
