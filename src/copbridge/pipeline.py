"""The whole story of a detection, top to bottom: validate → locate → build CoT → store → answer.

Pure apart from the store port: geometry comes from ``geo``, events from ``cot``; the only I/O is
the group-committed write that makes the detection, its outbox rows and audit records durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from uuid6 import uuid7

from copbridge import cot, geo, jsontext
from copbridge.config import Settings
from copbridge.logs import get_logger
from copbridge.metrics import (
    DETECTIONS_ACCEPTED,
    DETECTIONS_DUPLICATE,
    DETECTIONS_REJECTED,
    DETECTIONS_STALE_ON_ARRIVAL,
    GEOLOCATION_SECONDS,
)
from copbridge.model import Detection, Distortion, Uncertainty
from copbridge.store import (
    Acceptance,
    AuditEntry,
    DetectionRecord,
    ImageBlob,
    QueuedEvent,
    SqlStore,
    StoreUnavailable,
)

PLATFORM_STALE_FACTOR = 3.0
"""A platform marker stays fresh for three emission intervals: one lost update never blinks it."""


class PipelineSettingError(ValueError):
    """A setting the pipeline cannot be built with (a terrain file that does not open, a stale
    time that is not positive): one line naming the setting, not a traceback at start-up."""


@contextlib.contextmanager
def _setting(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        variable = f"COPBRIDGE_{name.upper()}"
        raise PipelineSettingError(f"invalid setting {name} ({variable}): {exc}") from exc


class Rejection(Exception):
    """A detection the contract or the geometry refuses; ``field`` names what is wrong."""

    def __init__(
        self, field: str, message: str, reason: str = "invalid", subject: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason
        self.subject = subject

    def as_error(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class Located:
    fix: geo.Fix
    point: geo.BoxPoint
    pose: geo.Pose
    intrinsics: geo.Intrinsics


@dataclass(frozen=True, slots=True)
class _Ray:
    """One detection's ray inputs: camera, pose, pixel and which ground it should meet."""

    index: int
    intrinsics: geo.Intrinsics
    pose: geo.Pose
    u: float
    v: float
    point: geo.BoxPoint
    agl: float | None
    absolute: bool
    """False when the platform's HAE rests on an assumed 0 HAE ground (AGL, no terrain)."""
    ground: geo.GroundSource
    ground_height: float | None
    ground_msl: bool


@dataclass(frozen=True, slots=True)
class Prepared:
    """A detection located and turned into events, ready for the group commit."""

    record: DetectionRecord
    answer: dict[str, Any]
    """The 202 answer's JSON (the shape of :class:`copbridge.model.Answer`)."""


class Pipeline:
    """Everything one copbridge process needs to turn a detection into stored CoT events."""

    def __init__(
        self,
        settings: Settings,
        store: SqlStore | None = None,
        destinations: Sequence[str] = (),
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._stale_logged_us = -(1 << 62)  # when a stale-on-arrival detection was last logged
        self._refused_logged = float("-inf")  # when the store's refusal was last logged
        self._store = store
        self._on_stored = on_stored
        self.destinations = tuple(destinations)
        self.geoid = geo.load_egm96()
        with _setting("terrain"):
            self.terrain = open_terrain(settings.terrain) if settings.terrain else None
        with _setting("cot_types"):
            self.mapping = cot.TypeMapping.from_config(settings.cot_types)
        with _setting("stale_seconds_by_label"):
            self.stale = cot.StalePolicy(
                default_seconds=settings.stale_seconds,
                per_label=dict(settings.stale_seconds_by_label),
            )
        self.ground_labels = frozenset(
            cot.normalise_label(label) for label in settings.ground_labels
        )
        self.sigmas = geo.InputSigmas()
        self._platform_schedule = cot.PlatformSchedule(settings.platform_interval_s)
        #: Where each geolocation's duration goes (a helper process sends it home instead).
        self.observe_geolocation: Callable[[float], None] = GEOLOCATION_SECONDS.observe

    @property
    def store(self) -> SqlStore:
        if self._store is None:
            raise RuntimeError("this pipeline is offline (copbridge geolocate): it has no store")
        return self._store

    # -- the story ------------------------------------------------------------------------------

    def prepare(
        self,
        detection: Detection,
        *,
        raw: dict[str, Any] | None = None,
        image: ImageBlob | None = None,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> Prepared:
        """Locate the detection and build its events; raise :class:`Rejection` when it can't be.

        ``raw`` is the JSON object the client sent, when the caller has it: the stored copy is
        taken from it, which is cheaper than dumping the model again. (The idempotency hash is
        not: it comes from the validated model, see :func:`body_hash`.)
        """
        now = now or datetime.now(UTC)
        self._check_time(detection, now)
        located = self.locate(detection)
        return self._prepared(detection, located, raw, image, actor, now)

    def prepare_many(
        self,
        items: Sequence[tuple[Detection, dict[str, Any] | None, ImageBlob | None]],
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> list[Prepared | Rejection]:
        """:meth:`prepare` for a batch: every ray located in one vectorised pass (same answers
        as one by one, tested); an item that cannot be located gets its Rejection in place."""
        now = now or datetime.now(UTC)
        located = self.locate_many([detection for detection, _, _ in items])
        out: list[Prepared | Rejection] = []
        for (detection, raw, image), where in zip(items, located, strict=True):
            try:
                self._check_time(detection, now)
            except Rejection as exc:
                out.append(exc)
                continue
            if isinstance(where, Rejection):
                out.append(where)
            else:
                out.append(self._prepared(detection, where, raw, image, actor, now))
        return out

    def _check_time(self, detection: Detection, now: datetime) -> None:
        """A frame cannot be taken in the future: past the allowed clock skew it is refused.
        Delivery keeps the newest frame of a track, so one stamped an hour ahead would hide
        every real frame of that track for an hour."""
        ahead = (detection.time - now).total_seconds()
        if ahead > self.settings.max_future_s:
            raise Rejection(
                "time",
                f"time: {ahead:.0f} s ahead of this server's clock (at most "
                f"{self.settings.max_future_s:g} s allowed: COPBRIDGE_MAX_FUTURE_S)",
                reason="contract",
                subject=detection.id,
            )

    def _prepared(
        self,
        detection: Detection,
        located: Located,
        raw: dict[str, Any] | None,
        image: ImageBlob | None,
        actor: str | None,
        now: datetime,
    ) -> Prepared:
        detection_id = detection.id or str(uuid7())
        fix = located.fix
        event = cot.build_detection_event(
            now=now,
            detection_id=detection_id,
            detection_time=detection.time,
            sensor_id=detection.sensor.id,
            label=detection.label,
            confidence=detection.confidence,
            lat=fix.lat,
            lon=fix.lon,
            hae=fix.hae,
            ce90=fix.ce90,
            le90=fix.le90,
            sensor_callsign=detection.sensor.callsign,
            model=detection.sensor.model,
            track_id=detection.track_id,
            affiliation=detection.affiliation,
            mapping=self.mapping,
            stale_policy=self.stale,
            uid_prefix=self.settings.uid_prefix,
            parent_type=self._platform_type(detection),
            image_url=self._image_url(detection_id) if image else None,
            image_mime=image.media_type if image else None,
            alt_source=_ALT_SOURCE[fix.ground] if fix.height_absolute else cot.SOURCE_UNKNOWN,
        )
        xml = cot.to_xml(event)
        # The answer's JSON form, built directly (the Answer model documents it): stored as is,
        # served as is, and equal to Answer(...).model_dump(mode="json") (tested).
        answer: dict[str, Any] = {
            "id": detection_id,
            "uid": event.uid,
            "status": "queued",
            "location": {
                "lat": round(fix.lat, 7),
                "lon": round(fix.lon, 7),
                "hae": round(fix.hae, 2),
                "ce90": round(fix.ce90, 2),
                "le90": round(fix.le90, 2),
                "slant_range": round(fix.slant_range, 2),
                "ground": fix.ground,
                "point": located.point,
            },
            "cot_type": event.type,
            "stale": cot.format_time(event.stale),
            "duplicate": False,
        }
        if event.stale <= now:
            answer["warnings"] = [_stale_warning(answer["stale"], now)]
        # The store decides for every replica whether the platform event is due; this process
        # only skips building one it emitted itself within the interval.
        # None for a detection stale on arrival (an offline detector's old buffer): its pose
        # is no more current than it is. The store never emits a pose older than the last.
        pose_time = min(detection.time, now)
        platform = (
            self._platform_event(detection, located, now, pose_time)
            if event.stale > now
            and self._platform_schedule.claim(detection.sensor.id, now, pose_time)
            else None
        )
        hashed = body_hashes(detection, image)
        record = DetectionRecord(
            id=detection_id,
            body_hash=hashed[0],
            earlier_body_hashes=hashed[1],
            time_us=_us(detection.time),
            received_us=_us(now),
            sensor_id=detection.sensor.id,
            label=detection.label,
            detection_json=jsontext.dumps_text(
                _stored_copy(raw, detection.time)
                if raw is not None
                else detection.model_dump(mode="json", exclude={"image"})
            ),
            answer=answer,
            cot_xml=xml,
            events=(
                QueuedEvent(
                    uid=event.uid,
                    cot_type=event.type,
                    kind="detection",
                    time_us=_us(event.start),
                    stale_us=_us(event.stale),
                    payload=xml,
                ),
            ),
            platform_event=platform,
            platform_interval_us=int(self.settings.platform_interval_s * 1_000_000),
            image_sha256=image.sha256 if image else None,
            actor=actor,
            image=image,
        )
        return Prepared(record, answer)

    async def commit(self, prepared: Sequence[Prepared]) -> list[tuple[Acceptance, dict[str, Any]]]:
        """Store prepared detections durably (one group commit) and give each its answer."""
        future = self.store.submit_detections([p.record for p in prepared], self.destinations)
        try:
            results = await asyncio.wrap_future(future)
        except StoreUnavailable as exc:
            self._not_stored(len(prepared), exc)
            raise
        if self._on_stored is not None and any(r.outcome == "accepted" for r in results):
            self._on_stored()
        answers = []
        for item, result in zip(prepared, results, strict=True):
            if result.outcome == "accepted":
                DETECTIONS_ACCEPTED.inc()
                if item.record.events[0].stale_us <= item.record.received_us:
                    self._stale_on_arrival(item.record)
                answers.append((result, item.answer))
            else:
                if result.outcome == "duplicate":
                    DETECTIONS_DUPLICATE.inc()
                else:
                    DETECTIONS_REJECTED.labels("conflict").inc()
                answers.append((result, stored_answer(result.answer, duplicate=True)))
        return answers

    def _not_stored(self, count: int, exc: StoreUnavailable) -> None:
        """Counted by reason, and logged at most every ``_STALE_LOG_EVERY_S``: a store that
        refuses writes (a full disk, a read-only file) was seen only as 503s in the request
        log, at level info."""
        DETECTIONS_REJECTED.labels("store_unavailable").inc(count)
        now = time.monotonic()
        if now - self._refused_logged >= _STALE_LOG_EVERY_S:
            self._refused_logged = now
            _log.warning("the store refused detections (answered 503)", count=count, error=str(exc))

    def _stale_on_arrival(self, record: DetectionRecord) -> None:
        """Counted, and logged at most every ``_STALE_LOG_EVERY_S``: the contract lets it expire
        unsent, but a detector whose clock is behind would otherwise put nothing on any map
        without anyone being told."""
        DETECTIONS_STALE_ON_ARRIVAL.inc()
        now_us = record.received_us
        if now_us - self._stale_logged_us >= _STALE_LOG_EVERY_S * 1_000_000:
            self._stale_logged_us = now_us
            _log.warning(
                "stored a detection already stale: it will expire unsent (check the detector's "
                "clock)",
                detection=record.id,
                sensor=record.sensor_id,
                age_s=round((now_us - record.time_us) / 1e6, 1),
                stale_since_s=round((now_us - record.events[0].stale_us) / 1e6, 1),
            )

    def reject(
        self, reason: str, subject: str | None, error: dict[str, Any], actor: str | None
    ) -> None:
        """Count and audit a refused detection. The audit write is not awaited: a flood of bad
        input must not hold request slots, and nothing of the detection is stored anyway."""
        self.reject_many([(reason, subject, error)], actor)

    def reject_many(
        self, refused: Sequence[tuple[str, str | None, dict[str, Any]]], actor: str | None
    ) -> None:
        """:meth:`reject` for several detections (a batch's refused items), in one write."""
        for reason, _, _ in refused:
            DETECTIONS_REJECTED.labels(reason).inc()
        self.store.submit_audit(
            [
                AuditEntry(
                    kind="detection.rejected",
                    subject=subject,
                    actor=actor,
                    data={"reason": reason, **_bounded(error)},
                )
                for reason, subject, error in refused
            ]
        )

    # -- rooms the story walks through ------------------------------------------------------------

    def locate(self, detection: Detection) -> Located:
        started = time.perf_counter()
        try:
            ray = self._ray_inputs(detection)
            ground = detection.ground
            fix = geo.locate_pixel(
                ray.intrinsics,
                ray.pose,
                ray.u,
                ray.v,
                ground_height=None if ground is None else ground.height,
                ground_height_ref="hae" if ground is None else ground.height_ref,
                terrain=self.terrain,
                geoid=self.geoid,
                platform_agl=ray.agl,
                platform_absolute=ray.absolute,
                sigmas=self._sigmas(detection),
            )
        except geo.GeolocationError as exc:
            raise _geometry_rejection(exc, detection) from None
        finally:
            self.observe_geolocation(time.perf_counter() - started)
        return Located(fix, ray.point, ray.pose, ray.intrinsics)

    def locate_many(self, detections: Sequence[Detection]) -> list[Located | Rejection]:
        """Locate a batch: rays grouped by their input sigmas, each group in one vectorised
        ``geo.locate`` call, the ground chosen in the spec's order exactly as :meth:`locate`
        does. Terrain is marched ray by ray, so with a terrain model this is :meth:`locate`
        in a loop."""
        started = time.perf_counter()
        out: list[Located | Rejection | None] = [None] * len(detections)
        if self.terrain is not None:
            for i, detection in enumerate(detections):
                try:
                    out[i] = self.locate(detection)
                except Rejection as exc:
                    out[i] = exc
            return [r for r in out if r is not None]
        groups: dict[geo.InputSigmas, list[_Ray]] = {}
        for i, detection in enumerate(detections):
            try:
                ray = self._ray_inputs(detection, index=i)
                ray.pose.validate()  # as locate_pixel does; a refusal is this detection's alone
            except geo.GeolocationError as exc:
                out[i] = _geometry_rejection(exc, detection)
                continue
            groups.setdefault(self._sigmas(detection), []).append(ray)
        for sigmas, rays in groups.items():
            for ray, where in zip(rays, self._locate_group(rays, sigmas), strict=True):
                out[ray.index] = (
                    _geometry_rejection(where, detections[ray.index])
                    if isinstance(where, geo.GeolocationError)
                    else where
                )
        if detections:
            share = (time.perf_counter() - started) / len(detections)
            for _ in detections:
                self.observe_geolocation(share)
        return [r for r in out if r is not None]

    def _ray_inputs(self, detection: Detection, index: int = 0) -> _Ray:
        cam, box, plat, gimbal = (
            detection.camera,
            detection.bbox,
            detection.platform,
            detection.gimbal,
        )
        dist = cam.distortion or _NO_DISTORTION
        intrinsics = _intrinsics(
            cam.width,
            cam.height,
            cam.hfov,
            cam.vfov,
            cam.fx,
            cam.fy,
            cam.cx,
            cam.cy,
            dist.k1,
            dist.k2,
            dist.p1,
            dist.p2,
            dist.k3,
        )
        ground = detection.ground
        height = geo.resolve_platform_hae(
            plat.alt,
            plat.alt_ref,
            plat.lat,
            plat.lon,
            geoid=self.geoid,
            terrain=self.terrain,
            ground_height=None if ground is None else ground.height,
            ground_height_ref="hae" if ground is None else ground.height_ref,
        )
        pose = geo.Pose(
            lat=plat.lat,
            lon=plat.lon,
            hae=height.hae,
            heading=plat.heading,
            pitch=plat.pitch,
            roll=plat.roll,
            gimbal_azimuth=gimbal.azimuth,
            gimbal_elevation=gimbal.elevation,
            gimbal_roll=gimbal.roll,
        )
        u, v, point = geo.box_point(
            box.x,
            box.y,
            box.width,
            box.height,
            cot.normalise_label(detection.label) in self.ground_labels,
        )
        if cam.pixel_centres == "half-integer":
            u, v = u + 0.5, v + 0.5
        if ground is not None:
            kind: geo.GroundSource = "request"
        elif height.agl is not None:
            kind = "agl"
        else:
            kind = "ellipsoid"
        return _Ray(
            index=index,
            intrinsics=intrinsics,
            pose=pose,
            u=u,
            v=v,
            point=point,
            agl=height.agl,
            absolute=height.absolute,
            ground=kind,
            ground_height=None if ground is None else ground.height,
            ground_msl=ground is not None and ground.height_ref == "msl",
        )

    def _locate_group(
        self, rays: list[_Ray], sigmas: geo.InputSigmas
    ) -> list[Located | geo.GeolocationError]:
        """One vectorised pass for rays sharing ``sigmas`` (and the same spec ground rules as
        ``geo.locate_pixel``: a request height in MSL is refined once at the located point)."""
        cams = geo.CameraArrays.from_intrinsics([r.intrinsics for r in rays])
        poses = geo.PoseArrays.from_poses([r.pose for r in rays])
        u = np.array([r.u for r in rays])
        v = np.array([r.v for r in rays])
        ground = np.array(
            [
                r.ground_height
                if r.ground_height is not None
                else (r.pose.hae - r.agl if r.agl is not None else 0.0)
                for r in rays
            ]
        )
        msl = np.array([r.ground_msl for r in rays], dtype=np.bool_)
        if msl.any():
            ground[msl] += self.geoid.undulation(poses.lat[msl], poses.lon[msl])
            first = geo.locate(
                cams, poses, u, v, ground, sigmas=sigmas, with_uncertainty=False, sampling=False
            )
            ok = msl & first.ok
            refined = np.array([r.ground_height or 0.0 for r in rays])[ok]
            ground[ok] = refined + self.geoid.undulation(first.lat[ok], first.lon[ok])
        fixes = geo.locate(
            cams,
            poses,
            u,
            v,
            ground,
            sigmas=sigmas,
            ground_sigma_m=np.array([sigmas.ground_sigma_m(r.ground) for r in rays]),
            ground_follows_sensor=np.array([r.ground == "agl" for r in rays], dtype=np.float64),
        )
        out: list[Located | geo.GeolocationError] = []
        for j, ray in enumerate(rays):
            error = fixes.error(j)
            if error is not None:
                out.append(error)
                continue
            fix = geo.Fix(
                lat=float(fixes.lat[j]),
                lon=float(fixes.lon[j]),
                hae=float(fixes.hae[j]),
                ce90=float(fixes.ce90[j]),
                le90=float(fixes.le90[j]),
                slant_range=float(fixes.slant_range[j]),
                ground=ray.ground,
                sampled=bool(fixes.sampled[j]),
            )
            if ray.ground == "agl" and not ray.absolute:
                fix = geo.relative_height(fix)
            out.append(Located(fix, ray.point, ray.pose, ray.intrinsics))
        return out

    def _sigmas(self, detection: Detection) -> geo.InputSigmas:
        given = detection.uncertainty
        if given is None:
            return self.sigmas
        # An AGL altitude's stated error is the error of the AGL (see InputSigmas.agl_m).
        agl = detection.platform.alt_ref == "agl"
        return _sigmas_for(
            self.sigmas,
            given.horizontal_m,
            given.vertical_m,
            given.attitude_deg,
            given.focal_rel,
            given.ground_m,
            given.vertical_m if agl else None,
        )

    def _platform_type(self, detection: Detection) -> str:
        return cot.PLATFORM_TYPE_AIRBORNE if _airborne(detection) else cot.PLATFORM_TYPE_FIXED

    def _platform_event(
        self, detection: Detection, located: Located, now: datetime, pose_time: datetime
    ) -> QueuedEvent:
        """The sensor's own marker with its field of view, so ATAK draws the camera's cone."""
        intrinsics, pose = located.intrinsics, located.pose
        north, east, down = geo.ray_ned(intrinsics, pose, intrinsics.cx, intrinsics.cy)
        event = cot.build_platform_event(
            now=now,
            sensor_id=detection.sensor.id,
            lat=pose.lat,
            lon=pose.lon,
            hae=pose.hae,
            callsign=detection.sensor.callsign,
            airborne=_airborne(detection),
            uid_prefix=self.settings.uid_prefix,
            azimuth=math.degrees(math.atan2(east, north)) % 360.0,
            elevation=math.degrees(math.atan2(-down, math.hypot(north, east))),
            roll=detection.gimbal.roll,
            fov=_fov(intrinsics.width, intrinsics.fx),
            vfov=_fov(intrinsics.height, intrinsics.fy),
            range_m=_boresight_range(located),
            sensor_model=detection.sensor.model,
            stale_seconds=max(60.0, self.settings.platform_interval_s * PLATFORM_STALE_FACTOR),
            pose_time=pose_time,
        )
        payload = cot.to_xml(event)
        return QueuedEvent(
            uid=event.uid,
            cot_type=event.type,
            kind="platform",
            time_us=_us(event.start),
            stale_us=_us(event.stale),
            payload=payload,
        )

    def _image_url(self, detection_id: str) -> str:
        base = self.settings.public_url.rstrip("/")
        return f"{base}/api/v1/detections/{detection_id}/image"


_log = get_logger(__name__)
_STALE_LOG_EVERY_S = 10.0

_ALT_SOURCE = {
    "request": cot.SOURCE_USER,
    "terrain": "DTED",
    "agl": cot.SOURCE_CALCULATED,
    "ellipsoid": cot.SOURCE_UNKNOWN,
}


_NO_DISTORTION = Distortion()


@functools.lru_cache(maxsize=256)
def _intrinsics(
    width: int,
    height: int,
    hfov: float | None,
    vfov: float | None,
    fx: float | None,
    fy: float | None,
    cx: float | None,
    cy: float | None,
    k1: float,
    k2: float,
    p1: float,
    p2: float,
    k3: float,
) -> geo.Intrinsics:
    # A sensor sends the same camera over and over: derive (and check) its intrinsics once.
    return geo.Intrinsics.from_request(
        width,
        height,
        hfov=hfov,
        vfov=vfov,
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        k1=k1,
        k2=k2,
        p1=p1,
        p2=p2,
        k3=k3,
    )


def _boresight_range(located: Located) -> float:
    """How far the camera's cone reaches: the image centre's line of sight to the ground the
    detection was located on (the detection's own range if that line never meets it)."""
    intrinsics, pose = located.intrinsics, located.pose
    try:
        centre = geo.scalar.locate_scalar(
            intrinsics, pose, intrinsics.cx, intrinsics.cy, located.fix.hae, None, 0.0
        )
    except geo.GeolocationError:
        return located.fix.slant_range
    return centre.slant_range


def _geometry_rejection(exc: geo.GeolocationError, detection: Detection) -> Rejection:
    return Rejection(exc.field or "geometry", str(exc), reason="geometry", subject=detection.id)


def open_terrain(path: Path) -> geo.Terrain:
    """A directory holds SRTM ``.hgt`` tiles; a file is a GeoTIFF."""
    return geo.SrtmTiles(path) if path.is_dir() else geo.GeoTiffTerrain(path)


def body_hashes(detection: Detection, image: ImageBlob | None) -> tuple[str, tuple[str, ...]]:
    """Hash of what the detection means, for idempotency: same id + same meaning = a retry;
    and the hashes versions before 12-03 gave the same body (they kept ``"uncertainty": {}``
    apart from no uncertainty and all-zero distortion apart from none), so that a detection
    stored by them and retried now is still its duplicate.

    Taken from the validated model, not the text sent, so that a retry written by another
    JSON library (1920.0 for 1920, 0 for 0.0, +00:00 for Z, a default spelt out or left
    out, track 17 for "17") is a duplicate, not a 409. The image counts by its SHA-256,
    whether it came inline or as a multipart part."""
    body = detection.model_dump(mode="json", exclude={"image"})
    if image is not None:
        body["_image_sha256"] = image.sha256
    earlier: tuple[str, ...] = ()
    same = _without_spelt_defaults(detection, body)
    if same is not body:
        earlier = (hashlib.sha256(jsontext.dumps_sorted(body)).hexdigest(),)
    return hashlib.sha256(jsontext.dumps_sorted(same)).hexdigest(), earlier


def _without_spelt_defaults(detection: Detection, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (the detection dumped) with an all-default uncertainty or distortion taken as
    left out; the same object when there is none (compared on the model, the cheaper way)."""
    u, d = detection.uncertainty, detection.camera.distortion
    drop_uncertainty = u is not None and u.horizontal_m is None and u == _NO_UNCERTAINTY
    drop_distortion = d is not None and d.k1 == d.k2 == d.p1 == d.p2 == d.k3 == 0.0
    if not (drop_uncertainty or drop_distortion):
        return body
    same = dict(body)
    if drop_uncertainty:
        same["uncertainty"] = None
    if drop_distortion:
        same["camera"] = {**body["camera"], "distortion": None}
    return same


_NO_UNCERTAINTY = Uncertainty()


def _stored_copy(raw: dict[str, Any], time: datetime) -> dict[str, Any]:
    """The body as sent, without its image (kept apart) and with its time in UTC: the contract
    stores times in UTC, and a reader should not meet +09:00 or a lower-case "t" in them."""
    sent = raw.get("time")
    # Validated RFC 3339 text with an upper-case T and a Z is UTC as it stands (and checking
    # that costs a tenth of formatting the time anew, ~4 us here, for every detection).
    in_utc = isinstance(sent, str) and sent.endswith("Z") and sent[10:11] == "T"
    if "image" not in raw and in_utc:
        return raw
    kept = {k: v for k, v in raw.items() if k != "image"}
    if not in_utc:
        kept["time"] = utc_text(time)
    return kept


def _stale_warning(stale: str, now: datetime) -> str:
    return (
        f"stale on arrival: its stale time {stale} had passed when it was received "
        f"({cot.format_time(now)}); it is stored but will expire without being delivered "
        "(check the detector's clock)"
    )


def utc_text(time: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the millisecond (or microsecond when it has them)."""
    time = time.astimezone(UTC)
    us = time.microsecond
    fraction = "" if not us else f".{us // 1000:03d}" if not us % 1000 else f".{us:06d}"
    return f"{time:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def stored_answer(answer: dict[str, Any], *, duplicate: bool) -> dict[str, Any]:
    return {**answer, "duplicate": duplicate}


@functools.lru_cache(maxsize=256)
def _sigmas_for(
    base: geo.InputSigmas,
    horizontal_m: float | None,
    vertical_m: float | None,
    attitude_deg: float | None,
    focal_rel: float | None,
    ground_m: float | None,
    agl_m: float | None,
) -> geo.InputSigmas:
    # Sensors send the same few sigma sets over and over; build (and validate) each once.
    return geo.InputSigmas(
        horizontal_m=_pick(horizontal_m, base.horizontal_m),
        vertical_m=_pick(vertical_m, base.vertical_m),
        attitude_deg=_pick(attitude_deg, base.attitude_deg),
        focal_rel=_pick(focal_rel, base.focal_rel),
        ground_m=ground_m if ground_m is not None else base.ground_m,
        agl_m=agl_m,
    )


def _airborne(detection: Detection) -> bool:
    # A fixed camera gives its absolute angles on the gimbal with the platform angles at 0.
    plat = detection.platform
    return bool(plat.heading or plat.pitch or plat.roll) or plat.alt_ref == "agl"


def _fov(pixels: int, focal: float) -> float:
    return math.degrees(2 * math.atan(pixels / 2 / focal))


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


_AUDITED_TEXT = 300
_AUDITED_ERRORS = 5


def _bounded(error: dict[str, Any]) -> dict[str, Any]:
    """The reason as audited, not an attacker's megabyte (the trail keeps it for good): texts
    cut to a readable length, the first errors of a list with a count of the rest."""
    out: dict[str, Any] = {}
    for key, value in error.items():
        if isinstance(value, str):
            out[key] = value[:_AUDITED_TEXT]
        elif isinstance(value, list):
            out[key] = [_bounded(v) if isinstance(v, dict) else v for v in value[:_AUDITED_ERRORS]]
            if len(value) > _AUDITED_ERRORS:
                out[f"{key}_left_out"] = len(value) - _AUDITED_ERRORS
        elif isinstance(value, dict):
            out[key] = _bounded(value)
        else:
            out[key] = value
    return out
