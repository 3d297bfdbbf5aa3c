"""Replicas sharing one PostgreSQL never send a track's positions out of order to a destination:
a uid has at most one claim in flight per destination, and claims of one destination never
miss each other's fresh lease under READ COMMITTED."""

from __future__ import annotations

import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from copbridge.store import OutboxItem, RefreshTokenRecord, SqlStore
from copbridge.store.sql import _claim
from copbridge.store.tx import Tx
from tests.store.factories import SECOND_US, detection, now_us

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

DEST = "tcp://127.0.0.1:8087"
TRACK = "copbridge.uav-7.track-1"


def test_a_claim_waits_for_another_replicas_claim_in_progress_to_commit(
    replicas: list[SqlStore],
) -> None:
    """A's claim has leased the older position but not committed when the newer one commits and
    B claims: B must see A's lease, not an unleased row it skips (SKIP LOCKED)."""
    a, b, ingest = replicas
    t0 = now_us()
    ingest.accept_detections([detection("older", uid=TRACK, time_us=t0)], [DEST])
    leased, commit = threading.Event(), threading.Event()

    def claim_and_hold(tx: Tx) -> list[OutboxItem] | None:
        items = _claim(tx, DEST, "A", 10, 30 * SECOND_US, now_us())
        leased.set()
        commit.wait(10)
        return items

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(a._write_now, claim_and_hold)
        assert leased.wait(10)
        ingest.accept_detections([detection("newer", uid=TRACK, time_us=t0 + 1)], [DEST])
        threading.Timer(0.3, commit.set).start()
        meanwhile = b.claim(DEST, "B", 10, 30 * SECOND_US, now_us())
        older = held.result(10)
    assert older is not None
    assert [i.time_us for i in older] == [t0]
    assert meanwhile == []
    assert a.mark_sent(older, now_us()) == 1
    [newer] = b.claim(DEST, "B", 10, 30 * SECOND_US, now_us())
    assert newer.time_us == t0 + 1


def test_three_replicas_send_each_tracks_positions_in_time_order(
    replicas: list[SqlStore],
) -> None:
    """Frames of three tracks arrive 10 ms apart at alternating replicas while three couriers
    claim, write (a random pause of up to 30 ms, a slow socket) and mark sent."""
    tracks = [f"copbridge.uav-7.track-{n}" for n in range(3)]
    frames = 150
    written: list[tuple[str, int]] = []
    written_lock = threading.Lock()
    ingest_done = threading.Event()
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for n in range(frames):
                t = now_us()
                replicas[n % 3].accept_detections(
                    [detection(f"f{n}-{k}", uid=uid, time_us=t) for k, uid in enumerate(tracks)],
                    [DEST],
                )
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
        finally:
            ingest_done.set()

    def courier(name: str, replica: SqlStore, seed: int) -> None:
        pause = random.Random(seed)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                drained = ingest_done.is_set()
                items = replica.claim(DEST, name, 4, 30 * SECOND_US, now_us())
                if not items:
                    if drained:
                        return
                    time.sleep(0.002)
                    continue
                time.sleep(pause.uniform(0, 0.03))
                with written_lock:
                    written.extend((i.uid, i.time_us) for i in items)
                replica.mark_sent(items, now_us())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest)] + [
        threading.Thread(target=courier, args=(f"replica-{n}", replica, n))
        for n, replica in enumerate(replicas)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    inversions = []
    for uid in tracks:
        times = [t for u, t in written if u == uid]
        assert times, f"nothing of {uid} was sent"
        inversions += [(uid, a, b) for a, b in itertools.pairwise(times) if b <= a]
    assert inversions == []
    [stats] = replicas[0].outbox_stats([DEST])
    assert stats.pending == 0
    assert stats.sent == len(written)


def test_a_row_is_outdated_once_a_newer_row_of_its_uid_is_pending_or_sent(
    replicas: list[SqlStore],
) -> None:
    """What a courier may send again from memory after a drop: not a position another replica
    has replaced since (on PostgreSQL, three connections to one database)."""
    a, b, ingest = replicas
    t0 = now_us()
    ingest.accept_detections([detection("first", uid=TRACK, time_us=t0)], [DEST])
    [first] = a.claim(DEST, "A", 10, 30 * SECOND_US, now_us())
    assert a.mark_sent([first], now_us()) == 1
    assert a.outdated([first]) == set()
    ingest.accept_detections([detection("second", uid=TRACK, time_us=t0 + 1)], [DEST])
    assert a.outdated([first]) == {first.id}  # pending: it is on its way
    [second] = b.claim(DEST, "B", 10, 30 * SECOND_US, now_us())
    assert b.mark_sent([second], now_us()) == 1
    assert a.outdated([first, second]) == {first.id}


def test_a_refresh_token_used_on_two_replicas_at_once_is_a_reuse_on_one(
    replicas: list[SqlStore],
) -> None:
    """Both replicas read the row unused; only one may rotate it, the other sees the reuse
    (and burns the family), never two successes from one refresh token."""
    a, b, _ = replicas
    t = now_us()
    outcomes: list[tuple[str, str]] = []
    with ThreadPoolExecutor(2) as pool:
        for n in range(40):
            jti = f"race-{n}"
            a.add_refresh_token(
                RefreshTokenRecord(jti, f"fam-{n}", "k1", t, t + 60 * SECOND_US, None, None)
            )
            start = threading.Barrier(2)

            def use(store: SqlStore, jti: str = jti, start: threading.Barrier = start) -> str:
                start.wait(5)
                return store.use_refresh_token(jti, now_us())[0]

            first, second = pool.submit(use, a), pool.submit(use, b)
            outcomes.append((first.result(10), second.result(10)))
    assert all(sorted(pair) == ["ok", "reused"] for pair in outcomes), outcomes
