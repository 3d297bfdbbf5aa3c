"""taky for the delivery tests: a restartable process on a fixed port, over TCP or TLS.

For TLS the test makes the CA, the server certificate and two client certificates with
``takyctl`` (one for copbridge, one for the receiving client), as a TAK admin would.
"""

from __future__ import annotations

import configparser
import contextlib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cot.taky_server import HOST, TAKY_CONF, CotClient, free_port

TAKYCTL = str(Path(sys.executable).parent / "takyctl")
P12_PASSWORD = "atakatak"  # takyctl's default


@dataclass(frozen=True)
class ClientCert:
    p12: Path
    crt: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    copbridge: ClientCert
    receiver: ClientCert


def _client_cert(site: Path, name: str) -> ClientCert:
    subprocess.run(
        [TAKYCTL, "-c", "taky.conf", "build_client", "--dump_pem", name],
        cwd=site,
        check=True,
        capture_output=True,
        timeout=30,
    )
    p12 = next(site.glob(f"{name}-*.p12"))
    return ClientCert(p12, p12.with_suffix(".crt"), p12.with_suffix(".key"))


def make_tls_site(site: Path, port: int) -> TlsFiles:
    """``takyctl setup`` a site (CA, server cert for ``localhost``) listening on ``port``."""
    subprocess.run(
        [
            TAKYCTL,
            "setup",
            "--host",
            "localhost",
            "--public-ip",
            HOST,
            "--bind-ip",
            HOST,
            str(site),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    conf = configparser.ConfigParser(allow_no_value=True)
    conf.read(site / "taky.conf")
    conf.set("cot_server", "port", str(port))
    with (site / "taky.conf").open("w") as out:
        conf.write(out)
    return TlsFiles(
        site / "ssl" / "ca.crt", _client_cert(site, "copbridge"), _client_cert(site, "rx")
    )


class Taky:
    """taky on one port that a test can stop and start again (an outage)."""

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        self.port = free_port()
        self.host = HOST
        self.tls: TlsFiles | None = None
        if tls:
            workdir.mkdir(parents=True, exist_ok=True)
            self.site = workdir / "site"
            self.tls = make_tls_site(self.site, self.port)
        else:
            self.site = workdir
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "taky.conf").write_text(
                TAKY_CONF.format(host=HOST, root=workdir, port=self.port)
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.site / "taky.log"

    def start(self, timeout: float = 15.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taky.cot", "-c", "taky.conf", "-l", "debug"],
                cwd=self.site,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"taky exited: {self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            time.sleep(0.05)
        raise TimeoutError(f"taky did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def client(self) -> CotClient:
        """A receiving TAK client (TLS with its own certificate when the site uses TLS)."""
        if self.tls is None:
            return CotClient(self.host, self.port)
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(self.tls.receiver.crt, self.tls.receiver.key)
        client = CotClient.__new__(CotClient)
        raw = socket.create_connection((self.host, self.port), 5.0)
        client.sock = context.wrap_socket(raw, server_hostname="localhost")
        client.timeout = 5.0
        client._buffer = b""
        client.received = []
        return client
