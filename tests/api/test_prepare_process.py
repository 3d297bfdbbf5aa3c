"""Single detections prepared in the helper process are answered exactly as when the serving
process prepares them, and the service keeps answering when the helper dies."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from copbridge.api.app import create_app
from copbridge.api.prepare_process import BATCH_NICENESS, PrepareProcess
from copbridge.model import Detection
from copbridge.pipeline import Pipeline
from tests.api.conftest import app_settings, example
from tests.conftest import ADMIN_KEY


def _jpeg() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="JPEG")
    return base64.b64encode(out.getvalue()).decode()


def _bodies() -> list[tuple[str, bytes | dict[str, Any]]]:
    """What a mixed feed sends: good detections and every kind of refusal the route gives."""
    far_future = "2099-01-01T00:00:00Z"
    horizon = example(id="h-1", gimbal={"azimuth": 0.0, "elevation": 10.0, "roll": 0.0})
    return [
        ("the contract example", example(id="p-1")),
        ("another track", example(id="p-2", track_id="9", label="car")),
        ("no id: the server makes one", {k: v for k, v in example().items() if k != "id"}),
        ("a field out of range", example(id="p-3", confidence=1.5)),
        ("an unknown field", example(id="p-4", colour="red")),
        ("NaN", b'{"id": "p-5", "confidence": NaN}'),
        ("not JSON", b"{not json"),
        ("a list, not an object", b"[1, 2]"),
        (
            "a box outside the image",
            example(id="p-6", bbox={"x": 1900, "y": 10, "width": 60, "height": 60}),
        ),
        ("above the horizon", horizon),
        ("from the future", example(id="p-7", time=far_future)),
        ("an inline image", example(id="p-8", image={"media_type": "image/jpeg", "data": _jpeg()})),
        ("a retry of the first", example(id="p-1")),
        ("the first id with another body", example(id="p-1", confidence=0.5)),
    ]


def _post(client: TestClient, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    if isinstance(body, bytes):
        answer = client.post(
            "/api/v1/detections", content=body, headers={"Content-Type": "application/json"}
        )
    else:
        answer = client.post("/api/v1/detections", json=body)
    return answer.status_code, answer.json()


@pytest.fixture
def helped(tmp_path: Path, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(app_settings(tmp_path / "helped", prepare_process=True))
    with TestClient(app, headers=auth_headers) as client:
        helper: PrepareProcess = app.state.prepare_process
        assert helper.running
        yield client


def _calls_here(client: TestClient, method: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The first argument of every call the serving process's pipeline gets to ``method``."""
    pipeline: Pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
    original = getattr(pipeline, method)
    calls: list[Any] = []

    def counted(first: Any, **kwargs: Any) -> Any:
        calls.append(first)
        return original(first, **kwargs)

    monkeypatch.setattr(pipeline, method, counted)
    return calls


def _pid(client: TestClient, kind: str = "single") -> int:
    """The process id of the app's single (or batch) helper."""
    state = client.app.state  # type: ignore[attr-defined]
    helper: PrepareProcess = (
        state.prepare_process if kind == "single" else state.batch_prepare_process
    )
    proc = helper._proc
    assert proc is not None
    return proc.pid


def test_the_helper_answers_every_body_as_the_serving_process_does(
    helped: TestClient, tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    alone = create_app(app_settings(tmp_path / "alone", prepare_process=False))
    with TestClient(alone, headers=auth_headers) as reference:
        for what, body in _bodies():
            ours, theirs = _post(helped, body), _post(reference, body)
            if what.startswith("no id"):  # each store makes its own id (and so its own uid)
                assert ours[0] == theirs[0] == 202
                for key in ("id", "uid"):
                    ours[1].pop(key)
                    theirs[1].pop(key)
            assert _at_any_moment(ours) == _at_any_moment(theirs), what


def _at_any_moment(answer: Any) -> Any:
    """The answer with "N s ahead of this server's clock" made N-free, and the time a stale
    detection was received left out: the helper and this process each read the clock, and N,
    rounded to the second, may differ by one."""
    text = re.sub(r"time: \d+ s ahead", "time: N s ahead", json.dumps(answer))
    text = re.sub(r"when it was received \([^)]*\)", "when it was received (T)", text)
    return json.loads(text)


def test_the_helper_prepares_what_it_can_and_the_rest_is_prepared_here(
    helped: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = _calls_here(helped, "prepare", monkeypatch)
    assert _post(helped, example(id="q-1"))[0] == 202
    assert here == []  # the helper did it
    image = {"media_type": "image/jpeg", "data": _jpeg()}
    assert _post(helped, example(id="q-2", image=image))[0] == 202
    assert [d.id for d in here] == ["q-2"]  # images stay with the serving process
    stored = helped.get("/api/v1/detections/q-1").json()
    assert stored["answer"]["id"] == "q-1"
    assert b"<event" in helped.get("/api/v1/detections/q-1/cot").content


def test_a_body_with_an_image_is_not_sent_to_the_helper(helped: TestClient) -> None:
    before = _prepared_here(helped)
    image = {"media_type": "image/jpeg", "data": _jpeg()}
    assert _post(helped, example(id="im-1", image=image))[0] == 202
    with_image = [example(id="im-2"), example(id="im-3", image=image)]
    assert helped.post("/api/v1/detections/batch", json=with_image).status_code == 202
    # An escaped key the byte scan misses: the helper declines it, as it always did.
    escaped = json.dumps(example(id="im-4", image=image)).replace('"image"', '"im\\u0061ge"')
    headers = {"content-type": "application/json"}
    assert helped.post("/api/v1/detections", content=escaped, headers=headers).status_code == 202
    # "image" as text only: prepared here, answered as the helper would.
    assert _post(helped, example(id="im-5", label="image"))[0] == 202
    after = _prepared_here(helped)
    assert after[("single", "image")] - before[("single", "image")] == 2
    assert after[("batch", "image")] - before[("batch", "image")] == 1
    assert after[("single", "not taken")] - before[("single", "not taken")] == 1
    assert helped.get("/api/v1/detections/im-4/image").status_code == 200
    assert helped.get("/api/v1/detections/im-5").json()["detection"]["label"] == "image"


def _prepared_here(client: TestClient) -> Counter[tuple[str, str]]:
    return Counter(
        {
            (labels["helper"], labels["reason"]): int(value)
            for labels, value in _samples(client, "copbridge_prepared_in_serve_total")
        }
    )


def _samples(client: TestClient, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples named ``name`` in the app's /metrics page, read with the client's parser."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == name
    ]


def _batch_items() -> list[Any]:
    """A batch of everything `_bodies` holds that is an object (a list cannot be an item)."""
    items = [b for _, b in _bodies() if isinstance(b, dict) and "image" not in b]
    return [*items, "not an object", {"id": "b-x", "confidence": "high"}]


def test_the_batch_helper_answers_every_batch_as_the_serving_process_does(
    helped: TestClient, tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    alone = create_app(app_settings(tmp_path / "alone", prepare_process=False))
    image = example(id="b-img", image={"media_type": "image/jpeg", "data": _jpeg()})
    batches: list[tuple[str, Any]] = [
        ("a mixed batch", _batch_items()),
        ("the wrapper form", {"detections": _batch_items()[:3]}),
        ("a wrapper with an unknown field", {"detections": [], "extra": 1}),
        ("not a list", {"detections": 5}),
        ("with an image", [example(id="b-a"), image]),
        ("the same batch again", _batch_items()),
    ]
    with TestClient(alone, headers=auth_headers) as reference:
        for what, batch in batches:
            ours = helped.post("/api/v1/detections/batch", json=batch)
            theirs = reference.post("/api/v1/detections/batch", json=batch)
            assert ours.status_code == theirs.status_code, what
            mine, other = ours.json(), theirs.json()
            for body in (mine, other):  # the id-less item gets a different id in each store
                for result in body.get("results", []):
                    if result["answer"] is not None and result["answer"]["id"].count("-") > 2:
                        result["answer"].pop("id")
                        result["answer"].pop("uid")
            assert _at_any_moment(mine) == _at_any_moment(other), what


def test_batches_go_to_the_batch_helper_and_images_stay_here(
    helped: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = _calls_here(helped, "prepare_many", monkeypatch)
    batch = [example(id=f"bb-{i}", track_id=str(i)) for i in range(50)]
    answer = helped.post("/api/v1/detections/batch", json=batch)
    assert answer.status_code == 202
    assert answer.json()["accepted"] == 50
    assert here == []  # the batch helper did it
    image = {"media_type": "image/jpeg", "data": _jpeg()}
    with_image = [example(id="bi-1"), example(id="bi-2", image=image)]
    assert helped.post("/api/v1/detections/batch", json=with_image).status_code == 202
    assert [len(items) for items in here] == [2]
    assert helped.get("/api/v1/detections/bi-2/image").status_code == 200


def test_a_killed_helper_leaves_no_request_unanswered_and_comes_back(helped: TestClient) -> None:
    first = _pid(helped)
    os.kill(first, signal.SIGKILL)
    statuses = [_post(helped, example(id=f"k-{i}"))[0] for i in range(20)]
    assert statuses == [202] * 20
    helper: PrepareProcess = helped.app.state.prepare_process  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (helper.running and _pid(helped) != first):
        time.sleep(0.1)
        helped.get("/livez")  # lets the app's loop run the restart
    assert helper.running
    assert _pid(helped) != first
    assert _post(helped, example(id="k-after"))[0] == 202
    listed = helped.get("/api/v1/detections", params={"limit": 1000}).json()["items"]
    assert {f"k-{i}" for i in range(20)} | {"k-after"} <= {item["id"] for item in listed}


def test_a_hung_helper_is_stopped_and_what_waited_is_answered(helped: TestClient) -> None:
    helper: PrepareProcess = helped.app.state.prepare_process  # type: ignore[attr-defined]
    helper._answer_timeout_s = 0.5
    hung = _pid(helped)
    os.kill(hung, signal.SIGSTOP)  # alive, holding its pipe, answering nothing
    started = time.monotonic()
    assert _post(helped, example(id="hung-1"))[0] == 202
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (helper.running and _pid(helped) != hung):
        time.sleep(0.1)
        helped.get("/livez")
    assert _pid(helped) != hung
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)
    metrics = helped.get("/metrics").text
    assert 'copbridge_prepare_helper_up{helper="single"} 1.0' in metrics
    assert 'copbridge_prepare_helper_restarts_total{helper="single"}' in metrics


def test_a_healthy_helper_outlives_its_answer_deadlines(
    tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    """The hang watchdog is one timer per helper: firing after the requests it was set for were
    answered, it must look at the next one waiting, not kill a helper that answers."""
    settings = app_settings(
        tmp_path,
        prepare_process=True,
        rate_limit_credential="100000/second",
        rate_limit_ip="100000/second",
    )
    with TestClient(create_app(settings), headers=auth_headers) as helped:
        _outlives_deadlines(helped)


_RESTARTS = "copbridge_prepare_helper_restarts_total"


def _outlives_deadlines(helped: TestClient) -> None:
    helper: PrepareProcess = helped.app.state.prepare_process  # type: ignore[attr-defined]
    helper._answer_timeout_s = 0.5  # far above a frame's answer time, even on a busy machine
    pid = _pid(helped)
    restarts = _samples(helped, _RESTARTS)  # the registry is the process's: earlier tests count too

    def post_for(seconds: float, name: str) -> list[int]:
        # Back to back: whenever the watchdog fires, some request is waiting for the helper.
        statuses, end, i = [], time.monotonic() + seconds, 0
        while time.monotonic() < end:
            statuses.append(_post(helped, example(id=f"healthy-{name}-{i}"))[0])
            i += 1
        return statuses

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(post_for, [3.0] * 4, "abcd"))
    assert {s for run in runs for s in run} == {202}
    time.sleep(0.7)  # the last deadline passes too
    assert _pid(helped) == pid
    assert helper.running
    assert _samples(helped, _RESTARTS) == restarts


def test_the_helper_stops_with_the_app(tmp_path: Path, auth_headers: dict[str, str]) -> None:
    app = create_app(app_settings(tmp_path, prepare_process=True))
    with TestClient(app, headers=auth_headers) as client:
        pid = _pid(client)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_switched_off_there_is_no_helper(client: TestClient) -> None:
    assert client.app.state.prepare_process is None  # type: ignore[attr-defined]
    assert _post(client, example(id="off-1"))[0] == 202


def test_what_crosses_the_pipe_comes_back_equal(tmp_path: Path) -> None:
    import pickle

    from copbridge.api import prepare_process  # registers the compact pickles

    pipeline = Pipeline(app_settings(tmp_path))
    prepared = pipeline.prepare(Detection.model_validate(example(id="pipe-1")))
    outcome = prepare_process._Outcome(prepared=prepared, locate_s=(0.001,))
    back = pickle.loads(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == outcome
    assert back.prepared.record.events == prepared.record.events


def test_a_helper_that_cannot_start_leaves_serve_serving(
    tmp_path: Path, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: PrepareProcess) -> None:
        raise RuntimeError("no interpreter")

    monkeypatch.setattr(PrepareProcess, "_spawn", broken)
    app = create_app(app_settings(tmp_path, prepare_process=True))
    with TestClient(app, headers=auth_headers) as client:
        assert not app.state.prepare_process.running
        assert _post(client, example(id="no-helper"))[0] == 202
        assert 'copbridge_prepare_helper_up{helper="single"} 0.0' in client.get("/metrics").text


def test_the_helpers_are_handed_no_credential(
    tmp_path: Path, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    pepper = "Zq8rT2mW9xK4vB7nL1cF6hJ3pD5sG0aE"
    unlock = "tls-key-unlock-4471"
    frames: list[bytes] = []
    dumps = pickle.dumps

    def kept(value: Any, *args: Any, **kwargs: Any) -> bytes:
        frames.append(dumps(value, *args, **kwargs))
        return frames[-1]

    monkeypatch.setattr(pickle, "dumps", kept)  # what the serving process sends its helpers
    settings = app_settings(
        tmp_path,
        prepare_process=True,
        key_pepper=pepper,
        destinations=[{"url": "tcp://127.0.0.1:9", "name": "tak", "client_password": unlock}],
    )
    app = create_app(settings)
    with TestClient(app, headers=auth_headers) as client:
        assert _post(client, example(id="no-secrets"))[0] == 202
    setups = [f for f in frames if b"copbridge.config" in f]
    assert len(setups) == 2  # the single and the batch helper
    for secret in (pepper, unlock, ADMIN_KEY):
        assert all(secret.encode() not in frame for frame in frames)


def test_the_helpers_do_not_inherit_the_settings_environment(
    tmp_path: Path, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPBRIDGE_FEED_PASSWORD", "feed-unlock-env")
    monkeypatch.setenv("PGPASSWORD", "libpq-pw-env")
    app = create_app(app_settings(tmp_path, prepare_process=True))
    with TestClient(app, headers=auth_headers) as client:
        assert _post(client, example(id="no-env"))[0] == 202
        pids = [_pid(client, kind) for kind in ("single", "batch")]
        environments = [Path(f"/proc/{pid}/environ").read_bytes() for pid in pids]
    assert os.environ["COPBRIDGE_FEED_PASSWORD"] == "feed-unlock-env"  # ours still has them
    for environment in environments:
        names = [entry.split(b"=", 1)[0] for entry in environment.split(b"\0") if entry]
        assert names  # PATH and the rest are there
        assert not [n for n in names if n.startswith((b"COPBRIDGE_", b"PG"))]


def test_settings_without_secrets_keep_what_preparing_reads() -> None:
    from copbridge.config import load_settings

    settings = load_settings(
        database_url="postgresql://cb:hunter2@127.0.0.1:5432/cb?sslpassword=ssl-pw&sslmode=require",
        rate_limit_storage="redis://:redis-pw-3@127.0.0.1:6379/0",
        key_pepper="Zq8rT2mW9xK4vB7nL1cF6hJ3pD5sG0aE",
        feed_password="feed-unlock-pw",
        tls_key_password="tls-unlock-pw",
        destinations="tcp://127.0.0.1:8087",
        uid_prefix="unit-7",
        stale_seconds=42.0,
    )
    bare = settings.without_secrets()
    assert bare.database_url.startswith("postgresql://cb:***@127.0.0.1:5432/cb?")
    assert "sslmode=require" in bare.database_url
    assert "hunter2" not in bare.database_url
    assert "ssl-pw" not in bare.database_url
    assert bare.rate_limit_storage == "memory://"
    assert (bare.key_pepper, bare.feed_password, bare.tls_key_password) == (None, None, None)
    assert bare.destination_settings() == []
    assert (bare.uid_prefix, bare.stale_seconds) == ("unit-7", 42.0)
    assert settings.key_pepper is not None  # the original is untouched


def test_the_batch_helper_yields_the_cpu_to_live_detections(helped: TestClient) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, _pid(helped, "single")) == ours
    batch = os.getpriority(os.PRIO_PROCESS, _pid(helped, "batch"))
    assert batch == min(19, ours + BATCH_NICENESS)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:pw-1@h/db", "pw-1"),
        ("postgresql://h/db?user=u&password=pw-2", "pw-2"),
        ("postgresql://u:pw%403@h/db", "pw%403"),
        ("postgresql://u:pw?4@h/db", "pw?4"),  # libpq: the password ends at the @
        ("postgresql://h/db?pass%77ord=pw-5", "pw-5"),  # libpq decodes the key
        ("postgres://u:pw-6@h:5433/db?sslpassword=pw-7", "pw-"),
    ],
)
def test_the_store_url_in_logs_never_shows_a_password(url: str, secret: str) -> None:
    from copbridge.config import load_settings

    shown = load_settings(database_url=url).redacted_database_url()
    assert secret not in shown
    assert ":***@" in shown
    plain = "postgresql://u@h:5433/db?sslmode=require"
    assert load_settings(database_url=plain).redacted_database_url() == plain
