"""Events drained to a stream in the last seconds, kept to re-send after the link drops.

A drained write is not a received one: the kernel may still hold it when the peer vanishes. CoT
makes the duplicate harmless (the same uid and time replace themselves at the receiver).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from copbridge.store import OutboxItem


class RecentWrites:
    """A bounded window of ``(monotonic time written, item)`` for one destination."""

    def __init__(self, window_s: float, max_items: int = 20_000) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, OutboxItem]] = deque(maxlen=max_items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[OutboxItem], at: float) -> None:
        self._items.extend((at, item) for item in items)
        self._trim(at)

    def _trim(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def confirmed(self, before: float) -> None:
        """Forget writes the peer has acknowledged (a pong for a later ping)."""
        while self._items and self._items[0][0] < before:
            self._items.popleft()

    def take(self, now: float, now_us: int) -> list[OutboxItem]:
        """Everything still unconfirmed within the window and not stale; the window empties."""
        self._trim(now)
        items = [item for _, item in self._items if item.stale_us > now_us]
        self._items.clear()
        return items
