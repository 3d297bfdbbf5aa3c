"""Real HTTP against a real ``copbridge serve``: concurrent retries of one id store it once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from copbridge.store import DetectionQuery, open_store
from tests.api.conftest import taken_now
from tests.system.processes import start_serve


def test_fifty_parallel_posts_of_one_id_store_one_detection(tmp_path: Path) -> None:
    serve = start_serve(
        tmp_path,
        env={"COPBRIDGE_DESTINATIONS": "tcp://127.0.0.1:9", "COPBRIDGE_RUN_WORKER": "false"},
    )
    try:
        body = taken_now()  # a current pose: the platform event is due too

        async def post_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=serve.url, timeout=30, headers=serve.headers
            ) as client:
                return await asyncio.gather(
                    *(client.post("/api/v1/detections", json=body) for _ in range(50))
                )

        answers = asyncio.run(post_all())
        assert [a.status_code for a in answers] == [202] * 50
        duplicates = [a.json()["duplicate"] for a in answers]
        assert duplicates.count(False) == 1
        assert duplicates.count(True) == 49
        assert len({a.json()["uid"] for a in answers}) == 1
    finally:
        serve.stop()
    store = open_store(f"sqlite:///{tmp_path / 'copbridge.db'}")
    try:
        assert store.outbox_stats(["tcp://127.0.0.1:9"])[0].pending == 2  # detection + platform
        assert len(store.list_detections(DetectionQuery())) == 1
        assert store.verify_audit().ok
    finally:
        store.close()
