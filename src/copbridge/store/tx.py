"""A thin, dialect-aware view of a database connection: one SQL text for both adapters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Connection(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def cursor(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    begin_write: str
    skip_locked: str
    audit_lock: str | None
    #: Taken by a claim before it reads leases, with the destination as its one parameter;
    #: answers whether it was granted (None: writers are serialised anyway, as in SQLite).
    claim_lock: str | None

    def sql(self, text: str) -> str:
        # Our SQL uses "?" placeholders and never a literal question mark.
        return text if self.name == "sqlite" else text.replace("?", "%s")


class Tx:
    """Statements on one connection; rows come back as plain tuples."""

    __slots__ = ("conn", "dialect")

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.dialect.sql(sql), tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.execute(sql, params).fetchall()]

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.cursor().executemany(self.dialect.sql(sql), [tuple(r) for r in rows])


def placeholders(count: int) -> str:
    return ",".join("?" * count)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``: statements stay below every parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
