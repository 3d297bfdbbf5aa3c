"""The ``copbridge`` command: serve, worker, db, version (and the commands later rooms add).

Every failure a user can cause (bad setting, unreachable store) ends in one line and a non-zero
exit, never a stack trace.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import SecretStr

from copbridge import __version__
from copbridge.config import Settings, SettingsError, load_settings
from copbridge.store import Store, StoreError

if TYPE_CHECKING:
    from copbridge.pipeline import Pipeline

app = typer.Typer(
    name="copbridge",
    help="AI detections to geolocated Cursor-on-Target events for TAK.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Store maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="API keys, straight against the store.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML file with settings (environment variables win)."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"copbridge: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        fail(str(exc), 2)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run the API (and, unless disabled, the delivery worker and the CoT feed)."""
    import uvicorn

    from copbridge.api.app import build_store, create_app
    from copbridge.logs import configure_logging

    settings = settings_or_exit(config, host=host, port=port)
    configure_logging(settings.log_format, settings.log_level)
    from copbridge.runtime import tune_garbage_collector

    tune_garbage_collector()
    # Checked before anything is stored or printed: a bad certificate is one line, not a
    # traceback from inside uvicorn after a bootstrap key was minted.
    if (settings.tls_cert is None) != (settings.tls_key is None):
        fail("TLS needs both COPBRIDGE_TLS_CERT and COPBRIDGE_TLS_KEY", 2)
    if settings.tls_cert is not None and settings.tls_key is not None:
        problem = _tls_problem(settings.tls_cert, settings.tls_key, settings.tls_key_password)
        if problem is not None:
            fail(f"COPBRIDGE_TLS_CERT / COPBRIDGE_TLS_KEY cannot be used: {problem}", 2)
    _check_delivery(settings, run_worker=settings.run_worker, feed=settings.feed)
    _check_signing_keys(settings)
    _pipeline_or_exit(settings)  # a terrain file, stale times and CoT types that cannot be used
    store = build_store(settings)
    _make_ready(settings, store)
    minted = _bootstrap_key(settings, store)
    if minted is not None:
        typer.echo(f"bootstrap admin key (shown once, store it now): {minted}")
    password = settings.tls_key_password
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=10,
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=list(settings.trusted_proxies) or None,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            ssl_keyfile_password=password.get_secret_value() if password else None,
        )
    )
    # uvicorn re-raises the signal that stopped it once shutdown is done; a no-op handler turns
    # that into a plain return so SIGTERM ends in exit status 0 after a graceful shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        store.close()
    if not server.started:
        fail(f"could not listen on {settings.host}:{settings.port}")


def _pipeline_or_exit(settings: Settings) -> Pipeline:
    from copbridge.pipeline import Pipeline, PipelineSettingError

    try:
        return Pipeline(settings)
    except PipelineSettingError as exc:
        fail(str(exc), 2)


def _check_signing_keys(settings: Settings) -> None:
    from copbridge.security.signing import pem_problem

    files = [("jwt_signing_key", settings.jwt_signing_key)]
    files += [("jwt_previous_keys", p) for p in settings.jwt_previous_keys]
    for name, path in files:
        if path is not None and (problem := pem_problem(path)) is not None:
            fail(f"invalid setting {name} (COPBRIDGE_{name.upper()}): {path}: {problem}", 2)


def _check_delivery(settings: Settings, *, run_worker: bool, feed: str) -> None:
    from copbridge.delivery import DestinationError, check_delivery

    try:
        check_delivery(settings, run_worker=run_worker, feed=feed)
    except DestinationError as exc:
        fail(str(exc), 2)


def _tls_problem(cert: Path, key: Path, password: SecretStr | None) -> str | None:
    """Why the HTTPS certificate and key cannot be loaded (uvicorn would end in a traceback)."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password.get_secret_value() if password else None)
    except (OSError, ssl.SSLError) as exc:
        return str(exc)
    return None


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run only the delivery worker against the store (no API, no feed); SIGTERM stops it."""
    import asyncio

    from copbridge.api.app import build_store
    from copbridge.delivery import DeliveryService
    from copbridge.logs import configure_logging

    settings = settings_or_exit(config)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.destination_settings():
        fail("no destinations configured (COPBRIDGE_DESTINATIONS)", 2)
    _check_delivery(settings, run_worker=True, feed="off")
    store = build_store(settings)
    service = DeliveryService(settings, store, run_worker=True, feed="off")
    _make_ready(settings, store)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.start()
        try:
            await stop.wait()
        finally:
            await service.stop()

    try:
        asyncio.run(run())
    finally:
        store.close()


@app.command()
def geolocate(
    source: Annotated[
        str, typer.Argument(help="File of one JSON detection or JSON lines; - for stdin.")
    ] = "-",
    fmt: Annotated[
        str, typer.Option("--format", help="json (the API's answer) or cot (the CoT event).")
    ] = "json",
    config: ConfigOption = None,
) -> None:
    """Locate detections offline (no server, no database); one line per input, in order."""
    from copbridge.offline import geolocate as locate_all

    if fmt not in ("json", "cot"):
        fail(f"--format must be json or cot, not {fmt!r}", 2)
    settings = settings_or_exit(config)
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        fail(f"cannot read {source}: {exc}", 2)
    failed = 0
    for line in locate_all(data, _pipeline_or_exit(settings), "cot" if fmt == "cot" else "json"):
        typer.echo(line.text)
        failed += not line.ok
    if failed:
        raise typer.Exit(1)


@app.command()
def send(
    files: Annotated[
        list[str],
        typer.Argument(help="Files of detections (JSON object, array, JSON lines); - for stdin."),
    ],
    url: Annotated[
        str, typer.Option(envvar="COPBRIDGE_URL", help="The service's base URL.")
    ] = "http://127.0.0.1:9000",
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COPBRIDGE_API_KEY", help="Credential (cpb_… key or access token)."),
    ] = None,
) -> None:
    """Post detections to a running service; print accepted / rejected with reasons and lines.

    A detection without an id gets one made from its text, so that a retry or a second run is
    answered as a duplicate instead of being stored twice. Exit status: 0 every detection was
    stored (now or before), 1 some were refused, 2 bad arguments or unreadable files (nothing
    sent), 3 the service stopped taking them (unreachable, the credential was refused, or a
    batch was left in doubt), or some were left in doubt or not stored (the store busy to every
    try). A batch that no answer told about (the connection was lost, or
    a 5xx other than 503 to every try) stops the run and is reported apart: it may have been
    stored; running the same files again tells (stored ones come back as duplicates).
    """
    import httpx
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from copbridge.documents import Item, read
    from copbridge.sender import Pending, Sender, Stopped, Summary, pending

    console = Console(stderr=True)
    client_url = _service_url(url)
    headers = {"Authorization": f"Bearer {_credential(api_key)}"} if api_key else {}
    sources = _readable(files)
    summary = Summary()
    stopped: str | None = None
    with (
        httpx.Client(base_url=client_url, headers=headers, timeout=60) as client,
        Progress(console=console, transient=True) as bar,
    ):

        def waiting(seconds: float, why: str) -> None:
            bar.console.print(f"{why}: waiting {seconds:.1f} s")

        sender = Sender(client, summary, on_wait=waiting)
        for name, load in sources:
            length, found = read(load())
            task = bar.add_task(name, total=max(length, 1))

            def detections(
                name: str = name, found: Iterator[Item] = found, task: TaskID = task
            ) -> Iterator[Pending]:
                for item in found:
                    if item.end:
                        bar.update(task, completed=item.end)
                    ready = pending(name, item, summary)
                    if ready is not None:
                        yield ready

            try:
                sender.send(detections())
            except Stopped as exc:
                stopped = str(exc)
                break
            bar.update(task, completed=max(length, 1))
    for line in summary.lines():
        typer.echo(line)
    if stopped is not None:
        fail(f"stopped: {stopped}", 3)
    if summary.in_doubt:
        # An item of a batch whose commit was cut off: the run went on, but that one may or
        # may not be stored (it was exit 0, as though every detection were).
        fail(f"{summary.in_doubt} left in doubt: send the same files again to know", 3)
    if summary.not_stored.count:
        fail(f"{summary.not_stored.count} not stored (the store was busy): send again", 3)
    if status := summary.exit_status():
        raise typer.Exit(status)


def _service_url(url: str) -> str:
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        fail(f"--url {url!r} is not a URL: {exc}", 2)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        fail(f"--url {url!r} must be http:// or https:// and name a host", 2)
    # The base URL; the API's own paths, pasted with it, are taken off (they were doubled:
    # .../api/v1//api/v1/detections/batch, a 404).
    path = parsed.path.rstrip("/")
    for suffix in ("/api/v1/detections/batch", "/api/v1/detections", "/api/v1"):
        if path.endswith(suffix):
            path = path.removesuffix(suffix)
            break
    return str(parsed.copy_with(path=path or "/", query=None, fragment=None)).rstrip("/")


def _credential(key: str) -> str:
    """The key as sent; refused (without printing it) when it cannot be an HTTP header value."""
    key = key.strip()
    if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        fail("the API key holds spaces or characters that are not ASCII: check it", 2)
    return key


def _readable(files: list[str]) -> list[tuple[str, Callable[[], bytes]]]:
    """Every source checked before anything is sent: a typo in the last name must not leave a
    run half done."""
    sources: list[tuple[str, Callable[[], bytes]]] = []
    for name in files:
        if name == "-":
            sources.append(("stdin", sys.stdin.buffer.read))
            continue
        path = Path(name)
        if not path.exists():
            fail(f"{name}: no such file", 2)
        if path.is_dir():  # a pipe or <(process substitution) is read like a file
            fail(f"{name} is a directory, not a file", 2)
        if not os.access(path, os.R_OK):
            fail(f"{name}: not readable", 2)
        sources.append((name, path.read_bytes))
    return sources


_LOCK_WAIT = (
    "no answer within 30 s (another replica may be migrating it and hold the lock; try again)"
)


def _make_ready(settings: Settings, store: Store) -> None:
    """Migrate (or just reach) the store before serving from it; exit 1 with one line if not."""
    try:
        if settings.migrate_on_start:
            store.upgrade()
        else:
            store.ping()
    except StoreError as exc:
        store.close()
        fail(f"store {settings.redacted_database_url()} is not usable: {exc}")
    except TimeoutError:  # another replica held the migration lock past the writer's wait
        store.close()
        fail(f"store {settings.redacted_database_url()} is not usable: {_LOCK_WAIT}")


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    serving_role: Annotated[
        str | None,
        typer.Option(
            help="PostgreSQL: the role serve runs as (COPBRIDGE_MIGRATE_ON_START=false), given "
            "what it needs but no way to change or delete audit records."
        ),
    ] = None,
) -> None:
    """Apply pending schema migrations (as the role that owns the tables)."""
    from copbridge.store import open_store
    from copbridge.store.postgres import PostgresStore

    settings = settings_or_exit(config)
    store = open_store(settings.database_url)
    if serving_role is not None and not isinstance(store, PostgresStore):
        store.close()
        fail("--serving-role is for PostgreSQL stores", 2)
    try:
        version_now = store.upgrade()
        if isinstance(store, PostgresStore) and serving_role is not None:
            store.grant_serving_role(serving_role)
    except StoreError as exc:
        fail(f"store {settings.redacted_database_url()} is not usable: {exc}")
    except TimeoutError:
        fail(f"store {settings.redacted_database_url()} is not usable: {_LOCK_WAIT}")
    finally:
        store.close()
    typer.echo(f"schema at version {version_now}")
    if serving_role is not None:
        typer.echo(f"{serving_role} may serve; audit records are insert-only for it")


# -- keys and audit ------------------------------------------------------------------------------


def _bootstrap_key(settings: Settings, store: Store) -> str | None:
    """On a store without keys, create the admin key; the text if it was minted here."""
    from copbridge.security.bootstrap import ensure_bootstrap_key

    configured = settings.bootstrap_key.get_secret_value() if settings.bootstrap_key else None
    pepper = _pepper(settings, store)
    try:
        return ensure_bootstrap_key(store, pepper, configured)
    except (StoreError, OSError, RuntimeError) as exc:
        store.close()
        fail(f"cannot create the bootstrap key: {exc}")


def _pepper(settings: Settings, store: Store) -> bytes:
    """The key pepper, once the store has said it is the one its keys were made with."""
    from copbridge.security.keys import PepperMismatch, check_pepper, load_pepper, parse_key

    configured = settings.key_pepper.get_secret_value() if settings.key_pepper else None
    bootstrap = settings.bootstrap_key.get_secret_value() if settings.bootstrap_key else None
    try:
        pepper = load_pepper(configured, settings.data_dir)
    except OSError as exc:  # the data folder is a file, or not writable
        store.close()
        fail(f"invalid setting data_dir (COPBRIDGE_DATA_DIR): {settings.data_dir}: {exc}", 2)
    try:
        check_pepper(store, pepper, parse_key(bootstrap) if bootstrap else None)
    except PepperMismatch as exc:
        store.close()
        fail(str(exc), 2)
    except (StoreError, OSError, RuntimeError) as exc:
        store.close()
        fail(f"cannot check the key pepper: {exc}")
    return pepper


@contextlib.contextmanager
def _opened_store(settings: Settings, *, existing: bool = False) -> Iterator[Store]:
    """The store for a one-shot command, upgraded (or checked), closed on the way out.
    ``existing``: a SQLite file that is not there is an error (a typo in the URL would
    otherwise verify an empty database it made), not a database to make."""
    from copbridge.store import open_store
    from copbridge.store.sqlite import path_from_url

    url = settings.database_url
    if existing and url.startswith("sqlite:///") and not path_from_url(url).exists():
        fail(f"no database at {path_from_url(url)}: check COPBRIDGE_DATABASE_URL")
    store = open_store(url)
    try:
        try:
            store.upgrade() if settings.migrate_on_start else store.ping()
        except StoreError as exc:
            fail(f"store {settings.redacted_database_url()} is not usable: {exc}")
        yield store
    finally:
        store.close()


def _when(us: int | None) -> str:
    from datetime import UTC, datetime

    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for (shown in lists and audit).")],
    scope: Annotated[
        list[str],
        typer.Option(help="A scope to grant; repeat for several. Default: detections:write."),
    ] = ["detections:write"],  # noqa: B006 - typer reads the default, never mutates it
    expires_days: Annotated[
        float | None, typer.Option(help="Expire after this many days (default: never).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once; only its keyed hash is stored."""
    from copbridge.security.keys import SCOPES, mint_key, new_key_record, now_us

    settings = settings_or_exit(config)
    unknown = sorted(set(scope) - set(SCOPES))
    if unknown:
        fail(f"unknown scope {', '.join(unknown)}; known: {', '.join(SCOPES)}", 2)
    if expires_days is not None and expires_days <= 0:
        fail("--expires-days must be positive", 2)
    with _opened_store(settings) as store:
        key, text = mint_key()
        at = now_us()
        expires = None if expires_days is None else at + int(expires_days * 86400e6)
        try:
            record = new_key_record(key, _pepper(settings, store), name, scope, at, expires)
            store.create_key(record, "cli")
        except StoreError as exc:
            fail(f"key not created: {exc}")
    typer.echo(text)
    typer.echo(f"key {key.key_id} ({', '.join(scope)}): shown once, store it now", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List keys: id, name, scopes, created, expires, last used, revoked (never secrets)."""
    settings = settings_or_exit(config)
    with _opened_store(settings, existing=True) as store:
        records = store.list_keys()
    typer.echo("key_id\tname\tscopes\tcreated\texpires\tlast_used\trevoked")
    for r in records:
        fields = [r.key_id, r.name, ",".join(r.scopes), _when(r.created_us), _when(r.expires_us)]
        fields += [_when(r.last_used_us), _when(r.revoked_us)]
        typer.echo("\t".join(fields))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after cpb_).")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key; running services stop accepting it within the key cache TTL (≤ 5 s)."""
    from copbridge.security.keys import now_us, parse_key

    parsed = parse_key(key_id)
    key_id = parsed.key_id if parsed else key_id  # a whole key pasted by mistake works too
    settings = settings_or_exit(config)
    with _opened_store(settings, existing=True) as store:
        if store.get_key(key_id) is None:
            fail(f"no key {key_id}")
        revoked = store.revoke_key(key_id, now_us(), "cli")
    typer.echo(f"key {key_id} revoked" if revoked else f"key {key_id} was already revoked")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="SEQ:HASH of a head printed earlier (kept elsewhere): that record must still "
            "be there with that hash, which shows removed newest records or a re-chained trail."
        ),
    ] = None,
) -> None:
    """Check the audit hash chain; name the first broken link and exit 1 if there is one."""
    settings = settings_or_exit(config)
    expected = _parse_head(head) if head is not None else None
    with _opened_store(settings, existing=True) as store:
        report = store.verify_audit()
        kept = store.audit_records(expected[0] - 1, 1) if expected is not None else []
    if not report.ok:
        fail(f"audit chain broken at record {report.first_broken_seq}: {report.reason}")
    if expected is not None:
        seq, digest = expected
        if not kept or kept[0].seq != seq:
            fail(f"audit record {seq} of the given head is gone: the newest records were removed")
        if kept[0].hash != digest:
            fail(f"audit record {seq} no longer has the given head's hash: the trail was rewritten")
    typer.echo(f"audit chain intact: {report.records} records")
    if report.head_seq is not None:
        typer.echo(f"head {report.head_seq}:{report.head_hash}")


def _parse_head(text: str) -> tuple[int, str]:
    # ASCII digits only (str.isdigit takes superscripts and other scripts' digits), and a seq
    # a store can hold.
    match = re.fullmatch(r"([0-9]{1,18}):([0-9a-fA-F]{64})", text.strip())
    if match is None or int(match[1]) < 1:
        fail("--head takes SEQ:HASH as printed by audit verify (e.g. 120:3fa4...)", 2)
    return int(match[1]), match[2].lower()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
