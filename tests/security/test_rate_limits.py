"""Bursts beyond a limit get 429 with an exact ``Retry-After``; other clients are unaffected;
failed credentials are limited per IP before they can fill the audit trail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.store import open_store
from tests.conftest import ADMIN_HEADERS
from tests.security import helpers as h


def test_burst_over_the_credential_limit_is_429_with_a_correct_retry_after(tmp_path: Path) -> None:
    app = create_app(h.secured_settings(tmp_path, rate_limit_credential="5/2second"))
    with TestClient(app) as client:
        noisy = h.bearer(h.make_key(app, "detections:read"))
        quiet = h.bearer(h.make_key(app, "detections:read"))
        answers = [client.get("/api/v1/detections", headers=noisy) for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
        refused = answers[-1]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2
        assert refused.headers["ratelimit-limit"] == "5"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert answers[0].headers["ratelimit-remaining"] == "4"
        # Another client with its own key is not affected by the noisy one.
        assert client.get("/api/v1/detections", headers=quiet).status_code == 200
        # Retry-After is honest: once it has passed, the noisy client gets in again.
        time.sleep(retry_after)
        assert client.get("/api/v1/detections", headers=noisy).status_code == 200


def test_per_ip_limit_on_auth_routes_spares_other_addresses(tmp_path: Path) -> None:
    app = create_app(h.secured_settings(tmp_path, rate_limit_auth="3/minute"))
    with (
        TestClient(app, client=("203.0.113.7", 4000)) as attacker,
        TestClient(app, client=("198.51.100.2", 4000)) as operator,
    ):
        codes = [
            attacker.post("/api/v1/auth/revoke", json={"token": "x"}).status_code for _ in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
        assert operator.post("/api/v1/auth/revoke", json={"token": "x"}).status_code == 200


def test_guessing_keys_is_locked_out_and_audits_stay_bounded(tmp_path: Path) -> None:
    app = create_app(h.secured_settings(tmp_path, rate_limit_auth="10/minute"))
    with TestClient(app, client=("203.0.113.9", 4000)) as attacker:
        codes = [
            attacker.get("/api/v1/detections", headers=h.bearer(f"cpb_guess{i}")).status_code
            for i in range(40)
        ]
        assert codes[:10] == [401] * 10
        assert set(codes[10:]) == {429}
        with TestClient(app) as admin:
            failed = admin.get(
                "/api/v1/audit", params={"kind": "auth.failed"}, headers=ADMIN_HEADERS
            ).json()["items"]
            assert admin.get("/api/v1/detections", headers=ADMIN_HEADERS).status_code == 200
    # Ten refusals and the lock-out; the 29 attempts after it were counted, not recorded
    # (before, they left no trace at all: a guessing run looked like 10 attempts however long).
    assert len(failed) == 11
    assert "locked out" in failed[-1]["data"]["reason"]
    assert {f["data"]["ip"] for f in failed} == {"203.0.113.9"}
    assert all("guess" not in str(f) for f in failed)  # what was presented is not recorded
    store = open_store(f"sqlite:///{tmp_path / 'sec.db'}")
    try:
        records = [r for r in store.audit_records(limit=1000) if r.kind == "auth.failed"]
    finally:
        store.close()
    counted = records[-1].data  # written at shutdown
    assert (counted["ip"], counted["locked_out_attempts"]) == ("203.0.113.9", 29)


def test_each_limit_and_hardening_header_is_sent_once(tmp_path: Path) -> None:
    app = create_app(h.secured_settings(tmp_path, rate_limit_credential="1/minute"))
    with TestClient(app) as client:
        writer = h.bearer(h.make_key(app, "detections:write"))
        answers = [client.post("/api/v1/detections", json={}, headers=writer) for _ in range(2)]
    assert [a.status_code for a in answers] == [422, 429]
    for answer in answers:
        names = [name.lower() for name, _ in answer.headers.multi_items()]
        for field in ("ratelimit-limit", "ratelimit-reset", "cache-control", "x-frame-options"):
            assert names.count(field) == 1, (answer.status_code, field, names)
    assert answers[1].headers["retry-after"] == answers[1].headers["ratelimit-reset"]


def test_locked_out_attempts_are_written_every_minute_not_only_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts waited for the address's next record or the shutdown (lost to a SIGKILL),
    and the table of locked-out addresses never emptied: past 10,000 addresses, new ones were
    no longer recorded at all."""
    from copbridge.api import auth

    monkeypatch.setattr(auth, "_LOCKED_OUT_RECORD_EVERY_S", 0.3)  # a minute, made short
    app = create_app(h.secured_settings(tmp_path, rate_limit_auth="3/minute"))
    with TestClient(app, client=("203.0.113.7", 4000)) as attacker:
        guesses = [h.bearer(f"cpb_guess{i}") for i in range(11)]
        codes = [attacker.get("/api/v1/detections", headers=g).status_code for g in guesses[:10]]
        assert codes == [401] * 3 + [429] * 7
        time.sleep(0.4)
        assert attacker.get("/api/v1/detections", headers=guesses[10]).status_code == 429
        store = app.state.store
        store._writer.run(lambda conn: None)  # the records are queued: let them commit
        failed = [r.data for r in store.audit_records(limit=100) if r.kind == "auth.failed"]
    assert [f.get("locked_out_attempts") for f in failed if "locked_out_attempts" in f] == [6]
    lockouts = [f for f in failed if str(f["reason"]).startswith("too many failed attempts")]
    assert len(lockouts) == 2  # recorded anew after the minute's records


def test_a_minute_s_lock_out_counts_are_at_most_101_records(tmp_path: Path) -> None:
    """Many addresses (a distributed run): one record each for the 100 with the most attempts,
    one for the rest together, not a record per address."""
    app = create_app(h.secured_settings(tmp_path))
    with TestClient(app):
        guard = app.state.guard
        guard._locked_out = {f"198.51.100.{i}": i + 1 for i in range(150)}
        entries = guard._locked_out_entries()
    assert len(entries) == 101
    assert entries[0].data == {
        "reason": "failed attempts while locked out, since the last record",
        "ip": "198.51.100.149",
        "locked_out_attempts": 150,
    }
    assert entries[-1].data["ip"] == "50 other addresses"
    assert entries[-1].data["locked_out_attempts"] == sum(range(1, 51))
    assert guard._locked_out == {}
