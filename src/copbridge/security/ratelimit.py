"""Rate limits per credential and per client IP with the ``limits`` library.

``limits`` has no token bucket; its moving window is the equivalent used here: at most N hits in
any window, capacity coming back as old hits age out, so ``Retry-After`` is exact. Storage is in
process (``memory://``) or shared by replicas (``redis://``); when Redis is down or silent, each
replica falls back to counting in process (see :class:`RateLimits`).

In process we count with :class:`LocalMovingWindow`, our own few lines with the same rule: the
``limits`` async memory storage takes a lock, awaits and scans twice per hit, ~100 µs of every
ingest request here (two hits each) — the largest single cost of authorisation. Redis keeps
``limits``, whose Lua scripts make the count atomic across replicas.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from copbridge.logs import get_logger
from copbridge.metrics import RATE_LIMIT_LOCAL_FALLBACKS, RATE_LIMIT_SHARED_UP

_log = get_logger("copbridge.ratelimit")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until one more hit is allowed again

    def headers(self) -> dict[str, str]:
        """IETF draft ``RateLimit-*`` fields, plus ``Retry-After`` when refused."""
        return {_FIELD_NAMES[name]: value.decode() for name, value in self.header_pairs()}

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as raw ASGI pairs with lower-case names (every answer carries them)."""
        reset = b"%d" % max(1, math.ceil(self.reset_s))
        pairs = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % max(0, self.remaining)),
            (b"ratelimit-reset", reset),
        ]
        if not self.allowed:
            pairs.append((b"retry-after", reset))
        return pairs


_FIELD_NAMES = {
    name.lower().encode(): name
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After")
}


def storage_uri(url: str) -> str:
    """Our setting (``memory://``, ``redis://…``) as the ``limits`` async storage URI."""
    if url.startswith(("memory://", "redis://", "rediss://")):
        return f"async+{url}"
    raise ValueError("rate limit storage must be memory:// or redis://")


class LocalMovingWindow:
    """At most ``amount`` hits in any ``seconds``-long window, per key, in this process.

    Each key keeps the times of its counted hits (refused hits are not counted, as in
    ``limits``); old times fall out as the window moves, and keys left idle are swept.
    """

    _SWEEP_EVERY = 10_000

    def __init__(self) -> None:
        self._hits: dict[tuple[str, str, str], deque[float]] = {}
        self._since_sweep = 0

    def hit(
        self, key: tuple[str, str, str], amount: int, seconds: float
    ) -> tuple[bool, int, float]:
        """Count a hit if allowed; return (allowed, remaining, seconds until a slot frees)."""
        now = time.monotonic()
        times = self._hits.get(key)
        if times is None:
            times = self._hits[key] = deque()
        horizon = now - seconds
        while times and times[0] <= horizon:
            times.popleft()
        allowed = len(times) < amount
        if allowed:
            times.append(now)
        self._since_sweep += 1
        if self._since_sweep >= self._SWEEP_EVERY:
            self._sweep(now, seconds)
        reset = times[0] + seconds - now if times else seconds
        return allowed, amount - len(times), max(0.0, reset)

    def _sweep(self, now: float, seconds: float) -> None:
        # Keys whose newest hit is older than the longest window in use hold nothing any more.
        self._since_sweep = 0
        longest = max(seconds, 3600.0)
        for key in [k for k, t in self._hits.items() if not t or t[-1] <= now - longest]:
            del self._hits[key]

    def reset(self) -> None:
        self._hits.clear()


class RateLimits:
    """Named limits (``credential``, ``ip``, ``auth``…) checked against one storage.

    With Redis, every call is bounded by ``timeout_s``. When Redis fails or does not answer in
    time, this replica counts in process instead (each replica then enforces the limits alone,
    so a cluster allows at most replicas x limit) and asks Redis again after ``retry_after_s``
    with one probing request while the others stay local. A vanished Redis (no RST: a dead node
    or a partition) used to hold every request for good; limits are never simply switched off.
    """

    def __init__(
        self,
        storage_url: str,
        limits: dict[str, str],
        prefix: str = "copbridge",
        *,
        timeout_s: float = 0.25,
        retry_after_s: float = 5.0,
    ) -> None:
        self.prefix = prefix
        uri = storage_uri(storage_url)
        shared = "redis" in uri
        options: dict[str, float | str | bool] = (
            {
                "implementation": "redispy",
                "socket_connect_timeout": timeout_s,
                "socket_timeout": timeout_s,
            }
            if shared
            else {}
        )
        storage = storage_from_string(uri, **options)
        if not isinstance(storage, Storage):
            raise TypeError(f"{uri} is not an async storage")
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(self.storage) if shared else None
        self.local = LocalMovingWindow()
        self.items: dict[str, RateLimitItem] = {name: parse(text) for name, text in limits.items()}
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._shared_down_until = 0.0  # monotonic; 0 = the shared storage is believed up
        self._probing = False
        self._warned = 0.0
        RATE_LIMIT_SHARED_UP.set(1 if shared else 0)

    @property
    def shared_up(self) -> bool:
        """False while a Redis outage has the limits counted in this process."""
        return self.limiter is not None and not self._shared_down_until

    async def hit(self, name: str, identity: str) -> Verdict:
        """Count one hit for ``identity`` under the named limit."""
        item = self.items[name]
        if self.limiter is None or not self._may_ask_shared():
            return self._local_hit(item, name, identity)
        probing = bool(self._shared_down_until)
        if probing:
            self._probing = True
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed = await self.limiter.hit(item, self.prefix, name, identity)
                reset_at, remaining = await self.limiter.get_window_stats(
                    item, self.prefix, name, identity
                )
        except Exception as exc:  # an outage of the shared storage must not stop the service
            self._shared_failed(exc)
            return self._local_hit(item, name, identity)
        finally:
            if probing:
                self._probing = False
        if self._shared_down_until:
            self._shared_down_until = 0.0
            RATE_LIMIT_SHARED_UP.set(1)
            _log.warning("rate limit storage answers again; limits are shared again")
        return Verdict(allowed, item.amount, remaining, max(0.0, reset_at - time.time()))

    def _may_ask_shared(self) -> bool:
        if not self._shared_down_until:
            return True
        # Down: one request at a time probes once the pause is over; the rest count locally.
        return time.monotonic() >= self._shared_down_until and not self._probing

    def _shared_failed(self, exc: BaseException) -> None:
        was_up = not self._shared_down_until
        self._shared_down_until = time.monotonic() + self._retry_after_s
        if not was_up:
            return  # a failed probe, or a request that was already waiting when Redis went
        RATE_LIMIT_SHARED_UP.set(0)
        RATE_LIMIT_LOCAL_FALLBACKS.inc()
        if time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            error = str(exc) or f"no answer within {self._timeout_s:g} s"
            _log.warning(
                "rate limit storage unavailable; counting in this process until it answers",
                error=error,
            )

    def _local_hit(self, item: RateLimitItem, name: str, identity: str) -> Verdict:
        allowed, remaining, reset = self.local.hit(
            (self.prefix, name, identity), item.amount, float(item.get_expiry())
        )
        return Verdict(allowed, item.amount, remaining, reset)

    async def reset(self) -> None:
        self.local.reset()
        await self.storage.reset()
