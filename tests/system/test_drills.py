"""The drills, short: crash, TAK outage, half-open black hole, full disk, PostgreSQL cut.

Each runs the real chain (load → serve → fault proxy → taky → receiving client) and fails on any
broken promise: an accepted detection that never arrived, a 202 for something not stored, a
broken audit chain, a 5xx other than 503, memory growing with the backlog. ``make drills`` runs
the same functions long (bench/drills.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system import drills
from tests.system.harness import fresh_pg_database, small_disk_unavailable

pytestmark = pytest.mark.timeout(150)


def _clean(report: drills.DrillReport) -> None:
    print(f"\n{drills.HEADER}\n{report.row()}\n{report.notes}")  # in the log of a failed run
    assert report.problems() == []


def test_sigkill_at_random_moments_loses_no_accepted_detection(tmp_path: Path) -> None:
    report = drills.crash(tmp_path, cycles=3)
    _clean(report)
    assert report.cycles == 3


@pytest.mark.postgres
def test_sigkill_on_postgresql_loses_no_accepted_detection(tmp_path: Path) -> None:
    with fresh_pg_database() as (url, _):
        report = drills.crash(tmp_path, cycles=2, database_url=url)
    _clean(report)
    assert report.store == "postgresql"


def test_taky_outage_under_load_loses_nothing_and_memory_stays_bounded(tmp_path: Path) -> None:
    report = drills.taky_outage(tmp_path, outage_s=5)
    _clean(report)
    assert report.rss_peak_kib > 0


def test_half_open_black_hole_loses_nothing_and_backlog_drains(tmp_path: Path) -> None:
    report = drills.black_hole(tmp_path, outage_s=5)
    _clean(report)
    assert report.drain_s < 30


def test_sigkill_inside_a_black_hole_loses_nothing(tmp_path: Path) -> None:
    report = drills.black_hole_then_crash(tmp_path, outage_s=4, drain_s=10)
    _clean(report)


def test_full_sqlite_file_answers_503_never_a_false_202(tmp_path: Path) -> None:
    report = drills.disk_full(tmp_path)
    _clean(report)
    assert report.refused > 0


@pytest.mark.postgres
def test_postgresql_cut_answers_503_then_recovers_by_itself(tmp_path: Path) -> None:
    report = drills.pg_outage(tmp_path, outage_s=4)
    _clean(report)
    assert report.refused > 0


@pytest.mark.postgres
def test_silent_postgresql_answers_503_in_bounded_time_then_recovers(tmp_path: Path) -> None:
    report = drills.pg_silent(tmp_path, outage_s=8)
    _clean(report)
    assert report.refused > 0


@pytest.mark.postgres
def test_full_postgresql_disk_answers_503_then_recovers_by_itself(tmp_path: Path) -> None:
    why_not = small_disk_unavailable()
    if why_not is not None:
        pytest.skip(why_not)
    report = drills.pg_disk_full(tmp_path)
    _clean(report)
    assert report.refused > 0


def test_taky_outage_over_tls_loses_nothing(tmp_path: Path) -> None:
    report = drills.taky_outage(tmp_path, outage_s=5, tls=True)
    _clean(report)
    assert "TLS" in report.name
