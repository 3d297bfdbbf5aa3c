"""One suite, every adapter: the SQLite file and the real PostgreSQL server behave the same."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from copbridge.security.tokens import family_mark
from copbridge.store import (
    ApiKeyRecord,
    AuditEntry,
    DetectionQuery,
    ImageBlob,
    RefreshTokenRecord,
    SqlStore,
    StoreUnavailable,
    open_store,
)
from copbridge.store.migrations import latest_version
from copbridge.store.sqlite import SqliteStore
from copbridge.store.tx import Tx
from tests.store.factories import SECOND_US, detection, now_us

DESTS = ("tcp://127.0.0.1:8087", "file:///tmp/x.cot")


def test_upgrade_is_idempotent_and_reports_latest_version(store: SqlStore) -> None:
    assert store.upgrade() == latest_version(store.dialect)
    assert store.upgrade() == latest_version(store.dialect)
    assert store.schema_version() == latest_version(store.dialect)
    store.ping()


def test_accepted_detection_reads_back_with_one_outbox_row_per_destination(
    store: SqlStore,
) -> None:
    [result] = store.accept_detections([detection("d1")], DESTS)
    assert result.outcome == "accepted"
    stored = store.get_detection("d1")
    assert stored is not None
    assert stored.detection == {"id": "d1", "body": "body"}
    stats = {s.destination: s for s in store.outbox_stats(DESTS)}
    assert [stats[d].pending for d in DESTS] == [1, 1]


def test_same_id_same_body_is_duplicate_other_body_is_conflict(store: SqlStore) -> None:
    store.accept_detections([detection("d1")], DESTS)
    [again] = store.accept_detections([detection("d1")], DESTS)
    [clash] = store.accept_detections([detection("d1", body="other")], DESTS)
    assert again.outcome == "duplicate"
    assert again.answer["id"] == "d1"
    assert clash.outcome == "conflict"
    assert sum(s.pending for s in store.outbox_stats(DESTS)) == 2


def test_fifty_concurrent_posts_of_one_id_store_it_once(store: SqlStore) -> None:
    barrier = threading.Barrier(50)

    def post(_: int) -> str:
        barrier.wait(timeout=10)
        [res] = store.accept_detections([detection("same")], DESTS)
        return res.outcome

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(post, range(50)))
    assert outcomes.count("accepted") == 1
    assert outcomes.count("duplicate") == 49
    assert [s.pending for s in store.outbox_stats(DESTS)] == [1, 1]


def test_concurrent_duplicates_across_two_store_instances(store_url: str) -> None:
    first, second = open_store(store_url), open_store(store_url)
    first.upgrade()
    try:
        with ThreadPoolExecutor(20) as pool:
            futures = [
                pool.submit((first if i % 2 else second).accept_detections, [detection("x")], DESTS)
                for i in range(20)
            ]
            outcomes = [f.result()[0].outcome for f in futures]
        assert outcomes.count("accepted") == 1
        assert first.verify_audit().ok
    finally:
        first.close()
        second.close()


def test_listing_filters_and_paginates_by_cursor(store: SqlStore) -> None:
    t0 = now_us()
    records = [
        detection(
            f"d{i}",
            sensor="a" if i % 2 else "b",
            label="car" if i < 3 else "person",
            time_us=t0 + i * SECOND_US,
        )
        for i in range(6)
    ]
    store.accept_detections(records, DESTS)
    page1 = store.list_detections(DetectionQuery(limit=4))
    page2 = store.list_detections(DetectionQuery(limit=4, after_seq=page1[-1].seq))
    assert [d.id for d in page1 + page2] == [f"d{i}" for i in range(6)]
    assert [d.id for d in store.list_detections(DetectionQuery(sensor_id="a"))] == [
        "d1",
        "d3",
        "d5",
    ]
    assert [d.id for d in store.list_detections(DetectionQuery(label="car"))] == ["d0", "d1", "d2"]
    window = DetectionQuery(since_us=t0 + 2 * SECOND_US, until_us=t0 + 4 * SECOND_US)
    assert [d.id for d in store.list_detections(window)] == ["d2", "d3"]


def test_claim_leases_rows_and_only_the_lease_holder_marks_them_sent(store: SqlStore) -> None:
    store.accept_detections([detection(f"d{i}") for i in range(3)], DESTS)
    now = now_us()
    claimed = store.claim(DESTS[0], "w1", 10, lease_us=5 * SECOND_US, now_us=now)
    assert [c.uid for c in claimed] == [f"copbridge.uav-7.d{i}" for i in range(3)]
    # While the lease holds, nobody else gets the rows.
    assert store.claim(DESTS[0], "w2", 10, lease_us=5 * SECOND_US, now_us=now + 1) == []
    # After it lapses, the claim query itself takes them back: no sweeper needed.
    later = now + 6 * SECOND_US
    reclaimed = store.claim(DESTS[0], "w2", 10, lease_us=5 * SECOND_US, now_us=later)
    assert len(reclaimed) == 3
    assert all(r.attempts == 2 for r in reclaimed)
    # The first worker lost its lease: fencing refuses its late "sent".
    assert store.mark_sent(claimed, later) == 0
    assert store.mark_sent(reclaimed, later) == 3
    stats = store.outbox_stats(DESTS)[0]
    assert (stats.pending, stats.sent) == (0, 3)


def test_stale_rows_expire_instead_of_being_sent(store: SqlStore) -> None:
    store.accept_detections([detection("old", stale_in_s=1)], DESTS)
    later = now_us() + 5 * SECOND_US
    assert store.claim(DESTS[0], "w", 10, SECOND_US, later) == []
    stats = store.outbox_stats(DESTS)[0]
    assert (stats.pending, stats.expired) == (0, 1)
    kinds = [r.kind for r in store.audit_records(limit=1000)]
    assert "delivery.expired" in kinds


def test_sweep_expires_stale_rows_of_every_destination_in_the_outbox(store: SqlStore) -> None:
    removed = "tcp://10.0.0.9:8087"  # no longer configured anywhere: nobody claims its rows
    store.accept_detections([detection("old", stale_in_s=1)], [*DESTS, removed])
    store.accept_detections([detection("fresh")], [*DESTS, removed])
    assert store.expire_stale(now_us() + 5 * SECOND_US) == 3
    stats = store.outbox_stats([*DESTS, removed])
    assert [(s.pending, s.expired) for s in stats] == [(1, 1)] * 3
    expired = [r for r in store.audit_records(limit=1000) if r.kind == "delivery.expired"]
    assert sorted((r.subject, r.data["count"]) for r in expired) == sorted(
        (d, 1) for d in [*DESTS, removed]
    )
    assert store.verify_audit().ok


def test_backlog_for_one_uid_sends_only_the_newest(store: SqlStore) -> None:
    t0 = now_us()
    store.accept_detections(
        [detection(f"d{i}", uid="copbridge.uav-7.17", time_us=t0 + i) for i in range(5)], DESTS
    )
    claimed = store.claim(DESTS[0], "w", 10, SECOND_US, now_us())
    assert [c.time_us for c in claimed] == [t0 + 4]
    assert store.outbox_stats(DESTS)[0].superseded == 4


def test_coalescing_reaches_past_a_batch_full_of_older_versions(store: SqlStore) -> None:
    t0 = now_us()
    store.accept_detections(
        [detection(f"d{i}", uid="copbridge.uav-7.9", time_us=t0 + i) for i in range(7)]
        + [detection("other")],
        DESTS[:1],
    )
    claimed = store.claim(DESTS[0], "w", 2, SECOND_US, now_us())
    assert [c.uid for c in claimed] == ["copbridge.uav-7.9", "copbridge.uav-7.other"]
    assert claimed[0].time_us == t0 + 6
    assert store.outbox_stats(DESTS[:1])[0].superseded == 6


TRACK = "copbridge.uav-7.track-1"


def _store_position(store: SqlStore, name: str, time_us: int) -> None:
    store.accept_detections([detection(name, uid=TRACK, time_us=time_us)], DESTS[:1])


def test_a_newer_position_waits_while_an_older_one_of_its_uid_is_in_flight(
    store: SqlStore,
) -> None:
    # Replica A holds the older position; had B sent the newer one meanwhile, A's late write
    # would leave the older position last on the receiver's map.
    t0, now = now_us(), now_us()
    _store_position(store, "older", t0)
    [older] = store.claim(DESTS[0], "A", 10, 5 * SECOND_US, now)
    _store_position(store, "newer", t0 + 1)
    store.accept_detections([detection("elsewhere")], DESTS[:1])
    meanwhile = store.claim(DESTS[0], "B", 10, 5 * SECOND_US, now + 1)
    assert [i.uid for i in meanwhile] == ["copbridge.uav-7.elsewhere"]  # other uids still flow
    assert store.mark_sent([older], now + 2) == 1
    [newer] = store.claim(DESTS[0], "B", 10, 5 * SECOND_US, now + 3)
    assert (newer.uid, newer.time_us) == (TRACK, t0 + 1)


def test_a_newer_position_goes_once_the_older_ones_claim_is_released(store: SqlStore) -> None:
    t0, now = now_us(), now_us()
    _store_position(store, "older", t0)
    older = store.claim(DESTS[0], "A", 10, 5 * SECOND_US, now)
    _store_position(store, "newer", t0 + 1)
    assert store.claim(DESTS[0], "B", 10, 5 * SECOND_US, now + 1) == []
    assert store.release(older, "connection refused", now + 5 * SECOND_US, now + 2) == 1
    [newer] = store.claim(DESTS[0], "B", 10, 5 * SECOND_US, now + 3)
    assert newer.time_us == t0 + 1


def test_a_lapsed_lease_frees_the_uid_and_the_newest_position_goes(store: SqlStore) -> None:
    t0, now = now_us(), now_us()
    _store_position(store, "older", t0)
    older = store.claim(DESTS[0], "A", 10, 5 * SECOND_US, now)
    _store_position(store, "newer", t0 + 1)
    assert store.claim(DESTS[0], "B", 10, 5 * SECOND_US, now + 4 * SECOND_US) == []
    later = now + 6 * SECOND_US
    [newer] = store.claim(DESTS[0], "B", 10, 5 * SECOND_US, later)
    assert newer.time_us == t0 + 1
    assert store.mark_sent(older, later) == 0  # A's lease ran out: its late "sent" is refused
    stats = store.outbox_stats(DESTS[:1])[0]
    assert (stats.pending, stats.superseded) == (1, 1)


def test_a_row_going_stale_in_flight_keeps_its_uid_until_its_holder_answers(
    store: SqlStore,
) -> None:
    t0 = now_us()
    store.accept_detections([detection("older", uid=TRACK, time_us=t0, stale_in_s=1)], DESTS[:1])
    [older] = store.claim(DESTS[0], "A", 10, 5 * SECOND_US, t0)
    _store_position(store, "newer", t0 + 1)
    stale = t0 + 2 * SECOND_US  # past the older row's stale time, inside A's lease
    assert store.expire_stale(stale) == 0
    assert store.claim(DESTS[0], "B", 10, 5 * SECOND_US, stale) == []
    assert store.mark_sent([older], stale) == 1  # A's write is counted as what it was: sent
    [newer] = store.claim(DESTS[0], "B", 10, 5 * SECOND_US, stale)
    assert newer.time_us == t0 + 1
    # Past the lease, a stale row nobody answered for expires as before.
    store.accept_detections([detection("lost", uid="u.lost", time_us=t0, stale_in_s=3)], DESTS[:1])
    assert len(store.claim(DESTS[0], "C", 10, SECOND_US, stale)) == 1  # leased to t0 + 3 s
    assert store.expire_stale(t0 + 5 * SECOND_US) == 1


def test_release_hides_rows_until_their_next_attempt(store: SqlStore) -> None:
    store.accept_detections([detection("d1")], DESTS)
    now = now_us()
    claimed = store.claim(DESTS[0], "w", 10, SECOND_US, now)
    assert store.release(claimed, "connection refused", now + 2 * SECOND_US, now) == 1
    assert store.claim(DESTS[0], "w", 10, SECOND_US, now + SECOND_US) == []
    again = store.claim(DESTS[0], "w", 10, SECOND_US, now + 3 * SECOND_US)
    assert len(again) == 1


def test_two_workers_draining_one_backlog_never_share_a_row(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    a.upgrade()
    try:
        a.accept_detections([detection(f"d{i}") for i in range(300)], DESTS[:1])
        sent: dict[str, list[int]] = {"a": [], "b": []}

        def drain(name: str, st: SqlStore) -> None:
            while True:
                items = st.claim(DESTS[0], name, 7, 30 * SECOND_US, now_us())
                if not items:
                    return
                assert st.mark_sent(items, now_us()) == len(items)
                sent[name].extend(i.id for i in items)

        threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not set(sent["a"]) & set(sent["b"])
        assert len(sent["a"]) + len(sent["b"]) == 300
    finally:
        a.close()
        b.close()


def test_feed_snapshot_holds_newest_non_stale_event_per_uid(store: SqlStore) -> None:
    t0 = now_us()
    store.accept_detections(
        [
            detection("a1", uid="u.a", time_us=t0),
            detection("a2", uid="u.a", time_us=t0 + 10),
            detection("b1", uid="u.b", time_us=t0, stale_in_s=0.001),
        ],
        DESTS,
    )
    snapshot = store.feed_snapshot(t0 + SECOND_US)
    assert [(e.uid, e.time_us) for e in snapshot] == [("u.a", t0 + 10)]
    assert [e.uid for e in store.feed_since(0, t0)] == ["u.a", "u.a", "u.b"]
    everything = store.feed_since(0, 0)
    picked = [everything[2].seq, everything[0].seq, 10**12]  # any order, unknown ones skipped
    assert store.feed_events(picked) == [everything[0], everything[2]]  # stale ones too


def test_purge_removes_done_rows_after_retention(store: SqlStore) -> None:
    store.accept_detections([detection("d1", stale_in_s=1)], DESTS[:1])
    items = store.claim(DESTS[0], "w", 10, SECOND_US, now_us())
    store.mark_sent(items, now_us())
    assert (
        store.purge(done_before_us=now_us() + 10 * SECOND_US, now_us=now_us() + 10 * SECOND_US) == 2
    )
    # The rows are gone, the totals are not: a purge must not make "sent" go down.
    assert store.outbox_stats(DESTS[:1])[0].sent == 1


def test_sent_and_expired_totals_never_go_down_across_purges(store: SqlStore) -> None:
    t0 = now_us()
    store.accept_detections(
        [detection("s1", uid="u.s1"), detection("s2", uid="u.s2")]
        + [detection(f"x{i}", uid=f"u.x{i}", stale_in_s=0.001) for i in range(3)],
        DESTS,
    )
    expired_at = t0 + SECOND_US
    assert store.expire_stale(expired_at) == 6
    store.mark_sent(store.claim(DESTS[0], "w", 10, SECOND_US, expired_at), expired_at)
    before = {s.destination: (s.sent, s.expired, s.pending) for s in store.outbox_stats(DESTS)}
    assert before == {DESTS[0]: (2, 3, 0), DESTS[1]: (0, 3, 2)}
    later = expired_at + 10 * SECOND_US
    assert store.purge(done_before_us=later, now_us=later) > 0
    store.mark_sent(store.claim(DESTS[1], "w", 10, SECOND_US, later), later)
    after = {s.destination: (s.sent, s.expired, s.pending) for s in store.outbox_stats(DESTS)}
    assert after == {DESTS[0]: (2, 3, 0), DESTS[1]: (2, 3, 0)}
    assert store.purge(done_before_us=later + 10 * SECOND_US, now_us=later + 10 * SECOND_US) > 0
    assert [(s.sent, s.expired) for s in store.outbox_stats(DESTS)] == [(2, 3), (2, 3)]


def test_audit_chain_verifies_after_mixed_work(store: SqlStore) -> None:
    store.accept_detections([detection(f"d{i}") for i in range(5)], DESTS)
    store.append_audit([AuditEntry(kind="detection.rejected", data={"reason": "bad bbox"})])
    items = store.claim(DESTS[0], "w", 10, SECOND_US, now_us())
    store.mark_sent(items, now_us())
    report = store.verify_audit()
    assert report.ok, report
    assert report.records == len(store.audit_records(limit=10_000))
    kinds = {r.kind for r in store.audit_records(limit=1000)}
    assert {"detection.accepted", "event.queued", "detection.rejected", "delivery.sent"} <= kinds


def test_database_refuses_update_and_delete_of_audit(store: SqlStore) -> None:
    store.append_audit([AuditEntry(kind="x")])
    for sql in ("UPDATE audit SET kind = 'y'", "DELETE FROM audit"):

        def tamper(tx: Tx, sql: str = sql) -> None:
            tx.execute(sql)

        with pytest.raises(Exception, match="append-only"):
            store._write_now(tamper)
    assert store.verify_audit().ok


def test_platform_slot_is_granted_once_per_interval(store: SqlStore) -> None:
    t = now_us()
    assert store.claim_platform_slot("uav-7", t, 5 * SECOND_US)
    assert not store.claim_platform_slot("uav-7", t + SECOND_US, 5 * SECOND_US)
    assert store.claim_platform_slot("uav-7", t + 6 * SECOND_US, 5 * SECOND_US)


def test_a_platform_slot_is_never_granted_to_a_pose_older_than_the_last_shown(
    store: SqlStore,
) -> None:
    """A late detection (an offline detector's buffer) sent the sensor back on the map."""
    t = now_us()
    interval = 5 * SECOND_US
    assert store.claim_platform_slot("uav-7", t, interval, pose_us=t)
    later = t + 6 * SECOND_US
    assert not store.claim_platform_slot("uav-7", later, interval, pose_us=t - 600 * SECOND_US)
    assert not store.claim_platform_slot("uav-7", later, interval, pose_us=t)  # the same pose
    assert store.claim_platform_slot("uav-7", later, interval, pose_us=t + 1)
    assert store.claim_platform_slot("uav-9", later, interval, pose_us=t - 600 * SECOND_US)


def test_the_first_mark_of_a_name_stays(store: SqlStore) -> None:
    assert store.first_mark("key_pepper", "aa") == "aa"
    assert store.first_mark("key_pepper", "bb") == "aa"
    assert store.first_mark("other", "bb") == "bb"


def test_keys_create_list_revoke(store: SqlStore) -> None:
    key = ApiKeyRecord("k1", "ops", "hash", ("detections:write",), now_us(), None, None, None)
    store.create_key(key, actor="test")
    assert store.get_key("k1") == key
    assert store.count_keys() == 1
    assert store.revoke_key("k1", now_us(), actor="test")
    assert not store.revoke_key("k1", now_us(), actor="test")
    revoked = store.get_key("k1")
    assert revoked is not None
    assert revoked.revoked_us is not None


def test_images_written_with_their_detections_are_each_served_once_stored(
    store: SqlStore,
) -> None:
    images = [ImageBlob(f"{i:064x}", "image/png", bytes([i]) * (10 + i)) for i in range(1, 6)]
    with_images = [*images, images[0]]  # two detections naming the same image in one commit
    store.keep_image_files(with_images)
    records = [
        dataclasses.replace(detection(f"im{n}"), image_sha256=i.sha256, image=i)
        for n, i in enumerate(with_images)
    ]
    assert {r.outcome for r in store.accept_detections(records, DESTS)} == {"accepted"}
    later = [  # and again later, by other detections: no conflict
        dataclasses.replace(detection(f"again{n}"), image_sha256=i.sha256, image=i)
        for n, i in enumerate(images[:2])
    ]
    store.keep_image_files(images[:2])
    assert {r.outcome for r in store.accept_detections(later, DESTS)} == {"accepted"}
    for image in images:
        assert store.get_image(image.sha256) == ("image/png", image.data)
    assert store.get_image("f" * 64) is None
    store.keep_image_files([])
    # The bytes live in files beside SQLite and in the rows of PostgreSQL, never both ways.
    in_rows = store._read(lambda tx: tx.one("SELECT count(data) FROM images"))
    assert in_rows == ((0,) if store.keeps_image_files else (len(images),))
    if isinstance(store, SqliteStore):
        assert all(store._image_path(i.sha256).is_file() for i in images)


def test_an_image_rides_with_its_detection_and_only_an_accepted_one_is_kept(
    store: SqlStore,
) -> None:
    """The single-detection path writes the image row in the detection's own commit: kept when
    the detection is accepted, not when the id turns out to be taken by another body."""
    first = ImageBlob("a" * 64, "image/jpeg", b"first frame")
    other = ImageBlob("b" * 64, "image/jpeg", b"other frame")
    store.keep_image_files([first, other])
    accepted = dataclasses.replace(detection("img-1"), image_sha256=first.sha256, image=first)
    clash = dataclasses.replace(
        detection("img-1", body="another"), image_sha256=other.sha256, image=other
    )
    [result] = store.accept_detections([accepted], DESTS)
    assert result.outcome == "accepted"
    [refused] = store.accept_detections([clash], DESTS)
    assert refused.outcome == "conflict"
    assert store.get_image(first.sha256) == ("image/jpeg", b"first frame")
    assert store.get_image(other.sha256) is None
    stored = store.get_detection("img-1")
    assert stored is not None
    assert stored.image_sha256 == first.sha256


def test_reused_refresh_token_revokes_its_family(store: SqlStore) -> None:
    t = now_us()
    for jti in ("r1", "r2"):
        store.add_refresh_token(
            RefreshTokenRecord(jti, "fam", "k1", t, t + 60 * SECOND_US, None, None)
        )
    assert store.use_refresh_token("r1", t)[0] == "ok"
    assert store.use_refresh_token("r1", t)[0] == "reused"
    assert store.use_refresh_token("r2", t)[0] == "revoked"
    assert store.use_refresh_token("nope", t)[0] == "unknown"
    store.revoke_token("access-1", t + SECOND_US, actor="k1")
    assert store.is_token_revoked("access-1")
    assert not store.is_token_revoked("access-2")
    # The burned family is recorded too, so its access tokens end with it.
    assert store.is_token_revoked(family_mark("fam"))
    assert not store.is_token_revoked("family:access-1")  # an access token has no family row


def test_revoking_a_refresh_token_records_its_family(store: SqlStore) -> None:
    t = now_us()
    store.add_refresh_token(RefreshTokenRecord("r9", "fam9", "k1", t, t + SECOND_US, None, None))
    assert not store.is_token_revoked(family_mark("fam9"))
    store.revoke_token("r9", t + SECOND_US, actor="k1")
    assert store.is_token_revoked(family_mark("fam9"))
    store.revoke_token("r9", t + SECOND_US, actor="k1")  # twice: no conflict
    assert store.use_refresh_token("r9", t)[0] == "revoked"


def test_closing_while_other_threads_read_neither_crashes_nor_hangs(store_url: str) -> None:
    # Regression: close() used to close reader connections under running queries and SQLite
    # crashed the process (seen when the delivery monitor read outbox figures at shutdown).
    closing = open_store(store_url)
    closing.upgrade()
    closing.accept_detections([detection(f"d{i}") for i in range(50)], DESTS)
    stop = threading.Event()
    outcomes: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                closing.outbox_stats(DESTS)
            except StoreUnavailable:
                outcomes.append("closed")
                return

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    closing.close()
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(StoreUnavailable, match="closed"):
        closing.outbox_stats(DESTS)


def test_purge_works_in_chunks_and_removes_everything_due(store: SqlStore) -> None:
    store.accept_detections([detection(f"p{i}", stale_in_s=1) for i in range(23)], DESTS[:1])
    items = store.claim(DESTS[0], "w", 100, SECOND_US, now_us())
    assert store.mark_sent(items, now_us()) == 23
    later = now_us() + 10 * SECOND_US
    # 23 outbox rows and 23 events, deleted five at a time.
    assert store.purge(done_before_us=later, now_us=later, chunk=5) == 46
    assert store.purge(done_before_us=later, now_us=later, chunk=5) == 0
    assert store.outbox_stats(DESTS[:1])[0].sent == 23  # counted, though the rows are gone
    assert store.feed_since(0, 0) == []
