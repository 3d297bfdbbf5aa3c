"""The stall watch on plain sockets: a wait past the limit is cut, a wait that ends in time is
not, and the watcher that stops when idle starts again for the next statement."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from copbridge.store import stalls
from copbridge.store.stalls import StallWatch

pytestmark = pytest.mark.timeout(30)


def _wait_for_reply(watch: StallWatch, sock: socket.socket, out: list[bytes]) -> threading.Thread:
    def wait() -> None:
        with watch.watching(sock):
            out.append(sock.recv(16))  # blocks until the peer speaks, or the watch cuts

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def test_a_wait_past_the_limit_is_cut_and_one_within_it_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stalls, "_IDLE_SWEEPS", 2)
    watch = StallWatch(limit_s=0.3)
    ours, peer = socket.socketpair()
    try:
        answered: list[bytes] = []
        waiter = _wait_for_reply(watch, ours, answered)
        time.sleep(0.05)
        peer.send(b"pong")
        waiter.join(5)
        assert answered == [b"pong"]
        assert watch.cuts == 0

        time.sleep(0.5)  # the watcher has stopped for want of work
        silent: list[bytes] = []
        waiter = _wait_for_reply(watch, ours, silent)
        waiter.join(5)
        assert not waiter.is_alive()
        assert silent == [b""]  # shut: the blocked read ends at once with end-of-stream
        assert watch.cuts == 1
    finally:
        watch.close()
        ours.close()
        peer.close()


def test_cut_all_frees_every_waiting_statement_at_once() -> None:
    watch = StallWatch(limit_s=3600)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        results: list[bytes] = []
        waiters = [_wait_for_reply(watch, ours, results) for ours, _ in pairs]
        time.sleep(0.1)
        watch.cut_all()
        for waiter in waiters:
            waiter.join(5)
        assert results == [b""] * 3
        assert watch.cuts == 3
    finally:
        watch.close()
        for ours, peer in pairs:
            ours.close()
            peer.close()
