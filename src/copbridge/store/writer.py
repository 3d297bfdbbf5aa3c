"""Group commit: one writer thread owns the write connection and commits queued jobs together.

Each job runs inside its own savepoint of a shared transaction, so one failing job never takes
its neighbours down, and every caller is answered only after the COMMIT that holds its work.
Written by hand because the batching must wrap our own savepoint discipline and fencing rules.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from copbridge.store.errors import CommitInDoubt, StoreUnavailable

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_MAX_DELAY_S = 0.002
"""How long a write waits for others to share its commit. A trade measured on 12-02 with runs
alternating 0.5 and 2 ms (prepare helpers on): 0.5 ms answers sooner (at 500/s p50 2.6 against
6.6 ms, p99 9 against 16 ms; 32 in flight 2,100-2,300 against 1,750-1,850/s), but detections
reach a TAK client later (p50 10-16 against 9-10 ms), the delivery's claims and marks sharing
more, smaller commits. Arrival is what a map shows, so 2 ms stays."""

_POLL_S = 1.0
"""How often the idle writer thread looks whether the store was closed."""


class Cursorish(Protocol):
    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


@dataclass(slots=True)
class _Job(Generic[C]):
    run: Callable[[C], Any]
    future: Future[Any]


_HANDOVER: Any = _Job(lambda _: None, Future())  # queued by attach(): the thread stops there


class BatchObserver(Protocol):
    def __call__(self, size: int, seconds: float, ok: bool) -> None: ...


class GroupWriter(Generic[C]):
    """Serialises every write of this process through one connection, many jobs per commit."""

    def __init__(
        self,
        *,
        connect: Callable[[], C],
        begin: Callable[[C], None],
        commit: Callable[[C], object],
        rollback: Callable[[C], None],
        savepoint: Callable[[C, str], None],
        is_store_error: Callable[[BaseException], bool],
        close: Callable[[C], None],
        is_stale: Callable[[C], bool] = lambda _: False,
        commit_in_doubt: Callable[[BaseException], bool] = lambda _: False,
        begin_nowait: Callable[[C], None] | None = None,
        is_busy: Callable[[BaseException], bool] = lambda _: False,
        busy_wait_s: float = 5.0,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
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
        self._is_stale = is_stale
        self._commit_in_doubt = commit_in_doubt
        self._begin_nowait = begin_nowait
        self._is_busy = is_busy
        self._busy_wait_s = busy_wait_s
        self._max_delay_s = max_delay_s
        self._max_items = max_items
        self._observe = observe
        self.last_failure: tuple[float, str] | None = None
        """When (``time.monotonic()``) and why the store last refused a write: a whole batch
        failed, or one job's statement did (a full database fails inserts one by one)."""
        self._queue: queue.SimpleQueue[_Job[C] | None] = queue.SimpleQueue()
        self._conn: C | None = None
        self._closed = False
        self._name = name
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pending: collections.deque[_Job[C]] = collections.deque()
        self._draining = False
        self._handing_over = False  # the thread still holds the connection: jobs only wait
        self._conn_lock = asyncio.Lock()
        self._committer = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-commit")
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[C], T]) -> Future[T]:
        """Queue ``run(conn)``; the future resolves after the commit that includes it."""
        future: Future[T] = Future()
        if self._closed:
            future.set_exception(StoreUnavailable("the store is shutting down"))
            return future
        job = _Job(run, future)
        loop = self._event_loop
        if loop is None:
            self._queue.put(job)
        elif threading.get_ident() == self._loop_thread:
            self._enqueue_on_loop(job)
        else:
            loop.call_soon_threadsafe(self._enqueue_on_loop, job)
        return future

    def run(self, run: Callable[[C], T], timeout: float | None = 30.0) -> T:
        return self.wait(self.submit(run), timeout)

    def wait(self, future: Future[T], timeout: float | None = 60.0) -> T:
        """Block until a submitted job is committed; refused on the loop that would run it."""
        if self._event_loop is not None and threading.get_ident() == self._loop_thread:
            raise RuntimeError("a blocking store write on the event loop would never finish")
        return future.result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._event_loop is not None:
            # Still on the loop: nothing will drain what waits; refuse it rather than hang.
            self._event_loop = None
            self._fail_all(list(self._pending), StoreUnavailable("the store is shutting down"))
            self._pending.clear()
            # A COMMIT may be running in the committer thread: let it end before the
            # connection under it is closed.
            self._committer.shutdown(wait=True)
            self._drop_connection()
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._committer.shutdown(wait=False)

    # -- running on an event loop ------------------------------------------------------------
    #
    # Why: this thread gives up the GIL around every database call and must win it back from a
    # busy event loop each time; measured here, a 6-detection commit took 2 ms beside an idle
    # loop and 77 ms beside a busy one. On the loop itself the statements run without that
    # contest, and only the COMMIT (the fsync) goes to a thread, so the loop keeps serving.

    async def attach(self) -> None:
        """Run jobs on the calling event loop from now on (until :meth:`detach`)."""
        if self._event_loop is not None or self._closed:
            return
        self._event_loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # The thread finishes what was queued before, then leaves the connection to the loop;
        # what arrives meanwhile waits on the loop (a drain now would BEGIN on the connection
        # inside the thread's transaction, and its refusal close it under the thread).
        self._handing_over = True
        self._queue.put(_HANDOVER)
        try:
            await asyncio.to_thread(self._thread.join)
        finally:
            self._handing_over = False
        if self._pending and not self._draining:
            self._start_drain()

    async def detach(self) -> None:
        """Finish what is queued on the loop and go back to the writer thread."""
        if self._event_loop is None:
            return
        while self._draining or self._pending:
            if not self._draining:
                self._start_drain()
            await asyncio.sleep(0.005)
        self._event_loop = None
        self._loop_thread = None
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def _enqueue_on_loop(self, job: _Job[C]) -> None:
        if self._event_loop is None:  # detached or closed meanwhile
            if self._closed:
                job.future.set_exception(StoreUnavailable("the store is shutting down"))
            else:
                self._queue.put(job)
            return
        self._pending.append(job)
        if not self._draining and not self._handing_over:
            self._start_drain()

    def _start_drain(self) -> None:
        self._draining = True
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self._max_delay_s and len(self._pending) < self._max_items:
                    await asyncio.sleep(self._max_delay_s)  # let concurrent requests join
                jobs = [
                    self._pending.popleft() for _ in range(min(self._max_items, len(self._pending)))
                ]
                async with self._conn_lock:
                    started = time.perf_counter()
                    began = await self._begin_on_loop(jobs, started)
                    if began is None:
                        continue
                    executed = self._run_jobs(began, jobs, started)
                    if executed is None:
                        continue
                    conn, results = executed
                    try:
                        await loop.run_in_executor(self._committer, self._commit, conn)
                    except Exception as exc:
                        self._abandon(conn, jobs, self._commit_failure(exc), started)
                        continue
                self._settle(results, len(jobs), started)
        finally:
            self._draining = False

    # -- the writer thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                first = None
                if self._closed:
                    break
            else:
                if first is _HANDOVER:
                    return  # the event loop takes over the connection (see attach)
                if first is None:
                    break
                batch = self._gather(first)
                stop = batch[-1] is None
                handover = batch[-1] is _HANDOVER
                self._run_batch([job for job in batch if job is not None and job is not _HANDOVER])
                if handover:
                    return
                if stop:
                    break
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
            if item is None or item is _HANDOVER:
                break
        return batch

    def _connection(self) -> C:
        if self._conn is not None and self._is_stale(self._conn):
            self._drop_connection()
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
        executed = self._execute(jobs, started)
        if executed is None:
            return
        conn, results = executed
        try:
            self._commit(conn)
        except Exception as exc:
            self._abandon(conn, jobs, self._commit_failure(exc), started)
            return
        self._settle(results, len(jobs), started)

    def _commit_failure(self, exc: Exception) -> Exception:
        """What the callers of a failed COMMIT are told: not stored, or (the connection lost
        while it was under way) perhaps stored."""
        if self._commit_in_doubt(exc):
            return CommitInDoubt(
                f"the connection was lost during the commit, which may have been kept: "
                f"{_first_line(exc)}"
            )
        return exc

    def _execute(
        self, jobs: list[_Job[C]], started: float
    ) -> tuple[C, list[tuple[_Job[C], bool, Any]]] | None:
        """BEGIN and every job in its savepoint; None (futures failed) if that goes wrong."""
        for attempt in (1, 2):
            reused, tried = self._conn is not None, time.monotonic()
            try:
                conn = self._connection()
                self._begin(conn)
            except Exception as exc:
                if attempt == 1 and reused and ended_at_once(self._conn, tried):
                    self._drop_connection()  # ended by the server while idle: try a new one
                    continue
                self._refuse_batch(jobs, exc, started)
                return None
            return self._run_jobs(conn, jobs, started)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _begin_on_loop(self, jobs: list[_Job[C]], started: float) -> C | None:
        """BEGIN on the event loop. While another process holds the write lock, BEGIN is tried
        without waiting and again every few ms, up to the busy timeout: waiting inside it (as a
        thread may) would hold the loop, and every request of the process, for that long."""
        deadline = time.monotonic() + self._busy_wait_s
        pause = 0.001
        reconnected = False
        while True:
            reused, tried = self._conn is not None, time.monotonic()
            try:
                conn = self._connection()
                (self._begin_nowait or self._begin)(conn)
            except Exception as exc:
                if reused and not reconnected and ended_at_once(self._conn, tried):
                    reconnected = True  # the server ended it while idle: nothing was done yet
                    self._drop_connection()
                    continue
                if not (self._is_busy(exc) and time.monotonic() < deadline):
                    self._refuse_batch(jobs, exc, started)
                    return None
            else:
                return conn
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.02)

    def _refuse_batch(self, jobs: list[_Job[C]], exc: BaseException, started: float) -> None:
        self._drop_connection()
        self._note_failure(exc)
        self._fail_all(jobs, exc)
        self._observe_batch(len(jobs), started, ok=False)

    def _run_jobs(
        self, conn: C, jobs: list[_Job[C]], started: float
    ) -> tuple[C, list[tuple[_Job[C], bool, Any]]] | None:
        """Every job in its savepoint of the transaction begun on ``conn``."""
        results: list[tuple[_Job[C], bool, Any]] = []
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
        except Exception as exc:
            self._abandon(conn, jobs, exc, started)
            return None
        return conn, results

    def _abandon(self, conn: C, jobs: list[_Job[C]], exc: BaseException, started: float) -> None:
        with contextlib.suppress(Exception):
            self._rollback(conn)
        self._drop_connection()
        self._note_failure(exc)
        self._fail_all(jobs, exc)
        self._observe_batch(len(jobs), started, ok=False)

    def _settle(self, results: list[tuple[_Job[C], bool, Any]], size: int, started: float) -> None:
        refused = False
        for job, ok, value in results:
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
                refused = refused or isinstance(value, StoreUnavailable)
        # A write the store refused inside the transaction (a full disk, a read-only file) is a
        # store error too, though the commit of the others went through: it went uncounted.
        self._observe_batch(size, started, ok=not refused)

    def _observe_batch(self, size: int, started: float, *, ok: bool) -> None:
        if self._observe is not None:
            self._observe(size, time.perf_counter() - started, ok)

    def _as_store_error(self, exc: BaseException) -> BaseException:
        if self._is_store_error(exc):
            refused = StoreUnavailable(f"the store refused the write: {_first_line(exc)}")
            self._note_failure(refused)
            return refused
        return exc

    def _note_failure(self, exc: BaseException) -> None:
        self.last_failure = (time.monotonic(), _first_line(exc))

    def _fail_all(self, jobs: list[_Job[C]], exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, StoreUnavailable)
            else StoreUnavailable(f"the store cannot take writes: {_first_line(exc)}")
        )
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _drain_rejected(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and not job.future.done():
                job.future.set_exception(StoreUnavailable("the store is shutting down"))


ENDED_AT_ONCE_S = 1.0
"""A statement on a connection the server had ended fails within this; a slower failure (a
silent path cut by the stall watch) is not tried again on a new connection, which would hold
the callers for a connect timeout more instead of answering 503 at the silence limit."""


def ended_at_once(conn: object, tried: float) -> bool:
    """``conn`` was ended by the server (PostgreSQL restarted) and the statement tried at
    ``tried`` (monotonic) failed at once, as it does then: worth one try on a new connection."""
    return bool(getattr(conn, "broken", False)) and time.monotonic() - tried < ENDED_AT_ONCE_S


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
