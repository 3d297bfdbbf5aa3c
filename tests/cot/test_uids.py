"""CoT uids: stable per sensor track, unique per untracked detection, never ambiguous."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copbridge.cot import detection_uid, platform_uid

from .strategies import hostile_text


def test_the_contract_example_uid() -> None:
    assert detection_uid("copbridge", "uav-7", "17", "uav7-f000123-d3") == "copbridge.uav-7.17"
    assert platform_uid("copbridge", "uav-7") == "copbridge.uav-7"


def test_untracked_detections_get_one_uid_each() -> None:
    assert detection_uid("copbridge", "uav-7", None, "uav7-f1-d3") == "copbridge.uav-7.d.uav7-f1-d3"
    assert detection_uid("copbridge", "uav-7", "", "x") == "copbridge.uav-7.d.x"
    assert detection_uid("p", "s", None, "a") != detection_uid("p", "s", None, "b")


def test_updates_of_one_track_keep_one_uid() -> None:
    first = detection_uid("copbridge", "uav-7", "17", "frame-1")
    assert detection_uid("copbridge", "uav-7", "17", "frame-2") == first


def test_dots_cannot_make_two_inputs_collide() -> None:
    assert detection_uid("p", "a.b", "c", "x") != detection_uid("p", "a", "b.c", "x")
    assert detection_uid("p", "s.d", "7", "x") != detection_uid("p", "s", None, "7")


ids = st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=12)


@given(ids, st.none() | ids, ids, ids, st.none() | ids, ids)
def test_different_inputs_never_share_a_uid(
    s1: str, t1: str | None, d1: str, s2: str, t2: str | None, d2: str
) -> None:
    key1 = (s1, t1) if t1 else (s1, None, d1)
    key2 = (s2, t2) if t2 else (s2, None, d2)
    same = detection_uid("copbridge", s1, t1, d1) == detection_uid("copbridge", s2, t2, d2)
    assert same == (key1 == key2)


@given(hostile_text.filter(bool), hostile_text, hostile_text.filter(bool))
def test_uids_are_printable_ascii(sensor: str, track: str, detection: str) -> None:
    uid = detection_uid("copbridge", sensor, track, detection)
    assert uid.isascii()
    assert uid.isprintable()
    assert not set(uid) & set("<>&\"' ")


@pytest.mark.parametrize("prefix", ["", "has space", "x" * 65, "a/b"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        platform_uid(prefix, "uav-7")


def test_empty_sensor_id_is_refused() -> None:
    with pytest.raises(ValueError, match="sensor"):
        detection_uid("copbridge", "", "1", "x")
