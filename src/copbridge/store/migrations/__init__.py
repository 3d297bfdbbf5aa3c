"""Versioned schema migrations: ``NNNN_name.sql`` files per dialect, applied in order, once."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources

from copbridge.store.errors import MigrationError
from copbridge.store.tx import Tx


def _scripts(dialect: str) -> list[tuple[int, str, str]]:
    folder = resources.files(__package__).joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(found)


def latest_version(dialect: str) -> int:
    scripts = _scripts(dialect)
    return scripts[-1][0] if scripts else 0


def split_statements(script: str) -> list[str]:
    """Split a SQLite script into statements, keeping trigger bodies whole."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {buffer[:80]}")
    return statements


def current_version(tx: Tx) -> int:
    try:
        row = tx.one("SELECT MAX(version) FROM schema_migrations")
    except Exception:
        return 0
    return 0 if row is None or row[0] is None else int(row[0])


def apply_migrations(tx: Tx) -> int:
    """Bring the schema up to date inside the caller's write transaction."""
    dialect = tx.dialect.name
    if dialect == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(7461001)")  # one migrator across replicas
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_us BIGINT NOT NULL)"
    )
    row = tx.one("SELECT MAX(version) FROM schema_migrations")
    have = 0 if row is None or row[0] is None else int(row[0])
    scripts = _scripts(dialect)
    newest = scripts[-1][0] if scripts else 0
    if have > newest:
        raise MigrationError(
            f"the database is at schema version {have}, newer than this copbridge ({newest})"
        )
    for version, name, script in scripts:
        if version <= have:
            continue
        if dialect == "sqlite":
            for statement in split_statements(script):
                tx.execute(statement)
        else:
            tx.conn.execute(script)
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
            (version, name, time.time_ns() // 1000),
        )
        have = version
    return have
