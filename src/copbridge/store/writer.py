"""Group commit: one writer thread owns the write connection and commits queued jobs together.

Each job runs inside its own savepoint of a shared transaction, so one failing job never takes
its neighbours down, and every caller is answered only after the COMMIT that holds its work.
Written by hand because the batching must wrap our own savepoint discipline and fencing rules.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from copbridge.store.errors import StoreUnavailable

T = TypeVar("T")
C = TypeVar("C")


class Cursorish(Protocol):
    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


@dataclass(slots=True)
class _Job(Generic[C]):
    run: Callable[[C], Any]
    future: Future[Any]


class BatchObserver(Protocol):
    def __call__(self, size: int, seconds: float, ok: bool) -> None: ...


class GroupWriter(Generic[C]):
    """Serialises every write of this process through one connection, many jobs per commit."""

    def __init__(
        self,
        *,
        connect: Callable[[], C],
        begin: Callable[[C], None],
        commit: Callable[[C], None],
        rollback: Callable[[C], None],
        savepoint: Callable[[C, str], None],
        is_store_error: Callable[[BaseException], bool],
        close: Callable[[C], None],
        idle: Callable[[C], None] | None = None,
        idle_every_s: float = 30.0,
        max_delay_s: float = 0.002,
        max_items: int = 512,
        observe: BatchObserver | None = None,
        name: str = "copbridge-writer",
    ) -> None:
        self._connect = connect
        self._begin = begin
        self._commit = commit
        self._rollback = rollback
        self._savepoint = savepoint
        self._is_store_error = is_store_error
        self._close_conn = close
        self._idle = idle
        self._idle_every_s = idle_every_s
        self._max_delay_s = max_delay_s
        self._max_items = max_items
        self._observe = observe
        self._queue: queue.SimpleQueue[_Job[C] | None] = queue.SimpleQueue()
        self._conn: C | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[C], T]) -> Future[T]:
        """Queue ``run(conn)``; the future resolves after the commit that includes it."""
        future: Future[T] = Future()
        if self._closed:
            future.set_exception(StoreUnavailable("the store is shutting down"))
            return future
        self._queue.put(_Job(run, future))
        return future

    def run(self, run: Callable[[C], T], timeout: float | None = 30.0) -> T:
        return self.submit(run).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------------

    def _loop(self) -> None:
        last_idle = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=max(0.05, self._idle_every_s / 4))
            except queue.Empty:
                first = None
                if self._closed:
                    break
            else:
                if first is None:
                    break
                batch = self._gather(first)
                stop = batch[-1] is None
                self._run_batch([job for job in batch if job is not None])
                if stop:
                    break
            if self._idle is not None and time.monotonic() - last_idle >= self._idle_every_s:
                last_idle = time.monotonic()
                self._run_idle()
        self._drain_rejected()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._close_conn(self._conn)
            self._conn = None

    def _gather(self, first: _Job[C]) -> list[_Job[C] | None]:
        batch: list[_Job[C] | None] = [first]
        deadline = time.monotonic() + self._max_delay_s
        while len(batch) < self._max_items:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            if item is None:
                break
        return batch

    def _connection(self) -> C:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._close_conn(self._conn)
        self._conn = None

    def _run_batch(self, jobs: list[_Job[C]]) -> None:
        started = time.perf_counter()
        results: list[tuple[_Job[C], bool, Any]] = []
        try:
            conn = self._connection()
            self._begin(conn)
        except Exception as exc:
            self._drop_connection()
            self._fail_all(jobs, exc)
            self._observe_batch(len(jobs), started, ok=False)
            return
        try:
            for index, job in enumerate(jobs):
                name = f"j{index}"
                self._savepoint(conn, f"SAVEPOINT {name}")
                try:
                    value = job.run(conn)
                except Exception as exc:
                    self._savepoint(conn, f"ROLLBACK TO SAVEPOINT {name}")
                    self._savepoint(conn, f"RELEASE SAVEPOINT {name}")
                    results.append((job, False, self._as_store_error(exc)))
                else:
                    self._savepoint(conn, f"RELEASE SAVEPOINT {name}")
                    results.append((job, True, value))
            self._commit(conn)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._rollback(conn)
            self._drop_connection()
            self._fail_all(jobs, exc)
            self._observe_batch(len(jobs), started, ok=False)
            return
        for job, ok, value in results:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        self._observe_batch(len(jobs), started, ok=True)

    def _observe_batch(self, size: int, started: float, *, ok: bool) -> None:
        if self._observe is not None:
            self._observe(size, time.perf_counter() - started, ok)

    def _as_store_error(self, exc: BaseException) -> BaseException:
        if self._is_store_error(exc):
            return StoreUnavailable(f"the store refused the write: {_first_line(exc)}")
        return exc

    def _fail_all(self, jobs: list[_Job[C]], exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, StoreUnavailable)
            else StoreUnavailable(f"the store cannot take writes: {_first_line(exc)}")
        )
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _run_idle(self) -> None:
        assert self._idle is not None
        try:
            self._idle(self._connection())
        except Exception:
            self._drop_connection()

    def _drain_rejected(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and not job.future.done():
                job.future.set_exception(StoreUnavailable("the store is shutting down"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
