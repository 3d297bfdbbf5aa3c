"""``/api/v1/keys``: list, create (the key text is shown once) and revoke API keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from copbridge.api.auth import GuardDep, PrincipalDep
from copbridge.api.errors import problem, unprocessable
from copbridge.model import FreeText
from copbridge.security.keys import KEY_ID_PATTERN, SCOPES, mint_key, new_key_record, now_us
from copbridge.store import ApiKeyRecord

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])
_KEY_ID = re.compile(KEY_ID_PATTERN)


class NewKey(BaseModel):
    model_config = {"extra": "forbid"}
    name: FreeText = Field(min_length=1, max_length=128)  # no NUL: PostgreSQL text refuses it
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES))
    expires_in_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)


def key_view(record: ApiKeyRecord) -> dict[str, Any]:
    """A key as shown to admins: never its hash, never its secret."""
    return {
        "key_id": record.key_id,
        "name": record.name,
        "scopes": list(record.scopes),
        "created": _iso(record.created_us),
        "expires": _iso(record.expires_us),
        "last_used": _iso(record.last_used_us),
        "revoked": _iso(record.revoked_us),
    }


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


@router.get("")
async def list_keys(guard: GuardDep) -> dict[str, Any]:
    """Every key with its scopes, expiry, last use and revocation."""
    records = await run_in_threadpool(guard.store.list_keys)
    return {"items": [key_view(r) for r in records]}


@router.post("", status_code=201, responses={422: {"description": "unknown scope"}})
async def create_key(body: NewKey, guard: GuardDep, principal: PrincipalDep) -> Response:
    """Create a key; the answer's ``key`` is the only time its text is ever shown."""
    unknown = sorted(set(body.scopes) - set(SCOPES))
    if unknown:
        message = f"scopes: unknown {', '.join(unknown)} (known: {', '.join(SCOPES)})"
        return unprocessable([{"field": "scopes", "message": message}])
    beyond = sorted(set(body.scopes) - principal.scopes)
    if beyond:  # keys:admin hands out what its holder holds, never more
        return problem(
            403, f"cannot grant scopes this credential does not hold: {', '.join(beyond)}"
        )
    key, text = mint_key()
    at = now_us()
    expires = None if body.expires_in_s is None else at + body.expires_in_s * 1_000_000
    record = new_key_record(key, guard.keyring.pepper, body.name, body.scopes, at, expires)
    await run_in_threadpool(guard.store.create_key, record, principal.subject)
    return JSONResponse({"key": text, **key_view(record)}, status_code=201)


@router.delete(
    "/{key_id}",
    status_code=204,
    responses={404: {"description": "unknown key"}, 403: {"description": "a stronger key"}},
)
async def revoke_key(key_id: str, guard: GuardDep, principal: PrincipalDep) -> Response:
    """Revoke a key: this replica at once, every other within the key cache TTL (≤ 5 s). Only
    a key whose scopes the caller holds too: a lesser admin cannot lock out a greater one."""
    existing = (
        await run_in_threadpool(guard.store.get_key, key_id) if _KEY_ID.fullmatch(key_id) else None
    )
    if existing is None:  # an id no key can have (a NUL) is not even looked up
        return problem(404, "no key with that id")
    beyond = sorted(set(existing.scopes) - principal.scopes)
    if beyond:
        return problem(
            403, f"key {key_id} holds scopes this credential does not: {', '.join(beyond)}"
        )
    await run_in_threadpool(guard.store.revoke_key, key_id, now_us(), principal.subject)
    guard.keyring.forget(key_id)  # revoked now, or already
    return Response(status_code=204)
