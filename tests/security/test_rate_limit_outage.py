"""A Redis that fails or goes silent never holds requests and never switches the limits off:
each replica counts alone until Redis answers again, then the shared count takes over.

Real Redis (127.0.0.1:6379) behind the fault proxy of the delivery drills; a listening socket
that never accepts stands in for a Redis node that vanished without a reset.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from fastapi.testclient import TestClient

from copbridge.api.app import create_app
from copbridge.metrics import RATE_LIMIT_SHARED_UP
from copbridge.security.ratelimit import RateLimits
from tests.delivery.proxy import FaultProxy
from tests.security import helpers as h

REDIS = ("127.0.0.1", 6379)
pytestmark = pytest.mark.timeout(60)  # a limiter that waits on a silent Redis hangs, not fails

BOUND_S = 5.0
"""No hit may take longer than this (the limiter's own timeout is 0.2 s): a liveness bound."""


@pytest.fixture
async def redis_proxy() -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(*REDIS)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections complete and then hear nothing: the kernel queues them and
    nobody ever accepts or answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def _limits(port: int, limit: str = "5/minute", retry_after_s: float = 0.5) -> RateLimits:
    return RateLimits(
        f"redis://127.0.0.1:{port}/0",
        {"credential": limit},
        prefix=f"t{uuid.uuid4().hex[:12]}",
        timeout_s=0.2,
        retry_after_s=retry_after_s,
    )


async def _hits(limits: RateLimits, count: int, identity: str = "key-1") -> list[bool]:
    return [
        (await asyncio.wait_for(limits.hit("credential", identity), BOUND_S)).allowed
        for _ in range(count)
    ]


def _shared_count(limits: RateLimits, identity: str = "key-1") -> int:
    """How many hits Redis itself holds for ``identity`` (the moving window is a list)."""
    client = redis.Redis(*REDIS)
    try:
        keys = cast(list[bytes], client.keys(f"*{limits.prefix}*{identity}*"))
        return sum(cast(int, client.llen(k)) for k in keys)
    finally:
        client.close()


def _forget(limits: RateLimits) -> None:
    client = redis.Redis(*REDIS)
    try:
        for key in cast(list[bytes], client.keys(f"*{limits.prefix}*")):
            client.delete(key)
    finally:
        client.close()


async def test_black_holed_redis_falls_back_to_local_limits_then_shares_again(
    redis_proxy: FaultProxy,
) -> None:
    limits = _limits(redis_proxy.port)
    try:
        assert await _hits(limits, 3) == [True] * 3
        assert limits.shared_up
        assert _shared_count(limits) == 3

        redis_proxy.black_hole()
        # Answered, not held; and still limited: this replica alone allows 5 a minute.
        assert await _hits(limits, 7) == [True] * 5 + [False] * 2
        assert not limits.shared_up
        assert RATE_LIMIT_SHARED_UP._value.get() == 0

        redis_proxy.heal()
        await asyncio.sleep(0.6)  # past retry_after_s: the next hit probes Redis
        # Redis still holds the 3 hits from before the outage: 2 more fit in its window.
        assert await _hits(limits, 3) == [True, True, False]
        assert limits.shared_up
        assert _shared_count(limits) == 5
        assert RATE_LIMIT_SHARED_UP._value.get() == 1
    finally:
        _forget(limits)


async def test_refused_redis_is_limited_locally_and_retried_after_the_pause(
    redis_proxy: FaultProxy,
) -> None:
    # A pause long enough that the hits below surely fall inside it on a busy machine.
    limits = _limits(redis_proxy.port, "3/minute", retry_after_s=3.0)
    try:
        await redis_proxy.refuse()
        redis_proxy.reset()
        assert await _hits(limits, 4) == [True, True, True, False]
        assert await _hits(limits, 1, "key-2") == [True]  # other identities keep their own
        assert not limits.shared_up

        await redis_proxy.accept()
        assert await _hits(limits, 1, "key-3") == [True]  # still within the pause: local
        assert not limits.shared_up
        assert _shared_count(limits, "key-3") == 0
        await asyncio.sleep(3.1)
        assert await _hits(limits, 1, "key-3") == [True]
        assert limits.shared_up
        assert _shared_count(limits, "key-3") == 1
    finally:
        _forget(limits)


async def test_while_redis_is_down_only_one_request_at_a_time_probes_it(
    redis_proxy: FaultProxy,
) -> None:
    limits = _limits(redis_proxy.port, "1000/minute")
    redis_proxy.black_hole()
    assert await _hits(limits, 1) == [True]  # waits out the timeout once, then counts locally
    asked = len(redis_proxy._held)  # connections Redis's silent stand-in swallowed so far
    await asyncio.sleep(0.6)
    verdicts = await asyncio.wait_for(
        asyncio.gather(*(limits.hit("credential", f"k{i}") for i in range(50))), BOUND_S
    )
    assert all(v.allowed for v in verdicts)
    assert not limits.shared_up
    # One of the 50 probed Redis (one more swallowed connection); the others never waited.
    assert len(redis_proxy._held) - asked <= 1
    assert {f"k{i}" for i in range(50)} <= {key[2] for key in limits.local._hits}


def test_api_answers_and_limits_while_redis_is_silent(tmp_path: Path, silent_port: int) -> None:
    app = create_app(
        h.secured_settings(
            tmp_path,
            rate_limit_storage=f"redis://127.0.0.1:{silent_port}/0",
            rate_limit_storage_timeout_ms=200,
            rate_limit_credential="4/minute",
        )
    )
    with TestClient(app) as client:
        key = h.bearer(h.make_key(app, "detections:read"))
        codes = [client.get("/api/v1/detections", headers=key).status_code for _ in range(6)]
        assert codes == [200] * 4 + [429] * 2
        guessed = client.get("/api/v1/detections", headers=h.bearer("cpb_guess")).status_code
        assert guessed == 401  # credentials are still checked, failures still counted
