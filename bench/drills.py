"""The long drills (``make drills``): the CI drills with more cycles and longer outages, a fuzz
run of over 1,000 cases and a minute of every load profile; prints Markdown tables to paste into
docs/reliability.md and docs/benchmarks.md. Exit status 1 when any promise broke.

    .venv/bin/python bench/drills.py                  # everything, ~12 minutes here
    .venv/bin/python bench/drills.py crash fuzz       # some of it
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import drills  # after the path above: tests are importable
from tests.system.fuzz import fuzz
from tests.system.load import run_locust, serve_for_load

LONG: dict[str, Callable[[Path], drills.DrillReport]] = {
    "crash": lambda w: drills.crash(w, cycles=20, drain_s=120),
    "taky": lambda w: drills.taky_outage(w, outage_s=60, drain_s=120),
    "taky15": lambda w: drills.taky_outage(w, outage_s=60, drain_s=120, keepalive_s=15),
    "blackhole": lambda w: drills.black_hole(w, outage_s=60, drain_s=120),
    "blackhole15": lambda w: drills.black_hole(w, outage_s=60, drain_s=120, keepalive_s=15),
    "takytls": lambda w: drills.taky_outage(w, outage_s=60, drain_s=120, tls=True),
    "blackholetls": lambda w: drills.black_hole(w, outage_s=60, drain_s=120, tls=True),
    "blackhole+kill": lambda w: drills.black_hole_then_crash(w, outage_s=10, drain_s=60),
    "diskfull": lambda w: drills.disk_full(w, max_pages=3000),
    "postgres": lambda w: drills.pg_outage(w, outage_s=30),
    "pgsilent": lambda w: drills.pg_silent(w, outage_s=30),
    "pgdiskfull": lambda w: drills.pg_disk_full(w, size_mb=64),
}


def run_drills(names: list[str], root: Path) -> bool:
    print(drills.HEADER)
    clean = True
    notes = []
    for name in names:
        report = LONG[name](root / name)
        print(report.row(), flush=True)
        notes += [f"- {report.name}: {note}" for note in report.notes]
        if problems := report.problems():
            clean = False
            notes += [f"- {report.name}: PROBLEM {problem}" for problem in problems]
    print("\n".join(notes))
    return clean


def run_fuzz(root: Path, max_time_s: int | None = None) -> bool:
    started = time.monotonic()
    run = fuzz(root / "fuzz", max_examples=50, timeout_s=1800, max_time_s=max_time_s)
    seconds = time.monotonic() - started
    print(
        f"\nfuzz: {run.operations} operations, {run.cases} cases in {seconds:.0f} s, "
        f"exit {run.returncode}, 500s in the serve log: {run.server_errors_in_log}"
    )
    if run.returncode != 0:
        print(run.output[-20000:])
    return run.returncode == 0 and run.server_errors_in_log == 0


def run_load(root: Path, seconds: int = 60, users: int = 11) -> bool:
    workdir = root / "load"
    serve = serve_for_load(workdir)
    try:
        run = run_locust(workdir, serve, users=users, seconds=seconds)
    finally:
        serve.stop()
    print(f"\nload: {users} users (weights 8:1:2), {seconds} s, exit {run.returncode}")
    print("| request | count | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for row in run.rows:
        print(
            f"| {row['Name'] or row['Type']} | {row['Request Count']} | {row['Failure Count']}"
            f" | {float(row['Requests/s']):.1f} | {row['50%']} | {row['95%']} | {row['99%']}"
            f" | {float(row['Max Response Time']):.0f} |"
        )
    return run.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", help=f"any of {', '.join(LONG)}, fuzz, load")
    parser.add_argument("--keep", type=Path, help="keep work files here (default: a temp dir)")
    parser.add_argument(
        "--fuzz-seconds", type=int, help="keep fuzzing for this long (default: one pass)"
    )
    args = parser.parse_args()
    parts = args.parts or [*LONG, "fuzz", "load"]
    with tempfile.TemporaryDirectory(prefix="copbridge-drills-") as scratch:
        root = args.keep or Path(scratch)
        clean = True
        if names := [p for p in parts if p in LONG]:
            clean &= run_drills(names, root)
        if "fuzz" in parts:
            clean &= run_fuzz(root, args.fuzz_seconds)
        if "load" in parts:
            clean &= run_load(root)
    print("\nall promises held" if clean else "\nSOME PROMISES BROKE (see above)")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
