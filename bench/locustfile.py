"""Load profiles for a running copbridge: a drone feed, a batch uploader and operators.

    locust -f bench/locustfile.py --headless -u 12 -r 12 -t 60s --csv var/load \\
        --host http://127.0.0.1:9000          # COPBRIDGE_API_KEY=cpb_... in the environment

- ``DroneFeed``: each user is one sensor sending single detections at ``COPBRIDGE_LOAD_RATE``
  per second (default 5) over a handful of track ids, as a tracker on a drone would.
- ``BatchUploader``: bursts of 1,000-detection batches, each detection with an inline JPEG.
- ``Operator``: reads of detections, destinations, the audit trail and metrics.

Weights 8:1:2 give every profile at least one user from ``-u 11`` up; pick classes by name on
the command line to run one profile alone. A request counts as failed unless its answer is the
documented success (202 with every batch item accepted, 200 for reads).
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import json
import os
import random
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant_throughput, task

_EXAMPLE = Path(__file__).resolve().parents[1] / "tests" / "api" / "data" / "contract_example.json"
BATCH_SIZE = 1000
TRACKS_PER_SENSOR = 8
_sensors = itertools.count(1)


def _headers() -> dict[str, str]:
    key = os.environ.get("COPBRIDGE_API_KEY", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


@cache
def _example() -> dict[str, Any]:
    loaded = json.loads(_EXAMPLE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@cache
def _jpegs() -> tuple[str, ...]:
    """A few small distinct JPEG crops, base64: content-addressed storage keeps one of each."""
    from PIL import Image

    out = []
    for shade in range(16):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (shade * 16, 96, 255 - shade * 16)).save(buffer, "JPEG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return tuple(out)


def detection(sensor: str, track: str | None, *, image: str | None = None) -> dict[str, Any]:
    """The contract's example, taken now, from ``sensor`` on ``track``, jittered a little."""
    body: dict[str, Any] = copy.deepcopy(_example())
    body["id"] = f"{sensor}-{uuid.uuid4().hex[:16]}"
    body["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body["sensor"]["id"] = sensor
    body["track_id"] = track
    body["bbox"]["x"] = random.uniform(400, 1400)
    body["bbox"]["y"] = random.uniform(300, 900)
    if image is not None:
        body["image"] = {"media_type": "image/jpeg", "data": image}
    return body


class DroneFeed(FastHttpUser):
    """One sensor: steady single detections over a few track ids."""

    weight = 8
    wait_time = constant_throughput(float(os.environ.get("COPBRIDGE_LOAD_RATE", "5")))

    def on_start(self) -> None:
        self.sensor = f"uav-{next(_sensors)}-{uuid.uuid4().hex[:4]}"

    @task
    def detect(self) -> None:
        body = detection(self.sensor, str(random.randrange(TRACKS_PER_SENSOR)))
        with self.client.post(
            "/api/v1/detections",
            json=body,
            headers=_headers(),
            name="POST /detections",
            catch_response=True,
        ) as answer:
            if answer.status_code != 202:
                answer.failure(f"{answer.status_code}: {(answer.text or '')[:200]}")


class BatchUploader(FastHttpUser):
    """Bursts of 1,000-detection batches with images (an archive upload after a sortie)."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def upload(self) -> None:
        sensor = f"archive-{uuid.uuid4().hex[:6]}"
        images = _jpegs()
        bodies = [detection(sensor, None, image=images[i % len(images)]) for i in range(BATCH_SIZE)]
        with self.client.post(
            "/api/v1/detections/batch",
            json={"detections": bodies},
            headers=_headers(),
            name="POST /detections/batch (1000 + images)",
            catch_response=True,
        ) as answer:
            if answer.status_code != 202:
                answer.failure(f"{answer.status_code}: {(answer.text or '')[:200]}")
            elif answer.json()["accepted"] != BATCH_SIZE:
                answer.failure(f"accepted {answer.json()['accepted']} of {BATCH_SIZE}")


class Operator(FastHttpUser):
    """A person at a console: lists, link states, the audit trail, metrics."""

    weight = 2
    wait_time = between(0.5, 1.5)

    def _get(self, path: str, name: str) -> None:
        with self.client.get(path, headers=_headers(), name=name, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"{answer.status_code}: {(answer.text or '')[:200]}")

    # A console's round, in order (lists twice as often as the rest): with random picks, a 12 s
    # smoke run on a busy machine once issued no GET /destinations at all and failed.
    _ROUND = (
        ("/api/v1/detections?limit=50", "GET /detections"),
        ("/api/v1/destinations", "GET /destinations"),
        ("/api/v1/detections?limit=50", "GET /detections"),
        ("/api/v1/audit?limit=50", "GET /audit"),
        ("/metrics", "GET /metrics"),
    )

    def on_start(self) -> None:
        self._next = itertools.cycle(self._ROUND)

    @task
    def look(self) -> None:
        self._get(*next(self._next))
