"""The drills as functions of their size: crash, TAK outage, half-open black hole, full disk and
a PostgreSQL lock-out. CI runs them short (tests/system/test_drills.py), ``make drills`` long
(bench/drills.py); both read the same :class:`DrillReport`.

Every drill runs the real chain: load → ``copbridge serve`` → fault proxy → taky → a receiving
client, and ends by comparing the set of uids answered 202 with the set the client received.
"""

from __future__ import annotations

import contextlib
import random
import signal
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from copbridge.store import open_store
from tests.conftest import ADMIN_HEADERS
from tests.delivery.taky import P12_PASSWORD, Taky
from tests.system.harness import (
    Load,
    ProxyThread,
    Receiver,
    detection_now,
    fresh_pg_database,
    pg_database_on_small_disk,
    pg_lock_out,
    rss_kib,
    wait_until,
)
from tests.system.processes import Serve, start_serve

#: Settings for every drill: fast retries, no rate limit in the way, nothing goes stale meanwhile
#: (so "every accepted detection" and "every non-stale one" are the same set).
DRILL_ENV = {
    "COPBRIDGE_DELIVERY_POLL_S": "0.2",
    "COPBRIDGE_DELIVERY_BACKOFF_MIN_S": "0.2",
    "COPBRIDGE_DELIVERY_BACKOFF_MAX_S": "1.0",
    "COPBRIDGE_DELIVERY_LEASE_S": "2",
    "COPBRIDGE_STALE_SECONDS": "3600",
    "COPBRIDGE_RATE_LIMIT_CREDENTIAL": "1000000/second",
    "COPBRIDGE_RATE_LIMIT_IP": "1000000/second",
}
KEEPALIVE_S = 1.0
#: How much ``serve`` may grow during an outage: the backlog lives in the store, not in memory.
RSS_GROWTH_LIMIT_KIB = 64 * 1024


@dataclass
class DrillReport:
    """What a drill saw; ``problems()`` is empty when every promise held."""

    name: str
    store: str
    cycles: int
    seconds: float = 0.0
    accepted: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    refused: int = 0  # answered 503
    unreadable: list[str] = field(default_factory=list)  # answered 202, not in the store
    audit_ok: bool = False
    audit_records: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    drain_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = list(self.failures)
        if self.accepted == 0:
            found.append("nothing was accepted: the drill proved nothing")
        if self.lost:
            found.append(f"{len(self.lost)} accepted detections never arrived: {self.lost[:5]}")
        if self.unreadable:
            found.append(f"{len(self.unreadable)} answered 202 but not stored")
        if not self.audit_ok:
            found.append("the audit chain does not verify")
        if any(status >= 500 and status != 503 for status in self.statuses):
            found.append(f"server errors: {dict(self.statuses)}")
        if self.rss_peak_kib > self.rss_before_kib + RSS_GROWTH_LIMIT_KIB:
            found.append(f"RSS grew from {self.rss_before_kib} to {self.rss_peak_kib} KiB")
        return found

    def row(self) -> str:
        """One Markdown table row: drill, store, cycles, accepted, delivered, lost, duplicates…"""
        rss = (
            f"{self.rss_before_kib / 1024:.1f} → {self.rss_peak_kib / 1024:.1f}"
            if self.rss_peak_kib
            else "-"
        )
        return (
            f"| {self.name} | {self.store} | {self.cycles} | {self.seconds:.1f} | {self.accepted}"
            f" | {self.delivered} | {len(self.lost)} | {self.duplicates} | {self.refused}"
            f" | {len(self.unreadable)} | {'ok' if self.audit_ok else 'BROKEN'}"
            f" ({self.audit_records}) | {self.drain_s:.1f} | {rss} |"
        )


HEADER = (
    "| drill | store | cycles | s | accepted | delivered | lost | duplicates | 503 | 202 not"
    " stored | audit (records) | drain s | RSS MiB before → peak |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Rig:
    """taky, the fault proxy in front of it, a receiving client and ``serve``, all running."""

    workdir: Path
    database_url: str
    taky: Taky
    proxy: ProxyThread
    receiver: Receiver
    serve: Serve
    env: dict[str, str]
    args: list[str]

    def restart(self, sig: int = signal.SIGKILL, **env: str) -> None:
        self.serve.stop(sig)
        self.env.update(env)
        self.serve = start_serve(self.workdir, self.env, port=self.serve.port, args=self.args)

    def rss(self) -> int:
        return rss_kib(self.serve.proc.pid)

    def settle(self, report: DrillReport, load: Load, drain_s: float, started: float) -> None:
        """Wait until every accepted uid has arrived (bounded), stop serve, check the store."""
        wanted = set(load.accepted.values())
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: wanted <= self.receiver.uids(), drain_s, "delivery")
        report.drain_s = report.drain_s or time.monotonic() - t0
        self.serve.stop(signal.SIGTERM)
        received = self.receiver.uids()
        copies = self.receiver.copies()
        report.seconds = time.monotonic() - started
        report.accepted = len(load.accepted)
        report.delivered = len(wanted & received)
        report.lost = sorted(wanted - received)
        report.duplicates = sum(copies[uid] - 1 for uid in wanted if copies[uid] > 1)
        report.refused = len(load.refused)
        report.statuses = load.statuses
        store = open_store(self.database_url)
        try:
            report.unreadable = [i for i in load.accepted if store.get_detection(i) is None]
            chain = store.verify_audit()
            report.audit_ok, report.audit_records = chain.ok, chain.records
            stored_anyway = sum(1 for i in load.refused if store.get_detection(i) is not None)
        finally:
            store.close()
        if stored_anyway:
            report.notes.append(f"{stored_anyway} answered 503 were stored after all")
        if load.errors:
            report.notes.append(f"{load.errors} requests failed to connect (serve down)")


@contextlib.contextmanager
def rig(
    workdir: Path,
    database_url: str,
    *,
    keepalive_s: float = KEEPALIVE_S,
    tls: bool = False,
    **env: str,
) -> Iterator[Rig]:
    """Start the chain; tear every piece down whatever happens. With ``tls``, taky takes only
    TLS with client certificates (its own CA), copbridge and the receiver each have their own."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        taky = Taky(workdir / "taky", tls=tls)
        taky.start()
        stack.callback(taky.stop)
        proxy = ProxyThread(taky.port)
        stack.callback(proxy.close)
        receiver = Receiver(taky.host, taky.port, _receiver_tls(taky))
        receiver.connect()
        stack.callback(receiver.close)
        config = workdir / "copbridge.toml"
        config.write_text(_destination_toml(taky, proxy.port, keepalive_s))
        full_env = {**DRILL_ENV, "COPBRIDGE_DATABASE_URL": database_url, **env}
        args = ["--config", str(config)]
        serve = start_serve(workdir, full_env, args=args)
        the_rig = Rig(workdir, database_url, taky, proxy, receiver, serve, full_env, args)
        stack.callback(lambda: the_rig.serve.stop(signal.SIGKILL))
        yield the_rig


def _destination_toml(taky: Taky, port: int, keepalive_s: float) -> str:
    """copbridge's one destination: taky through the fault proxy, tcp:// or tls://."""
    if taky.tls is None:
        return f'[[destinations]]\nurl = "tcp://127.0.0.1:{port}"\nkeepalive_s = {keepalive_s}\n'
    return (
        f'[[destinations]]\nurl = "tls://127.0.0.1:{port}"\nkeepalive_s = {keepalive_s}\n'
        f'client_cert = "{taky.tls.copbridge.p12}"\nclient_password = "{P12_PASSWORD}"\n'
        f'ca_file = "{taky.tls.ca}"\nexpected_hostname = "localhost"\n'
    )


def _receiver_tls(taky: Taky) -> ssl.SSLContext | None:
    if taky.tls is None:
        return None
    context = ssl.create_default_context(cafile=str(taky.tls.ca))
    context.load_cert_chain(taky.tls.receiver.crt, taky.tls.receiver.key)
    return context


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'copbridge.db'}"


def crash(
    workdir: Path,
    *,
    cycles: int,
    rate: float = 60,
    seed: int = 8,
    drain_s: float = 60,
    database_url: str | None = None,
) -> DrillReport:
    """SIGKILL ``serve`` at random moments under load, restart it each time (SQLite unless a
    PostgreSQL ``database_url`` is given)."""
    url = database_url or sqlite_url(workdir)
    report = DrillReport("crash (SIGKILL + restart)", url.split(":", 1)[0], cycles)
    rng = random.Random(seed)
    started = time.monotonic()
    with rig(workdir, url) as chain:
        load = Load(chain.serve.url, rate).start()
        try:
            for _ in range(cycles):
                time.sleep(rng.uniform(0.3, 3.0))
                chain.restart(signal.SIGKILL)
            time.sleep(1.0)
        finally:
            load.stop()
        chain.settle(report, load, drain_s, started)
    return report


def _watch_rss(chain: Rig, report: DrillReport, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        report.rss_peak_kib = max(report.rss_peak_kib, chain.rss())
        time.sleep(0.25)


def _drain_after_heal(chain: Rig, report: DrillReport, load: Load, seconds: float) -> None:
    """Time until everything accepted so far has arrived, load still running, RSS watched."""
    backlog = set(load.accepted.values())
    healed = time.monotonic()
    deadline = healed + seconds
    while not backlog <= chain.receiver.uids() and time.monotonic() < deadline:
        report.rss_peak_kib = max(report.rss_peak_kib, chain.rss())
        time.sleep(0.1)
    report.drain_s = time.monotonic() - healed


def taky_outage(
    workdir: Path,
    *,
    outage_s: float,
    rate: float = 60,
    drain_s: float = 90,
    keepalive_s: float = KEEPALIVE_S,
    tls: bool = False,
) -> DrillReport:
    """taky stops for ``outage_s`` under load (the path refuses meanwhile), then comes back."""
    link = f"{'TLS, ' if tls else ''}keepalive {keepalive_s:g} s"
    report = DrillReport(f"taky down {outage_s:g} s ({link})", "sqlite", 1)
    started = time.monotonic()
    with rig(workdir, sqlite_url(workdir), keepalive_s=keepalive_s, tls=tls) as chain:
        load = Load(chain.serve.url, rate).start()
        try:
            time.sleep(2.0)
            report.rss_before_kib = report.rss_peak_kib = chain.rss()
            chain.proxy.call(chain.proxy.proxy.refuse())
            chain.taky.stop()
            chain.receiver.close()
            _watch_rss(chain, report, outage_s)
            chain.taky.start()
            chain.receiver.connect()  # registered before copbridge can reconnect
            chain.proxy.call(chain.proxy.proxy.accept())
            _drain_after_heal(chain, report, load, drain_s)
        finally:
            load.stop()
        chain.settle(report, load, drain_s, started)
    return report


def black_hole(
    workdir: Path,
    *,
    outage_s: float,
    rate: float = 60,
    drain_s: float = 90,
    keepalive_s: float = KEEPALIVE_S,
    tls: bool = False,
) -> DrillReport:
    """The path to taky silently eats everything (half-open, new connections too), then heals."""
    link = f"{'TLS, ' if tls else ''}keepalive {keepalive_s:g} s"
    report = DrillReport(f"half-open black hole {outage_s:g} s ({link})", "sqlite", 1)
    started = time.monotonic()
    with rig(workdir, sqlite_url(workdir), keepalive_s=keepalive_s, tls=tls) as chain:
        load = Load(chain.serve.url, rate).start()
        try:
            time.sleep(2.0)
            report.rss_before_kib = report.rss_peak_kib = chain.rss()
            chain.proxy.do(chain.proxy.proxy.black_hole)
            _watch_rss(chain, report, outage_s)
            chain.proxy.do(chain.proxy.proxy.heal)
            _drain_after_heal(chain, report, load, drain_s)
        finally:
            load.stop()
        chain.settle(report, load, drain_s, started)
    return report


def black_hole_then_crash(
    workdir: Path, *, outage_s: float, rate: float = 60, drain_s: float = 60
) -> DrillReport:
    """Half-open black hole under load, ``serve`` SIGKILLed inside it, then heal and restart:
    what was written into the hole must still arrive (it was never received by anyone)."""
    report = DrillReport(f"black hole {outage_s:g} s + SIGKILL", "sqlite", 1)
    started = time.monotonic()
    with rig(workdir, sqlite_url(workdir)) as chain:
        load = Load(chain.serve.url, rate).start()
        try:
            time.sleep(2.0)
            chain.proxy.do(chain.proxy.proxy.black_hole)
            time.sleep(outage_s)
            chain.serve.stop(signal.SIGKILL)
            chain.proxy.do(chain.proxy.proxy.heal)
            chain.restart(signal.SIGKILL)
            time.sleep(2.0)
        finally:
            load.stop()
        chain.settle(report, load, drain_s, started)
    return report


def _accepts_again(chain: Rig, report: DrillReport, after: str) -> None:
    """Wait (bounded) for a 202 once the fault is gone, note how long it took, let the load
    run on for 2 s."""
    healed = time.monotonic()
    wait_until(lambda: _posts_again(chain.serve.url), 30, f"202 {after}")
    report.notes.append(f"202 again {time.monotonic() - healed:.1f} s {after}")
    time.sleep(2.0)


def _posts_again(url: str) -> bool:
    body = detection_now(f"probe-{uuid.uuid4().hex[:12]}", "probe")
    try:
        answer = httpx.post(f"{url}/api/v1/detections", json=body, headers=ADMIN_HEADERS, timeout=5)
    except httpx.HTTPError:
        return False
    return answer.status_code == 202


def disk_full(workdir: Path, *, max_pages: int = 600, rate: float = 150) -> DrillReport:
    """A size-capped SQLite file fills under load: 503, never a 202 for something not stored;
    reads and delivery go on; with room again (a larger cap) it accepts again."""
    report = DrillReport(f"SQLite full ({max_pages} pages)", "sqlite", 1)
    started = time.monotonic()
    with rig(workdir, sqlite_url(workdir), COPBRIDGE_SQLITE_MAX_PAGES=str(max_pages)) as chain:
        load = Load(chain.serve.url, rate, batch_every=3).start()
        try:
            wait_until(lambda: load.statuses[503] >= 20, 90, "503 once the file is full")
            time.sleep(1.0)
        finally:
            load.stop()
        reads = httpx.get(
            f"{chain.serve.url}/api/v1/detections?limit=5", headers=ADMIN_HEADERS, timeout=5
        )
        if reads.status_code != 200:
            report.failures.append(f"reads while full answered {reads.status_code}")
        chain.restart(signal.SIGTERM, COPBRIDGE_SQLITE_MAX_PAGES=str(max_pages * 4))
        if not _posts_again(chain.serve.url):
            report.failures.append("no 202 after the cap was raised")
        chain.settle(report, load, 60, started)
    return report


def pg_disk_full(workdir: Path, *, size_mb: int = 12, rate: float = 150) -> DrillReport:
    """The disk under copbridge's PostgreSQL tables fills under load: 503 naming the cause,
    never a 202 for something not stored; reads go on; once the disk has room again, 202 by
    itself (no restart) and everything accepted is delivered."""
    report = DrillReport(f"PostgreSQL disk full ({size_mb} MB)", "postgresql", 1)
    started = time.monotonic()
    with pg_database_on_small_disk(size_mb) as (url, disk), rig(workdir, url) as chain:
        load = Load(chain.serve.url, rate, batch_every=3).start()
        try:
            wait_until(lambda: load.statuses[503] >= 20, 90, "503 once the disk is full")
            full = _refusal(chain.serve.url)
            if "No space left on device" not in full:
                report.failures.append(f"a refusal while full does not say why: {full[:200]}")
            reads = httpx.get(
                f"{chain.serve.url}/api/v1/detections?limit=5", headers=ADMIN_HEADERS, timeout=5
            )
            if reads.status_code != 200:
                report.failures.append(f"reads while full answered {reads.status_code}")
            disk.grow(size_mb * 8)
            _accepts_again(chain, report, "after the disk grew")
        finally:
            load.stop()
        chain.settle(report, load, 60, started)
    return report


def _refusal(url: str) -> str:
    """The body of a refused single detection (the load makes sure the disk stays full)."""
    body = detection_now(f"full-{uuid.uuid4().hex[:8]}", "drill-full")
    answer = httpx.post(f"{url}/api/v1/detections", json=body, headers=ADMIN_HEADERS, timeout=10)
    return f"{answer.status_code} {answer.text}"


PG_SILENCE_S = 6.0
"""The drills' silence limit for PostgreSQL statements (default 35 s; 6 s is the least allowed)."""


def pg_outage(workdir: Path, *, outage_s: float, rate: float = 60) -> DrillReport:
    """Every connection to copbridge's PostgreSQL database is cut and refused for ``outage_s``:
    503 meanwhile, 202 again by itself afterwards, nothing accepted lost or corrupted."""
    report = DrillReport(f"PostgreSQL cut {outage_s:g} s", "postgresql", 1)
    started = time.monotonic()
    with fresh_pg_database() as (url, name), rig(workdir, url) as chain:
        load = Load(chain.serve.url, rate).start()
        try:
            time.sleep(2.0)
            pg_lock_out(name, locked=True)
            before = load.statuses[503]
            time.sleep(outage_s)
            during = load.statuses[503] - before
            pg_lock_out(name, locked=False)
            _accepts_again(chain, report, "after the cut ended")
        finally:
            load.stop()
        if during == 0:
            report.failures.append("no 503 while PostgreSQL refused connections")
        chain.settle(report, load, 60, started)
    return report


def pg_silent(workdir: Path, *, outage_s: float, rate: float = 60) -> DrillReport:
    """The path to PostgreSQL goes silent (black hole: no answer, no FIN, no RST) for
    ``outage_s``: answers stay bounded (503 within the silence limit), 202 again by itself once
    the path heals, nothing accepted lost or corrupted."""
    report = DrillReport(f"PostgreSQL silent {outage_s:g} s", "postgresql", 1)
    started = time.monotonic()
    with fresh_pg_database() as (direct, _):
        pg_path = ProxyThread(5432)
        try:
            url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{pg_path.port}")
            with rig(workdir, url, COPBRIDGE_PG_SILENCE_LIMIT_S=str(PG_SILENCE_S)) as chain:
                load = Load(chain.serve.url, rate).start()
                try:
                    time.sleep(2.0)
                    before = load.statuses[503]
                    pg_path.do(pg_path.proxy.black_hole)
                    time.sleep(outage_s)
                    pg_path.do(pg_path.proxy.heal)
                    back = time.monotonic()
                    wait_until(lambda: _posts_again(chain.serve.url), 30, "202 after the heal")
                    during = load.statuses[503] - before  # answers come up to a limit late
                    report.notes.append(
                        f"202 again {time.monotonic() - back:.1f} s after the path healed"
                    )
                    time.sleep(2.0)
                finally:
                    load.stop()
                if during == 0:
                    report.failures.append("no 503 while PostgreSQL was silent")
                report.notes.append(f"slowest answer {load.slowest_s:.1f} s")
                # A cut after the silence limit, then at most one connect timeout (5 s) more.
                if load.slowest_s > PG_SILENCE_S + 5 + 2:
                    report.failures.append(f"an answer took {load.slowest_s:.1f} s")
                if load.errors:  # the load's client gives up after 10 s
                    report.failures.append(f"{load.errors} requests got no answer in 10 s")
                chain.settle(report, load, 60, started)
        finally:
            pg_path.close()
    return report
