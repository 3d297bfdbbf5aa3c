"""Real CoT detection events queued in the store the way the pipeline queues them."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from copbridge.cot import DetectionEvent, StalePolicy, build_detection_event, parse_xml, to_xml
from copbridge.store import DetectionRecord, QueuedEvent, Store

_ids = itertools.count(1)


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def detection_event(
    track: str,
    *,
    at: datetime | None = None,
    stale_s: float = 300.0,
    lat: float = 41.1383,
    sensor: str = "uav-7",
    label: str = "person",
    callsign: str | None = None,
    image_url: str | None = None,
    n: int | None = None,
) -> DetectionEvent:
    """The CoT event of one detection of ``track`` (detection ``d<n>``), made as the pipeline
    makes it."""
    now = at or datetime.now(UTC)
    return build_detection_event(
        now=now,
        detection_id=f"d{next(_ids) if n is None else n}",
        detection_time=now - timedelta(milliseconds=100),
        sensor_id=sensor,
        label=label,
        confidence=0.9,
        lat=lat,
        lon=-104.7855,
        hae=1839.6,
        ce90=23.5,
        le90=16.4,
        sensor_callsign=callsign,
        track_id=track,
        stale_policy=StalePolicy(default_seconds=stale_s),
        image_url=image_url,
        image_mime=None if image_url is None else "image/jpeg",
    )


def detection_record(
    track: str,
    *,
    at: datetime | None = None,
    stale_s: float = 300.0,
    lat: float = 41.1383,
    sensor: str = "uav-7",
) -> DetectionRecord:
    """One accepted detection of ``track`` whose CoT event is valid XML that taky can parse."""
    n = next(_ids)
    now = at or datetime.now(UTC)
    event = detection_event(track, at=now, stale_s=stale_s, lat=lat, sensor=sensor, n=n)
    payload = to_xml(event)
    queued = QueuedEvent(
        uid=event.uid,
        cot_type=event.type,
        kind="detection",
        time_us=_us(event.time),
        stale_us=_us(event.stale),
        payload=payload,
    )
    return DetectionRecord(
        id=f"det-{n}-{track}",
        body_hash=hashlib.sha256(payload).hexdigest(),
        time_us=queued.time_us,
        received_us=_us(now),
        sensor_id=sensor,
        label="person",
        detection_json=f'{{"n":{n}}}',
        answer={"uid": event.uid},
        cot_xml=payload,
        events=(queued,),
    )


def queue(store: Store, destinations: Sequence[str], records: Sequence[DetectionRecord]) -> None:
    results = store.accept_detections(records, destinations)
    assert all(r.outcome == "accepted" for r in results), results


def uid_of(record: DetectionRecord) -> str:
    return record.events[0].uid


def has_uid(uid: str, at: datetime | None = None) -> Callable[[bytes], bool]:
    """Matches a received event of ``uid`` (and, if given, of that event time)."""
    needle = f'uid="{uid}"'.encode()
    return lambda got: needle in got and (at is None or parse_xml(got).time == at)
