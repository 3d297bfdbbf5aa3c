"""Detections read, validated, located and turned into CoT in helper processes.

Why: the event loop is the bottleneck of ingest, and reading, validating and preparing a
detection (`Pipeline.prepare`) was ~40 % of its CPU per single detection (py-spy on `serve`
under load). A helper (one for single detections, one for batches) does that part on the other
core while the loop authenticates, stores and answers. The store, images, idempotency and the
answer stay where they were: the helper only computes. Anything it does not take (an inline
image, an error of its own, a helper that is down) is prepared in the serving process exactly
as before, so an answer never depends on it.

Frames on the pipes: 4-byte big-endian length, then a pickle. Both ends are our own code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copyreg
import dataclasses
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import ValidationError

from copbridge.config import Settings
from copbridge.logs import get_logger
from copbridge.metrics import (
    GEOLOCATION_SECONDS,
    PREPARE_HELPER_RESTARTS,
    PREPARE_HELPER_UP,
    PREPARED_HERE,
)
from copbridge.model import Detection, errors_detail, field_errors
from copbridge.pipeline import Pipeline, Prepared, Rejection
from copbridge.store import DetectionRecord, ImageBlob, QueuedEvent

if TYPE_CHECKING:
    from copbridge.api.detections import SortedBatch

_log = get_logger("copbridge.prepare")
_LENGTH = struct.Struct(">I")
_START_TIMEOUT_S = 60.0
_RESTART_AFTER_S = (1.0, 60.0)
"""The first wait before starting a helper again, and the longest (it doubles each time)."""
_ANSWER_TIMEOUT_S = {"single": 10.0, "batch": 60.0}
"""A helper that has not answered a body in this long is taken as hung: it is stopped, and
serve prepares what waited for it."""
_MAX_FRAME = 256 * 1024 * 1024
_STREAM_EVERY_S = 0.0003


class InvalidFields(Exception):
    """The helper's contract refusal: the same field errors ``field_errors`` gives here."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(errors_detail(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class _Job:
    body: bytes
    actor: str | None
    batch: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What the helper made of one body: ``prepared`` (``batch`` for a batch), or ``errors`` /
    ``rejection``, or none of them (the serving process prepares it itself); ``locate_s``, the
    geolocations' durations, for the metrics."""

    prepared: Prepared | None = None
    errors: list[dict[str, str]] | None = None
    rejection: tuple[str, str, str, str | None] | None = None
    batch: SortedBatch | None = None
    locate_s: tuple[float, ...] = ()

    @property
    def taken(self) -> bool:
        """False when the serving process has to prepare the body itself."""
        return any(x is not None for x in (self.prepared, self.batch, self.errors, self.rejection))


def _by_fields(cls: type[Any]) -> None:
    """Pickle ``cls`` as its constructor and field values: the dataclass default for slotted
    classes runs ``fields()`` and a Python loop per object on both ends (a tenth of a helper's
    time on a batch, measured with py-spy)."""
    names = tuple(field.name for field in dataclasses.fields(cls))

    def reduce(obj: Any) -> tuple[type[Any], tuple[Any, ...]]:
        return cls, tuple([getattr(obj, name) for name in names])

    copyreg.pickle(cls, reduce)


for _cls in (Prepared, DetectionRecord, QueuedEvent, ImageBlob, _Job, _Outcome):
    _by_fields(_cls)


#: Images are verified and kept by the serving process, so a body that may hold one is not sent
#: to a helper only to be parsed there, declined and parsed again here. A memchr-fast scan; a
#: false hit ("image" as some text) is only prepared here, and an escaped key the scan misses
#: is declined by the helper as before.
_MAY_HOLD_IMAGE = b'"image"'


# -- the serving process's side ---------------------------------------------------------------


#: How much the batch helper lowers its CPU priority (``nice``): when the cores are short, a
#: live single detection's helper and the event loop go first, and a bulk upload takes what is
#: left. Alone on the machine it runs as fast as before (nice only weighs contended time).
BATCH_NICENESS = 10


class PrepareProcess:
    """The helper process and the requests waiting for it; one per serving process."""

    def __init__(self, settings: Settings, name: str, *, niceness: int = 0) -> None:
        self.name = name
        self.niceness = niceness
        self._settings = settings
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._respawning: asyncio.Task[None] | None = None
        self._queued: list[tuple[_Job, asyncio.Future[_Outcome]]] = []
        # Each request's future and the loop time by which the helper must have answered it.
        self._in_flight: collections.deque[tuple[asyncio.Future[_Outcome], float]] = (
            collections.deque()
        )
        self._watchdog: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._closed = False
        self._restart_after_s = _RESTART_AFTER_S[0]
        self._answer_timeout_s = _ANSWER_TIMEOUT_S.get(name, max(_ANSWER_TIMEOUT_S.values()))
        PREPARE_HELPER_UP.labels(name).set(0)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._reader is not None and not self._reader.done()

    async def start(self) -> None:
        """Start the helper and wait until it is ready; on failure the service runs without."""
        try:
            await asyncio.wait_for(self._spawn(), _START_TIMEOUT_S)
        except Exception as exc:  # whatever it was, serve starts and prepares in process
            _log.warning(
                "prepare helper did not start; preparing in process",
                helper=self.name,
                error=str(exc),
            )
            await self._stop_process()
            self._schedule_restart()

    async def close(self) -> None:
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await self._stop_process()
        PREPARE_HELPER_UP.labels(self.name).set(0)

    async def prepare(self, body: bytes, actor: str | None) -> Prepared | None:
        """The prepared detection; None when this process has to prepare it. Raises
        :class:`InvalidFields` or :class:`Rejection` as preparing here would."""
        outcome = await self._submit(_Job(body, actor))
        if outcome.errors is not None:
            raise InvalidFields(outcome.errors)
        if outcome.rejection is not None:
            field, message, reason, subject = outcome.rejection
            raise Rejection(field, message, reason=reason, subject=subject)
        return outcome.prepared

    async def prepare_batch(self, body: bytes, actor: str | None) -> SortedBatch | None:
        """A batch body's refusals and prepared items (``detections.post_batch``); None when
        this process has to prepare it."""
        return (await self._submit(_Job(body, actor, batch=True))).batch

    async def _submit(self, job: _Job) -> _Outcome:
        if not self.running:
            PREPARED_HERE.labels(self.name, "helper down").inc()
            return _Outcome()
        if _MAY_HOLD_IMAGE in job.body:
            PREPARED_HERE.labels(self.name, "image").inc()
            return _Outcome()
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._queued.append((job, future))
        if not self._flush_scheduled:
            # Every request that reaches this point in the same turn of the loop shares a frame.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        outcome = await future  # a hung helper is caught by _watch, once per frame
        if not outcome.taken:
            PREPARED_HERE.labels(self.name, "not taken").inc()
        for seconds in outcome.locate_s:
            GEOLOCATION_SECONDS.observe(seconds)
        return outcome

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        proc = self._proc
        if not queued:
            return
        if proc is None or proc.stdin is None or not self.running:
            _settle_here([f for _, f in queued])
            return
        frame = pickle.dumps([job for job, _ in queued], protocol=pickle.HIGHEST_PROTOCOL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._answer_timeout_s
        self._in_flight.extend((f, deadline) for _, f in queued)
        proc.stdin.write(_LENGTH.pack(len(frame)) + frame)
        watchdog = self._watchdog
        if watchdog is None or watchdog.when() > deadline:  # (the timeout may have shortened)
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        """The oldest request's deadline has come: if it is still unanswered the helper hung, so
        it is killed and everything in flight is prepared here; if not, wait for the next one.
        One timer per helper, not one per request (a timer and two futures each, on the hot
        path)."""
        self._watchdog = None
        # The first request still waiting (one its caller cancelled is done, and skipped).
        deadline = next((d for f, d in self._in_flight if not f.done()), None)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        _log.warning("prepare helper hung; stopping it", helper=self.name)
        self._kill()  # its reader then ends, and takes the entries off in order
        waiting = [f for f, _ in self._in_flight]
        _settle_here(waiting)  # nobody is kept waiting for the reader to notice

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "copbridge.api.prepare_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_MAX_FRAME,
            env=_helper_environment(),
        )
        self._proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        # The helper reads and prepares detections; it is handed no credential it could leak
        # (nor the destinations: it stores nothing, and their URLs may hold a password).
        setup = pickle.dumps(
            (self._settings.without_secrets(), self.niceness), pickle.HIGHEST_PROTOCOL
        )
        proc.stdin.write(_LENGTH.pack(len(setup)) + setup)
        await proc.stdin.drain()
        if pickle.loads(await _read_frame(proc.stdout)) != "ready":
            raise EOFError("the prepare helper answered its setup wrongly")
        self._reader = asyncio.get_running_loop().create_task(self._read(proc))
        PREPARE_HELPER_UP.labels(self.name).set(1)
        _log.info("prepare helper started", helper=self.name, pid=proc.pid)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                # Outcomes come back in the order the jobs went, a few at a time.
                outcomes: list[_Outcome] = pickle.loads(await _read_frame(proc.stdout))
                self._restart_after_s = _RESTART_AFTER_S[0]  # it works: a later stop waits 1 s
                for outcome in outcomes:
                    future, _ = self._in_flight.popleft()
                    if not future.done():
                        future.set_result(outcome)
        except Exception as exc:  # whatever broke, the requests are answered here
            if not self._closed:
                _log.warning(
                    "prepare helper stopped; preparing in process",
                    helper=self.name,
                    error=repr(exc),
                )
        finally:
            waiting = [f for f, _ in self._in_flight]
            self._in_flight.clear()
            _settle_here(waiting)
            if not self._closed:
                self._schedule_restart()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def _schedule_restart(self) -> None:
        PREPARE_HELPER_UP.labels(self.name).set(0)
        if self._closed or self._restart is not None:
            return
        loop = asyncio.get_running_loop()
        wait, self._restart_after_s = (
            self._restart_after_s,
            min(self._restart_after_s * 2, _RESTART_AFTER_S[1]),
        )

        def restart() -> None:
            self._restart = None
            PREPARE_HELPER_RESTARTS.labels(self.name).inc()
            self._respawning = loop.create_task(self._respawn())

        self._restart = loop.call_later(wait, restart)

    async def _respawn(self) -> None:
        await self._stop_process()
        await self.start()

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the helper's read ends: it exits
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._reader = None


def _settle_here(futures: list[asyncio.Future[_Outcome]]) -> None:
    """Answer waiting requests with "prepare it yourself"."""
    for future in futures:
        if not future.done():
            future.set_result(_Outcome())


async def _read_frame(stream: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    if length > _MAX_FRAME:
        raise EOFError(f"frame of {length} bytes from the prepare helper")
    return await stream.readexactly(length)


# -- the helper process -------------------------------------------------------------------------


def _helper_environment() -> dict[str, str]:
    """The serving process's environment without its settings (``COPBRIDGE_*``) and libpq's
    (``PG*``, ``PGPASSWORD`` among them): the helper gets its settings, secrets left out, over
    its pipe."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COPBRIDGE_", "PG"))}


def _read_blocking(stream: BinaryIO) -> bytes | None:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    return data if len(data) == length else None


def _write_blocking(stream: BinaryIO, value: Any) -> None:
    frame = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(frame)) + frame)
    stream.flush()


def prepare_body(pipeline: Pipeline, job: _Job, timer: Callable[[], tuple[float, ...]]) -> _Outcome:
    """One body as the ingest route would prepare it (``api.detections``), or an empty
    outcome for what the serving process must do itself."""
    from copbridge.api.detections import json_object, prepare_batch_without_images

    if job.batch:
        batch = prepare_batch_without_images(pipeline, job.body, job.actor)
        return _Outcome(batch=batch, locate_s=timer())
    try:
        raw = json_object(job.body)
        detection = Detection.model_validate(raw)
        if detection.image is not None:
            return _Outcome()  # images are verified and kept by the serving process
        prepared = pipeline.prepare(detection, raw=raw, actor=job.actor, now=datetime.now(UTC))
    except ValidationError as exc:
        return _Outcome(errors=field_errors(exc.errors()))
    except Rejection as exc:
        return _Outcome(
            rejection=(exc.field, exc.message, exc.reason, exc.subject), locate_s=timer()
        )
    return _Outcome(prepared=prepared, locate_s=timer())


def main() -> None:
    """Serve frames of jobs from stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must never corrupt a frame
    # Ctrl-C in a terminal reaches the whole process group; serve decides when this one ends
    # (it closes the pipe), so the helper never dies mid-frame with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    setup = _read_blocking(stdin)
    if setup is None:
        return
    settings, niceness = pickle.loads(setup)
    if niceness:
        os.nice(niceness)
    from copbridge.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    pipeline = Pipeline(settings, None, ())
    import copbridge.api.detections  # noqa: F401  # imported before the first body, not during it

    last: list[float] = []

    def observe(seconds: float) -> None:
        last.append(seconds)

    def timer() -> tuple[float, ...]:
        taken = tuple(last)
        last.clear()
        return taken

    pipeline.observe_geolocation = observe
    from copbridge.runtime import tune_garbage_collector

    tune_garbage_collector()  # as serve does: no generation-2 scans of every parsed batch
    _write_blocking(out, "ready")
    while True:
        frame = _read_blocking(stdin)
        if frame is None:
            return
        jobs: list[_Job] = pickle.loads(frame)
        outcomes: list[_Outcome] = []
        sent = time.perf_counter()
        for job in jobs:
            try:
                outcomes.append(prepare_body(pipeline, job, timer))
            except Exception as exc:  # the serving process prepares it and answers for it
                _log.warning("prepare helper failed on a body", error=repr(exc))
                timer()
                outcomes.append(_Outcome())
            if time.perf_counter() - sent >= _STREAM_EVERY_S:
                # The first of a long frame go home early: their commit overlaps the rest.
                _write_blocking(out, outcomes)
                outcomes = []
                sent = time.perf_counter()
        if outcomes:
            _write_blocking(out, outcomes)


if __name__ == "__main__":
    # Run under the module's real name, so that what it pickles unpickles on the other side.
    from copbridge.api.prepare_process import main as serve_frames

    serve_frames()
