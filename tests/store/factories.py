"""Small builders of store records for the conformance suite."""

from __future__ import annotations

import hashlib
import time

from copbridge import jsontext
from copbridge.store import DetectionRecord, QueuedEvent

SECOND_US = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def event(
    uid: str, *, time_us: int | None = None, stale_in_s: float = 300, kind: str = "detection"
) -> QueuedEvent:
    t = time_us if time_us is not None else now_us()
    payload = f'<event uid="{uid}" time="{t}"/>'.encode()
    return QueuedEvent(
        uid=uid,
        cot_type="a-u-G",
        kind="detection" if kind == "detection" else "platform",
        time_us=t,
        stale_us=t + int(stale_in_s * SECOND_US),
        payload=payload,
    )


def detection(
    detection_id: str,
    *,
    body: str = "body",
    uid: str | None = None,
    sensor: str = "uav-7",
    label: str = "person",
    time_us: int | None = None,
    stale_in_s: float = 300,
) -> DetectionRecord:
    t = time_us if time_us is not None else now_us()
    ev = event(uid or f"copbridge.{sensor}.{detection_id}", time_us=t, stale_in_s=stale_in_s)
    return DetectionRecord(
        id=detection_id,
        body_hash=hashlib.sha256(body.encode()).hexdigest(),
        time_us=t,
        received_us=now_us(),
        sensor_id=sensor,
        label=label,
        detection_json=jsontext.dumps_text({"id": detection_id, "body": body}),
        answer={"id": detection_id, "uid": ev.uid, "status": "queued"},
        cot_xml=ev.payload,
        events=(ev,),
    )
