"""The ``copbridge`` command: serve, db, version (and the commands later rooms add).

Every failure a user can cause (bad setting, unreachable store) ends in one line and a non-zero
exit, never a stack trace.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from copbridge import __version__
from copbridge.config import Settings, SettingsError, load_settings
from copbridge.store import StoreError

app = typer.Typer(
    name="copbridge",
    help="AI detections to geolocated Cursor-on-Target events for TAK.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Store maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

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
    store = build_store(settings)
    try:
        if settings.migrate_on_start:
            store.upgrade()
        else:
            store.ping()
    except StoreError as exc:
        store.close()
        fail(f"store {settings.redacted_database_url()} is not usable: {exc}")
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
    from copbridge.pipeline import Pipeline

    if fmt not in ("json", "cot"):
        fail(f"--format must be json or cot, not {fmt!r}", 2)
    settings = settings_or_exit(config)
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {source}: {exc}", 2)
    failed = 0
    for line in locate_all(text, Pipeline(settings), "cot" if fmt == "cot" else "json"):
        typer.echo(line.text)
        failed += not line.ok
    if failed:
        raise typer.Exit(1)


@app.command()
def send(
    files: Annotated[list[Path], typer.Argument(help="JSON or JSON-lines files of detections.")],
    url: Annotated[
        str, typer.Option(envvar="COPBRIDGE_URL", help="The service's base URL.")
    ] = "http://127.0.0.1:9000",
    api_key: Annotated[
        str | None,
        typer.Option(envvar="COPBRIDGE_API_KEY", help="Credential (cpb_… key or access token)."),
    ] = None,
) -> None:
    """Post detections to a running service; print accepted / rejected with reasons."""
    import httpx
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from copbridge.sender import Summary, read_detections
    from copbridge.sender import send as send_all

    console = Console(stderr=True)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    summary = Summary()
    with (
        httpx.Client(base_url=url, headers=headers, timeout=60) as client,
        Progress(console=console, transient=True) as bar,
    ):
        for path in files:
            if not path.is_file():
                fail(f"{path} is not a file", 2)
            items = list(read_detections(path))
            task = bar.add_task(str(path), total=len(items))

            def advance(count: int, task: TaskID = task) -> None:
                bar.advance(task, count)

            try:
                send_all(client, iter(items), summary, advance)
            except httpx.HTTPError as exc:
                fail(f"cannot reach {url}: {exc}")
    typer.echo(
        f"accepted {summary.accepted}, duplicates {summary.duplicates}, "
        f"rejected {summary.rejected} of {summary.total}"
    )
    for reason, count in summary.reasons.most_common(20):
        typer.echo(f"  {count} x {reason}")
    if summary.rejected:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending schema migrations."""
    from copbridge.store import open_store

    settings = settings_or_exit(config)
    store = open_store(settings.database_url)
    try:
        version_now = store.upgrade()
    except StoreError as exc:
        fail(f"store {settings.redacted_database_url()} is not usable: {exc}")
    finally:
        store.close()
    typer.echo(f"schema at version {version_now}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
