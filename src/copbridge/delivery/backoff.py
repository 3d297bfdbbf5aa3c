"""Exponential backoff with jitter, so many workers retrying one server do not retry in step."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``low`` up to ``high``; each one drawn from its upper half."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = max(low, high)
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.high, self.low * 2.0**self._attempt)
        if ceiling < self.high and self._attempt < 64:  # 2.0**1024 would overflow
            self._attempt += 1
        return ceiling / 2 + random.random() * ceiling / 2  # noqa: S311 - jitter, not secrecy

    def reset(self) -> None:
        self._attempt = 0
