"""PostgreSQL with two roles: the one that runs the migrations owns the tables, the one serve
runs as (``copbridge db upgrade --serving-role``) may insert audit records but never change,
delete or unprotect them. With a single owning role the trigger is only a speed bump: an owner
may disable it (``docs/reliability.md``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from copbridge.store import AuditEntry, open_store
from tests.conftest import PG_ADMIN_URL
from tests.store.factories import detection, now_us
from tests.system.processes import run_copbridge

pytestmark = pytest.mark.postgres

DEST = "tcp://127.0.0.1:9"


def _admin(statement: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(statement)


@pytest.fixture
def roles() -> Iterator[tuple[str, str]]:
    """(owner URL, serving URL) of a fresh database owned by a fresh non-superuser role."""
    tag = uuid.uuid4().hex[:8]
    owner, server, name = f"cb_owner_{tag}", f"cb_serve_{tag}", f"cb_roles_{tag}"
    _admin(f'CREATE ROLE "{owner}" LOGIN')
    _admin(f'CREATE ROLE "{server}" LOGIN')
    _admin(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].split("//", 1)[1].split("@", 1)[-1]
    try:
        yield f"postgresql://{owner}@{base}/{name}", f"postgresql://{server}@{base}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin(f'DROP ROLE IF EXISTS "{server}"')
        _admin(f'DROP ROLE IF EXISTS "{owner}"')


def test_the_serving_role_serves_but_cannot_touch_the_audit_trail(
    roles: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, serving_url = roles
    server = serving_url.split("//", 1)[1].split("@", 1)[0]
    upgraded = run_copbridge(
        ["db", "upgrade", "--serving-role", server],
        {"COPBRIDGE_DATABASE_URL": owner_url},
        tmp_path,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert "audit records are insert-only" in upgraded.stdout

    # everything serve does, as the serving role
    store = open_store(serving_url)
    try:
        store.ping()
        [accepted] = store.accept_detections([detection("r1")], [DEST])
        assert accepted.outcome == "accepted"
        claimed = store.claim(DEST, "me", 10, 5_000_000, now_us())
        assert len(claimed) == 1
        store.mark_sent(claimed, now_us())
        store.purge(now_us() + 1, now_us())
        store.append_audit([AuditEntry(kind="test.note", subject="r1", data={})])
        report = store.verify_audit()
        assert report.ok
        assert report.records >= 3
    finally:
        store.close()

    # and what it must not do
    refused = [
        "UPDATE audit SET kind = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
        "ALTER TABLE audit DISABLE TRIGGER audit_no_change",
        "DROP TRIGGER audit_no_change ON audit",
        "DROP TABLE audit",
        "UPDATE schema_migrations SET version = 0",
    ]
    with psycopg.connect(serving_url, autocommit=True, connect_timeout=5) as conn:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (report.records,)


def test_serving_role_is_refused_when_it_owns_the_tables_or_does_not_exist(
    roles: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, _ = roles
    owner = owner_url.split("//", 1)[1].split("@", 1)[0]
    env = {"COPBRIDGE_DATABASE_URL": owner_url}
    itself = run_copbridge(["db", "upgrade", "--serving-role", owner], env, tmp_path)
    assert itself.returncode == 1
    assert "owns the tables" in itself.stderr
    nobody = run_copbridge(["db", "upgrade", "--serving-role", "no_such_role_x"], env, tmp_path)
    assert nobody.returncode == 1
    assert "no PostgreSQL role" in nobody.stderr
    sqlite = run_copbridge(
        ["db", "upgrade", "--serving-role", owner],
        {"COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
        tmp_path,
    )
    assert sqlite.returncode == 2
    assert "PostgreSQL" in sqlite.stderr


def test_a_table_a_later_migration_creates_is_granted_to_the_serving_role(
    roles: tuple[str, str], tmp_path: Path
) -> None:
    """An upgrade run without --serving-role (0002 added outbox_purged after the grant
    existed) left serve refused on the new table: default privileges now cover it."""
    owner_url, serving_url = roles
    server = serving_url.split("//", 1)[1].split("@", 1)[0]
    upgraded = run_copbridge(
        ["db", "upgrade", "--serving-role", server], {"COPBRIDGE_DATABASE_URL": owner_url}, tmp_path
    )
    assert upgraded.returncode == 0, upgraded.stderr
    with psycopg.connect(owner_url, autocommit=True, connect_timeout=5) as owner:
        owner.execute("CREATE TABLE later_table (id BIGSERIAL PRIMARY KEY, note TEXT)")
    with psycopg.connect(serving_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("INSERT INTO later_table (note) VALUES ('x')")
        assert conn.execute("SELECT count(*) FROM later_table").fetchone() == (1,)


def test_pgoptions_from_the_environment_reach_the_server(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq's PGOPTIONS (a schema picked by search_path, say) was silently overridden by the
    options copbridge adds; a URL's own options still come first."""
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=77MB")
    plain = pg_url.split("?", 1)[0]  # without the test schema's options
    store = open_store(plain)
    try:
        assert store._read(lambda tx: tx.one("SHOW work_mem")) == ("77MB",)
    finally:
        store.close()


def test_db_upgrade_waiting_past_its_limit_for_another_migrator_says_so_in_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    """Another replica holds the migration lock: after the 30 s wait, one line (it was a bare
    concurrent.futures TimeoutError traceback)."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(7461001)")  # held until this block ends
        result = run_copbridge(["db", "upgrade"], {"COPBRIDGE_DATABASE_URL": pg_url}, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not usable" in result.stderr
