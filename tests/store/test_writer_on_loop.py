"""The group-commit writer handed to an event loop (as ``serve`` does with SQLite) keeps every
promise of the thread mode: nothing queued is lost over the hand-over, calls from other threads
still work, a blocking write on the loop is refused instead of hanging, and detach gives the
connection back to a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from copbridge.store import open_store
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
