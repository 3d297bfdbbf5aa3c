"""Rate limits per credential and per client IP with the ``limits`` library.

``limits`` has no token bucket; its moving window is the equivalent used here: at most N hits in
any window, capacity coming back as old hits age out, so ``Retry-After`` is exact. Storage is in
process (``memory://``) or shared by replicas (``redis://``).
"""

from __future__ import annotations

import math
import time
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
        self.items: dict[str, RateLimitItem] = {name: parse(text) for name, text in limits.items()}
        self._warned = 0.0

    async def hit(self, name: str, identity: str) -> Verdict:
        """Count one hit for ``identity`` under the named limit; fail open if storage is down."""
        item = self.items[name]
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
        await self.storage.reset()
