"""Rate limits per credential and per client IP with the ``limits`` library.

``limits`` has no token bucket; its moving window is the equivalent used here: at most N hits in
any window, capacity coming back as old hits age out, so ``Retry-After`` is exact. Storage is in
process (``memory://``) or shared by replicas (``redis://``).

In process we count with :class:`LocalMovingWindow`, our own few lines with the same rule: the
``limits`` async memory storage takes a lock, awaits and scans twice per hit, ~100 µs of every
ingest request here (two hits each) — the largest single cost of authorisation. Redis keeps
``limits``, whose Lua scripts make the count atomic across replicas.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from copbridge.logs import get_logger

_log = get_logger("copbridge.ratelimit")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # seconds until one more hit is allowed again

    def headers(self) -> dict[str, str]:
        """IETF draft ``RateLimit-*`` fields, plus ``Retry-After`` when refused."""
        reset = max(1, math.ceil(self.reset_s))
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not self.allowed:
            out["Retry-After"] = str(reset)
        return out


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
    """Named limits (``credential``, ``ip``, ``auth``…) checked against one storage."""

    def __init__(self, storage_url: str, limits: dict[str, str], prefix: str = "copbridge") -> None:
        self.prefix = prefix
        uri = storage_uri(storage_url)
        options = {"implementation": "redispy"} if "redis" in uri else {}
        storage = storage_from_string(uri, **options)
        if not isinstance(storage, Storage):
            raise TypeError(f"{uri} is not an async storage")
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.local = LocalMovingWindow() if uri.startswith("async+memory") else None
        self.items: dict[str, RateLimitItem] = {name: parse(text) for name, text in limits.items()}
        self._warned = 0.0

    async def hit(self, name: str, identity: str) -> Verdict:
        """Count one hit for ``identity`` under the named limit; fail open if storage is down."""
        item = self.items[name]
        if self.local is not None:
            allowed, remaining, reset = self.local.hit(
                (self.prefix, name, identity), item.amount, float(item.get_expiry())
            )
            return Verdict(allowed, item.amount, remaining, reset)
        try:
            allowed = await self.limiter.hit(item, self.prefix, name, identity)
            reset_at, remaining = await self.limiter.get_window_stats(
                item, self.prefix, name, identity
            )
        except Exception as exc:  # a limiter outage must not stop the service
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                _log.warning("rate limit storage unavailable; not limiting", error=str(exc))
            return Verdict(True, item.amount, item.amount, float(item.get_expiry()))
        return Verdict(allowed, item.amount, remaining, max(0.0, reset_at - time.time()))

    async def reset(self) -> None:
        if self.local is not None:
            self.local.reset()
        await self.storage.reset()
