"""Hypothesis strategies: hostile text, and every kind of event the package can build."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from copbridge.cot import Affiliation, CotEvent, ping_event

from .factories import detection, platform

NASTY = [
    '"',
    "'",
    "<",
    ">",
    "&",
    "&amp;",
    "]]>",
    "<![CDATA[x]]>",
    "<!DOCTYPE x>",
    "\x00",
    "\x01\x08\x0b\x0c\x1f",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\u200f\u202e",  # right-to-left mark, right-to-left override
    "\u05e9\u05dc\u05d5\u05dd",
    "\U0001f600\U0001f9d1\u200d\U0001f680",
    "\ud800",
    "\udfff",
    "\ufffe\uffff",
    "\x7f\x85\u2028",
    "&#0;",
    "\U0010ffff",
]

# Every code point, surrogates included (Python strings can hold them; XML cannot).
_any_char = st.characters(codec=None, exclude_categories=())

hostile_text = st.one_of(
    st.text(_any_char, max_size=40),
    st.lists(st.sampled_from(NASTY) | st.text(_any_char, max_size=3), max_size=12).map("".join),
    # ~10 kB strings, built by repetition so generating them stays cheap
    st.tuples(st.text(_any_char, min_size=1, max_size=8) | st.sampled_from(NASTY)).map(
        lambda t: (t[0] * (10_000 // len(t[0]) + 1))[:10_000]
    ),
)

times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2099, 12, 31),
    timezones=st.just(UTC),
)

finite = st.floats(allow_nan=False, allow_infinity=False)
errors = st.none() | st.floats(min_value=0.0, max_value=1e7, allow_nan=False)


@st.composite
def detections(draw: st.DrawFn) -> CotEvent:
    now = draw(times)
    moving = draw(st.booleans())
    return detection(
        now=now,
        detection_time=now - timedelta(seconds=draw(st.integers(0, 3600))),
        lat=draw(st.floats(-90, 90)),
        lon=draw(st.floats(-180, 180)),
        hae=draw(st.floats(-1e4, 1e5)),
        ce90=draw(errors),
        le90=draw(errors),
        confidence=draw(st.floats(0, 1)),
        track_id=draw(st.none() | st.sampled_from(["17", "a-b_c", "7"])),
        affiliation=draw(st.sampled_from(list(Affiliation))),
        label=draw(st.sampled_from(["person", "car", "boat", "airplane", "drone", "dog"])),
        course=draw(st.floats(-720, 720)) if moving else None,
        speed=draw(st.floats(0, 400)) if moving else None,
        image_url=draw(st.none() | st.just("https://x.example/i.jpg")),
        image_mime=None,
    )


@st.composite
def platforms(draw: st.DrawFn) -> CotEvent:
    def maybe(strategy: st.SearchStrategy[float]) -> float | None:
        return draw(st.none() | strategy)

    return platform(
        now=draw(times),
        airborne=draw(st.booleans()),
        lat=draw(st.floats(-90, 90)),
        lon=draw(st.floats(-180, 180)),
        hae=draw(st.floats(-1e4, 1e5)),
        ce=draw(errors),
        le=draw(errors),
        azimuth=maybe(st.floats(-1e4, 1e4)),
        elevation=draw(st.floats(-90, 90)),
        roll=maybe(st.floats(-1e4, 1e4)),
        fov=maybe(st.floats(0.001, 359.999)),
        vfov=maybe(st.floats(0.001, 359.999)),
        range_m=maybe(st.floats(0, 1e6)),
        course=maybe(st.floats(0, 359.9)),
        speed=maybe(st.floats(0, 300)),
    )


pings = times.map(ping_event)
events = st.one_of(detections(), platforms(), pings)
