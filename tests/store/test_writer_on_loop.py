"""The group-commit writer handed to an event loop (as ``serve`` does with SQLite) keeps every
promise of the thread mode: nothing queued is lost over the hand-over, calls from other threads
still work, a blocking write on the loop is refused instead of hanging, and detach gives the
connection back to a thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from copbridge.store import StoreUnavailable, open_store
from tests.store.factories import detection

DESTS = ("tcp://127.0.0.1:9",)


def test_writes_from_the_loop_and_from_threads_all_commit(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'loop.db'}")
    store.upgrade()
    # Queued on the thread just before the hand-over: must still be written.
    early = store.submit_detections([detection("early")], DESTS)

    async def scenario() -> list[str]:
        await store.attach_loop()
        on_loop = asyncio.gather(
            *(
                asyncio.wrap_future(store.submit_detections([detection(f"loop{i}")], DESTS))
                for i in range(20)
            )
        )
        from_threads = asyncio.gather(
            *(
                asyncio.to_thread(store.accept_detections, [detection(f"thread{i}")], DESTS)
                for i in range(20)
            )
        )
        results = [*await on_loop, *await from_threads]
        outcomes: list[str] = [r[0].outcome for r in results]
        await store.detach_loop()
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes == ["accepted"] * 40
        assert early.result(5)[0].outcome == "accepted"
        # Back on the thread after detach: plain blocking calls work again.
        assert store.accept_detections([detection("after")], DESTS)[0].outcome == "accepted"
        ids = {"early", "after"} | {f"loop{i}" for i in range(20)}
        ids |= {f"thread{i}" for i in range(20)}
        assert all(store.get_detection(i) is not None for i in ids)
        assert store.verify_audit().ok
    finally:
        store.close()


def test_a_write_from_a_thread_during_the_hand_over_waits_for_the_thread_to_let_go(
    tmp_path: Path,
) -> None:
    """serve attaches the writer while delivery already writes from threads: a job arriving
    while the thread finishes its last batch ran on the loop at once, on the connection inside
    the thread's transaction ("cannot start a transaction within a transaction"), and the
    refusal closed the connection under the thread, failing its batch too."""
    store = open_store(f"sqlite:///{tmp_path / 'handover.db'}")
    store.upgrade()
    writer = store._writer
    in_batch = threading.Event()

    def last_batch(conn: object) -> str:
        in_batch.set()
        time.sleep(0.3)  # the thread's batch before the hand-over, still running
        return "done"

    before = writer.submit(last_batch)
    assert in_batch.wait(5)
    outcomes: list[str] = []

    def meanwhile() -> None:
        time.sleep(0.05)  # attach() has taken the loop; the thread is in its batch
        outcomes.append(store.accept_detections([detection("during")], DESTS)[0].outcome)

    async def scenario() -> None:
        thread = threading.Thread(target=meanwhile)
        thread.start()
        await store.attach_loop()
        await asyncio.to_thread(thread.join)
        await store.detach_loop()

    try:
        asyncio.run(scenario())
        assert before.result(5) == "done"
        assert outcomes == ["accepted"]
        assert store.write_failure(60) is None
    finally:
        store.close()


def test_a_blocking_write_on_the_loop_is_refused_not_a_deadlock(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'loop.db'}")
    store.upgrade()

    async def scenario() -> None:
        await store.attach_loop()
        try:
            with pytest.raises(RuntimeError, match="event loop"):
                store.append_audit([])
        finally:
            await store.detach_loop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_closing_while_attached_refuses_what_waits(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'loop.db'}")
    store.upgrade()
    done = threading.Event()

    async def scenario() -> None:
        await store.attach_loop()
        store.close()  # e.g. a shutdown path that never detached
        late = store.submit_detections([detection("late")], DESTS)
        with pytest.raises(Exception, match="shutting down"):
            late.result(5)
        done.set()

    asyncio.run(scenario())
    assert done.is_set()


def test_another_writer_holding_the_file_does_not_stall_the_loop(tmp_path: Path) -> None:
    """Another process's write transaction (``copbridge worker``, the ``keys`` commands, an
    operator's sqlite3 shell) holds the file's write lock for a second. The batch waits for it
    without holding the event loop (before, BEGIN IMMEDIATE waited on the loop, up to the 5 s
    busy timeout, and every request of the service waited with it), then commits."""
    path = tmp_path / "loop.db"
    store = open_store(f"sqlite:///{path}")
    store.upgrade()
    other = sqlite3.connect(path, isolation_level=None)
    lags: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    async def scenario() -> tuple[str, float]:
        await store.attach_loop()
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(1.0, other.execute, "COMMIT")
        started = time.perf_counter()
        [answer] = await asyncio.wrap_future(store.submit_detections([detection("held")], DESTS))
        waited = time.perf_counter() - started
        stop.set()
        await ticking
        await store.detach_loop()
        return answer.outcome, waited

    try:
        outcome, waited = asyncio.run(scenario())
        assert outcome == "accepted"
        assert waited >= 0.9  # it did wait for the other writer
        assert max(lags) < 0.5, f"the event loop stalled for {max(lags):.2f} s"
        assert store.get_detection("held") is not None
    finally:
        other.close()
        store.close()


def test_a_write_lock_held_past_the_busy_timeout_refuses_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "loop.db"
    store = open_store(f"sqlite:///{path}")
    store.upgrade()
    other = sqlite3.connect(path, isolation_level=None)

    async def scenario() -> None:
        await store.attach_loop()
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await asyncio.wrap_future(store.submit_detections([detection("late")], DESTS))
        finally:
            other.execute("ROLLBACK")
        [answer] = await asyncio.wrap_future(store.submit_detections([detection("then")], DESTS))
        assert answer.outcome == "accepted"
        await store.detach_loop()

    try:
        asyncio.run(scenario())
    finally:
        other.close()
        store.close()
