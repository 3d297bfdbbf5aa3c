"""The in-process moving window counts exactly like ``limits``' moving window: at most N hits
in any window, refused hits not counted, capacity back as the oldest hit ages out."""

from __future__ import annotations

import pytest

from copbridge.security.ratelimit import LocalMovingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("copbridge.security.ratelimit.time.monotonic", fake)
    return fake


KEY = ("copbridge", "credential", "k1")


def test_at_most_n_in_any_window_and_refusals_do_not_count(clock: Clock) -> None:
    window = LocalMovingWindow()
    seen = []
    for step in (0.0, 0.2, 0.4, 0.6, 0.8, 0.99):
        clock.now = 1000.0 + step
        seen.append(window.hit(KEY, 3, 1.0))
    assert [s[0] for s in seen] == [True, True, True, False, False, False]
    assert [s[1] for s in seen] == [2, 1, 0, 0, 0, 0]
    assert seen[3][2] == pytest.approx(0.4)  # the hit at 0.0 leaves the window at 1.0
    clock.now = 1001.0  # the first hit ages out: exactly one slot, although three were refused
    assert window.hit(KEY, 3, 1.0)[:2] == (True, 0)
    assert window.hit(KEY, 3, 1.0)[0] is False
    assert window.hit(("copbridge", "credential", "k2"), 3, 1.0)[0] is True  # keys are apart


def test_idle_keys_are_swept(clock: Clock) -> None:
    window = LocalMovingWindow()
    for i in range(50):
        window.hit(("p", "ip", str(i)), 10, 1.0)
    clock.now += 7200.0
    for _ in range(LocalMovingWindow._SWEEP_EVERY):
        window.hit(KEY, 10**9, 1.0)
    assert set(window._hits) == {KEY}
