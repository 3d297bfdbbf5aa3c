"""Benchmark copbridge.cot against peers in one run: serialising vs pytak, parsing vs ElementTree.

Run: .venv/bin/python bench/bench_cot.py [N]   (N events per case, default 100000)
"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytak
from lxml import etree

from copbridge.cot import (
    DetectionEvent,
    build_detection_event,
    format_time,
    parse_xml,
    to_protobuf,
    to_xml,
)

NOW = datetime(2026, 11, 28, 3, 51, 21, tzinfo=UTC)


def _inputs(n: int) -> list[dict[str, Any]]:
    return [
        {
            "now": NOW,
            "detection_id": f"uav7-f{i:06d}-d3",
            "detection_time": NOW - timedelta(milliseconds=i % 1000),
            "sensor_id": "uav-7",
            "sensor_callsign": "RAVEN 7",
            "model": "yolov8n-coco",
            "label": ("person", "car", "boat", "truck")[i % 4],
            "confidence": 0.5 + (i % 50) / 100,
            "track_id": str(i % 500),
            "lat": 41.138301 + i * 1e-7,
            "lon": -104.785512 - i * 1e-7,
            "hae": 1839.6 + i % 10,
            "ce90": 23.5,
            "le90": 16.4,
            "course": float(i % 360),
            "speed": 1.5,
        }
        for i in range(n)
    ]


def _timed(label: str, n: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(f"  {label:<58} {seconds:7.3f} s  {seconds / n * 1e6:7.2f} us/event")
    return seconds


def _pytak_equivalent(event: DetectionEvent) -> bytes:
    """The same marker built the pytak way: ElementTree elements, pytak's point and event."""
    detail = pytak.cot_detail()  # with pytak's own _flow-tags_
    ET.SubElement(detail, "contact", callsign=event.callsign)
    ET.SubElement(detail, "remarks").text = event.remarks
    ET.SubElement(detail, "link", uid=event.parent_uid, type=event.parent_type, relation="p-p")
    ET.SubElement(detail, "precisionlocation", geopointsrc="CALC", altsrc="CALC")
    ET.SubElement(detail, "track", course=str(event.course), speed=str(event.speed))
    root = pytak.cot_event(
        lat=event.lat,
        lon=event.lon,
        hae=event.hae,
        ce=event.ce,
        le=event.le,
        uid=event.uid,
        stale=300,
        cot_type=event.type,
        how="m-i",
        detail=detail,
    )
    root.set("start", format_time(event.start))
    data: bytes = pytak.serialize_cot(root)
    return data


def serialise(n: int) -> None:
    inputs = _inputs(n)
    events = [build_detection_event(**kw) for kw in inputs]
    print(f"serialise {n} detection events (contact, remarks, link, precisionlocation, track):")
    ours = _timed("copbridge.cot to_xml (prebuilt events)", n, lambda: [to_xml(e) for e in events])
    ours_built = _timed(
        "copbridge.cot build_detection_event + to_xml",
        n,
        lambda: [to_xml(build_detection_event(**kw)) for kw in inputs],
    )
    _timed(
        "copbridge.cot to_protobuf (prebuilt events)", n, lambda: [to_protobuf(e) for e in events]
    )
    peer_equiv = _timed(
        "pytak cot_event + same detail + serialize_cot",
        n,
        lambda: [_pytak_equivalent(e) for e in events],
    )
    peer_gen = _timed(
        "pytak gen_cot (minimal: point, contact, flow tag only)",
        n,
        lambda: [
            pytak.gen_cot(
                lat=e.lat,
                lon=e.lon,
                hae=e.hae,
                ce=e.ce,
                le=e.le,
                uid=e.uid,
                stale=300,
                cot_type=e.type,
                callsign=e.callsign,
            )
            for e in events
        ],
    )
    peer_cot2xml = _timed(
        "pytak cot2xml(COTEvent) + ET.tostring (minimal)",
        n,
        lambda: [
            ET.tostring(
                pytak.cot2xml(
                    pytak.COTEvent(
                        lat=e.lat,
                        lon=e.lon,
                        uid=e.uid,
                        stale=300,
                        cot_type=e.type,
                        ce=e.ce,
                        hae=e.hae,
                        le=e.le,
                    )
                )
            )
            for e in events
        ],
    )
    print(f"  ratio pytak equivalent / to_xml:                 {peer_equiv / ours:6.1f}x")
    print(f"  ratio pytak equivalent / build + to_xml:         {peer_equiv / ours_built:6.1f}x")
    print(f"  ratio pytak gen_cot (less content) / to_xml:     {peer_gen / ours:6.1f}x")
    print(f"  ratio pytak cot2xml (less content) / to_xml:     {peer_cot2xml / ours:6.1f}x")


def parse(n: int) -> None:
    documents = [to_xml(build_detection_event(**kw)) for kw in _inputs(n)]
    print(f"parse {n} events:")
    ours = _timed(
        "copbridge.cot parse_xml (hardened lxml -> ParsedEvent)",
        n,
        lambda: [parse_xml(d) for d in documents],
    )
    peer = _timed(
        "xml.etree.ElementTree.fromstring (tree only, unchecked)",
        n,
        lambda: [ET.fromstring(d) for d in documents],
    )
    _timed(
        "lxml.etree.fromstring (tree only, for reference)",
        n,
        lambda: [etree.fromstring(d) for d in documents],
    )
    print(f"  ratio ElementTree.fromstring / parse_xml:        {peer / ours:6.2f}x")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    serialise(n)
    parse(n)


if __name__ == "__main__":
    main()
