"""The real ``copbridge serve`` process: start, answer, stop cleanly, survive SIGKILL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from copbridge.store import open_store
from tests.system.processes import run_copbridge, start_serve

_EXAMPLE_FILE = Path(__file__).parents[1] / "api" / "data" / "contract_example.json"


def test_serve_answers_livez_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    serve = start_serve(tmp_path)
    try:
        assert httpx.get(f"{serve.url}/livez", timeout=5).json() == {"status": "ok"}
        assert httpx.get(f"{serve.url}/readyz", timeout=5).status_code == 200
    finally:
        code = serve.stop(signal.SIGTERM)
    output = serve.output()
    assert code == 0, output
    assert "Traceback" not in output


def test_a_client_gone_mid_body_is_no_server_error(tmp_path: Path) -> None:
    serve = start_serve(tmp_path)
    try:
        head = (
            "POST /api/v1/detections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {serve.headers['Authorization']}\r\nContent-Length: 500\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", serve.port), timeout=5) as sock:
            sock.sendall(head.encode() + b'{"id": "cut')  # 489 bytes short, then gone
        metrics = ""
        for _ in range(50):  # the server notices the close within a few loop turns
            metrics = httpx.get(f"{serve.url}/metrics", timeout=5).text
            if 'status="499"' in metrics:
                break
            time.sleep(0.1)
        assert 'route="/api/v1/detections",status="499"' in metrics
    finally:
        code = serve.stop(signal.SIGTERM)
    output = serve.output()
    assert code == 0, output
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output


@pytest.mark.parametrize(
    ("name", "value"),
    [("COPBRIDGE_PORT", "abc"), ("COPBRIDGE_PLATFORM_INTERVAL_S", "0")],  # 0: was a traceback
)
def test_bad_setting_is_one_clear_line(tmp_path: Path, name: str, value: str) -> None:
    result = run_copbridge(["serve"], {name: value}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://copbridge:secret-pw@127.0.0.1:1/copbridge",
        "postgresql://copbridge@127.0.0.1:1/copbridge?sslmode=disable&password=secret-pw",
        "postgresql://copbridge@127.0.0.1:1/copbridge?PASSWORD=secret-pw",
    ],
    ids=["userinfo", "query", "query-upper"],
)
def test_unreachable_postgres_is_one_clear_line(tmp_path: Path, url: str) -> None:
    result = run_copbridge(["serve"], {"COPBRIDGE_DATABASE_URL": url}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not usable" in lines[0]
    assert "secret-pw" not in result.stderr + result.stdout  # secrets are never printed


@pytest.mark.parametrize("problem", ["missing", "not-a-pem", "half"])
def test_unusable_https_certificate_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {
        "missing": {"COPBRIDGE_TLS_CERT": str(tmp_path / "no.pem"), "COPBRIDGE_TLS_KEY": "x"},
        "not-a-pem": {"COPBRIDGE_TLS_CERT": str(garbage), "COPBRIDGE_TLS_KEY": str(garbage)},
        "half": {"COPBRIDGE_TLS_CERT": str(garbage)},
    }[problem]
    env = {"COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **files}
    result = run_copbridge(["serve"], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "COPBRIDGE_TLS_CERT" in lines[0]
    assert "bootstrap" not in result.stdout  # nothing minted for a server that never starts


@pytest.mark.parametrize(
    ("problem", "named"),
    [
        ("destination URL", "tcp://tak"),
        ("destination port 0", "port must be"),
        ("same destination twice", "configured twice"),
        ("destination CA file missing", "TLS files cannot be used"),
        ("destination certificate not a certificate", "TLS files cannot be used"),
        ("destination key without certificate", "client_key needs client_cert"),
        ("feed URL", "COPBRIDGE_FEED"),
        ("feed certificate missing", "COPBRIDGE_FEED"),
        ("feed certificates on a tcp feed", "COPBRIDGE_FEED_CERT"),
    ],
)
def test_unusable_delivery_settings_are_one_clear_line(
    tmp_path: Path, problem: str, named: str
) -> None:
    """These were a 60-line traceback from inside uvicorn's start-up, or (TLS files) a link
    that failed again and again while serve looked healthy."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    table = {
        "destination URL": ('url = "tcp://tak"', {}),
        "destination port 0": ('url = "tcp://tak:0"', {}),
        "same destination twice": (
            'url = "tcp://TAK:8087"\n[[destinations]]\nurl = "tcp://tak:8087/"',
            {},
        ),
        "destination CA file missing": (f'url = "tls://tak:8089"\nca_file = "{missing}"', {}),
        "destination certificate not a certificate": (
            f'url = "tls://tak:8089"\nclient_cert = "{garbage}"',
            {},
        ),
        "destination key without certificate": (
            f'url = "tls://tak:8089"\nclient_key = "{garbage}"',
            {},
        ),
        "feed URL": (None, {"COPBRIDGE_FEED": "tcp://nonsense"}),
        "feed certificate missing": (
            None,
            {"COPBRIDGE_FEED": "tls://127.0.0.1:0", "COPBRIDGE_FEED_CERT": missing},
        ),
        "feed certificates on a tcp feed": (
            None,
            {"COPBRIDGE_FEED": "tcp://127.0.0.1:0", "COPBRIDGE_FEED_CERT": str(garbage)},
        ),
    }
    destination, env = table[problem]
    config = tmp_path / "copbridge.toml"
    config.write_text(f"[[destinations]]\n{destination}\n" if destination else "")
    env = {"COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **env}
    result = run_copbridge(["serve", "--config", str(config)], env, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "bootstrap" not in result.stdout  # checked before anything is stored
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"COPBRIDGE_TERRAIN": "/nonexistent.tif"}, "invalid setting terrain (COPBRIDGE_TERRAIN)"),
        (
            {"COPBRIDGE_JWT_SIGNING_KEY": "/nonexistent.pem"},
            "invalid setting jwt_signing_key (COPBRIDGE_JWT_SIGNING_KEY)",
        ),
        (
            {"COPBRIDGE_STALE_SECONDS_BY_LABEL": '{"person": -1}'},
            "invalid setting stale_seconds_by_label (COPBRIDGE_STALE_SECONDS_BY_LABEL)",
        ),
    ],
    ids=["terrain", "signing key", "stale time"],
)
def test_settings_the_pipeline_or_tokens_cannot_use_are_one_line_before_start(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """Each was a traceback from inside uvicorn's start-up, exit 3 (operator review)."""
    env = {"COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **env}
    result = run_copbridge(["serve"], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert named in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x.db").exists()
    if "jwt" in named:
        return  # geolocate signs nothing
    offline = run_copbridge(["geolocate", str(_EXAMPLE_FILE)], env, tmp_path)
    assert offline.returncode == 2, offline.stderr
    assert named in offline.stderr
    assert "Traceback" not in offline.stderr


def test_unknown_config_key_in_toml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "copbridge.toml"
    config.write_text("prot = 9001\n")
    result = run_copbridge(["serve", "--config", str(config)], {}, tmp_path)
    assert result.returncode == 2
    assert "prot" in result.stderr


def test_db_upgrade_reports_the_schema_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_copbridge(["db", "upgrade"], {"COPBRIDGE_DATABASE_URL": url}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("schema at version ")


_WRITER = textwrap.dedent(
    """
    import sys
    from copbridge.store import open_store
    from tests.store.factories import detection
    store = open_store(sys.argv[1])
    store.upgrade()
    i = 0
    while True:
        batch = [detection(f"d{i}-{j}") for j in range(5)]
        store.accept_detections(batch, ["tcp://127.0.0.1:1"])
        print(" ".join(r.id for r in batch), flush=True)
        i += 1
    """
)


def test_sigkill_loses_nothing_that_was_committed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    acknowledged: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.extend(line.split())
        if len(acknowledged) >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    store = open_store(url)
    try:
        store.upgrade()
        missing = [i for i in acknowledged if store.get_detection(i) is None]
        assert missing == []
        assert store.verify_audit().ok
    finally:
        store.close()


def test_a_data_folder_that_is_a_file_is_named_as_the_setting(tmp_path: Path) -> None:
    """It said 'cannot check the key pepper: [Errno 17] File exists', naming no setting."""
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    env = {
        "COPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "COPBRIDGE_DATA_DIR": str(not_a_folder),
    }
    for args in (["keys", "create", "--name", "ops"], ["serve"]):
        result = run_copbridge(args, env, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "invalid setting data_dir (COPBRIDGE_DATA_DIR)" in result.stderr
        assert "Traceback" not in result.stderr
