"""``/api/v1/audit``: the audit trail page by page, and verification of its hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from copbridge.api.deps import StoreDep
from copbridge.api.errors import problem
from copbridge.logs import get_logger
from copbridge.store.audit_chain import UnreadableRecord

_log = get_logger("copbridge.audit")

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=None)
async def list_audit(
    store: StoreDep,
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    # 1-18 digits: every such number fits the stores' 64-bit integers (a longer one was a 500).
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any] | JSONResponse:
    """Audit records in sequence order, optionally of one kind; pass ``next_cursor`` back for
    the next page (null: this was the last one), or ``tail_cursor`` later for what was
    recorded since."""
    after = 0 if cursor is None else int(cursor)
    try:
        records = await run_in_threadpool(store.audit_records, after, limit, kind)
    except UnreadableRecord as exc:  # edited behind our back: say which, not a bare 500
        _log.error("audit record unreadable", error=str(exc))
        return problem(500, f"{exc}; GET /api/v1/audit/verify names the first broken link")
    last = str(records[-1].seq) if records else str(after)
    return {
        "items": [
            {
                "seq": r.seq,
                "at_us": r.at_us,
                "kind": r.kind,
                "actor": r.actor,
                "subject": r.subject,
                "data": r.data,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in records
        ],
        "next_cursor": last if len(records) == limit else None,
        "tail_cursor": last,
    }


@router.get("/verify")
async def verify_audit(store: StoreDep) -> dict[str, Any]:
    """Walk the hash chain: ``ok``, the record count, the first broken link if any, and the
    newest record (``head``) to keep elsewhere and check later with ``copbridge audit verify
    --head``."""
    report = await run_in_threadpool(store.verify_audit)
    return {
        "ok": report.ok,
        "records": report.records,
        "first_broken_seq": report.first_broken_seq,
        "reason": report.reason,
        "head": None
        if report.head_seq is None
        else {"seq": report.head_seq, "hash": report.head_hash},
    }
