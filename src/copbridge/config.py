"""Settings: environment variables ``COPBRIDGE_*`` over an optional TOML file over defaults.

Validated once at start-up so a bad value stops the process with one line naming the setting,
never a stack trace half-way through serving.
"""

from __future__ import annotations

import ipaddress
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_config_file: ContextVar[Path | None] = ContextVar("copbridge_config_file", default=None)

#: Labels located where they touch the ground (bottom-centre of the box), not at the box centre:
#: every people and vehicle name the CoT type mapping knows (tests keep the two in step), the
#: COCO animals that walk, and vessels, whose box ends at the waterline. Compared after
#: ``cot.mapping.normalise_label`` ("Person ", "jet_ski").
DEFAULT_GROUND_LABELS = (
    # people
    "person",
    "people",
    "pedestrian",
    "human",
    "man",
    "woman",
    "child",
    "rider",
    # vehicles
    "vehicle",
    "car",
    "truck",
    "bus",
    "motorcycle",
    "motorbike",
    "bicycle",
    "van",
    "pickup",
    "suv",
    "tractor",
    "train",
    "trailer",
    # animals
    "animal",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    # vessels
    "vessel",
    "boat",
    "ship",
    "yacht",
    "canoe",
    "kayak",
    "jet ski",
)


class DestinationSettings(BaseModel):
    """One TAK destination as written in the TOML file's ``[[destinations]]`` tables."""

    model_config = {"extra": "forbid"}

    url: str
    name: str | None = None
    protocol: Literal["xml", "protobuf"] = "xml"
    client_cert: Path | None = None
    client_key: Path | None = None
    client_password: SecretStr | None = None
    ca_file: Path | None = None
    verify_hostname: bool = True
    expected_hostname: str | None = None
    batch_size: int = Field(default=200, ge=1, le=10_000)
    keepalive_s: float = Field(default=15.0, gt=0, le=3600)
    offer_wait_s: float = Field(default=5.0, gt=0, le=300)


class Settings(BaseSettings):
    """Every knob of a copbridge process; names match the contract's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="COPBRIDGE_",
        extra="forbid",
        validate_default=True,
    )

    host: str = "0.0.0.0"  # noqa: S104 - the service is meant to be reachable by detectors
    port: int = Field(default=9000, ge=1, le=65535)
    database_url: str = "sqlite:///./var/copbridge.db"
    data_dir: Path = Path("./var")
    migrate_on_start: bool = True
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    destinations: Annotated[str | list[DestinationSettings], NoDecode] = ""
    feed: str = "tcp://127.0.0.1:8088"
    bootstrap_key: SecretStr | None = None

    public_url: str = "http://127.0.0.1:9000"
    terrain: Path | None = None
    uid_prefix: str = Field(default="copbridge", pattern=r"^[A-Za-z0-9._:-]{1,32}$")
    ground_labels: Annotated[tuple[str, ...], NoDecode] = DEFAULT_GROUND_LABELS
    stale_seconds: float = Field(default=300.0, gt=0, le=7 * 86400)
    stale_seconds_by_label: dict[str, float] = Field(default_factory=dict)
    cot_types: dict[str, str] = Field(default_factory=dict)
    platform_interval_s: float = Field(default=5.0, gt=0, le=3600)
    max_future_s: float = Field(default=300.0, ge=0, le=86400)
    """How far ahead of this server's clock a detection's time may be (a sensor's clock is off
    by that much at most); later frames are refused: one would hide a track's real ones."""

    ready_after_write_failure_s: float = Field(default=10.0, ge=0, le=3600)
    """/readyz is 503 this long after the store last refused a write (a full disk, a read-only
    file or PostgreSQL standby): reads alone would call it ready while every POST gets 503."""

    group_commit_max_delay_ms: float = Field(default=2.0, ge=0, le=100)
    prepare_process: bool = True
    """Prepare single JSON detections in a helper process (api/prepare_process.py), so that
    the event loop only authenticates, stores and answers; off: all in the serving process."""
    group_commit_max_items: int = Field(default=512, ge=1, le=10_000)
    sqlite_checkpoint_s: float = Field(default=30.0, gt=0)
    sqlite_max_pages: int | None = Field(
        default=None, ge=64
    )  # cap the file: a full disk on purpose
    # PostgreSQL: a statement unanswered this long is on a silent path; its connection is cut.
    # The server's statement_timeout is set 5 s shorter, so healthy slow statements end first.
    pg_silence_limit_s: float = Field(default=35.0, ge=6, le=3600)
    max_body_bytes: int = Field(default=12 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    retention_hours: float = Field(default=24.0, gt=0)
    run_worker: bool = True

    # Built-in CoT feed over TLS (COPBRIDGE_FEED=tls://...): server certificate, and a CA that
    # client certificates must chain to (no CA: any client may connect).
    feed_cert: Path | None = None
    feed_key: Path | None = None
    feed_password: SecretStr | None = None
    feed_ca_file: Path | None = None
    # Delivery worker tuning.
    delivery_lease_s: float = Field(default=30.0, gt=0, le=3600)
    delivery_poll_s: float = Field(default=1.0, gt=0, le=60)
    delivery_backoff_min_s: float = Field(default=0.5, gt=0, le=60)
    delivery_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    delivery_resend_s: float | None = Field(default=None, ge=0, le=3600)
    purge_interval_s: float = Field(default=600.0, gt=0)

    # Security: API keys, JWT, rate limits, HTTP hardening (see copbridge.security).
    key_pepper: SecretStr | None = None  # else generated once into <data_dir>/key-pepper
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=5)  # revocation takes effect within it
    jwt_issuer: str = Field(default="copbridge", min_length=1)
    jwt_audience: str = Field(default="copbridge-api", min_length=1)
    access_token_ttl_s: int = Field(default=900, ge=10, le=86400)
    refresh_token_ttl_s: int = Field(default=86400, ge=60, le=90 * 86400)
    jwt_signing_key: Path | None = None  # PEM (RSA private); else generated in <data_dir>/jwt-keys
    jwt_previous_keys: Annotated[tuple[Path, ...], NoDecode] = ()  # PEMs that still verify
    jwt_rotate_days: float = Field(default=30.0, gt=0)
    rate_limit_storage: str = "memory://"  # redis://host:port/db when replicas share limits
    # Longest wait for Redis per hit; past it (or on any Redis error) this replica counts alone.
    rate_limit_storage_timeout_ms: int = Field(default=250, ge=10, le=10_000)
    rate_limit_prefix: str = Field(default="copbridge", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    rate_limit_credential: str = "100/second"
    rate_limit_ip: str = "200/second"
    rate_limit_auth: str = "20/minute"  # per IP on /api/v1/auth/* and for failed credentials
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Proxies (IPs or CIDR networks) whose X-Forwarded-For names the client: per-IP rate limits
    # and audit records then see the client behind an ingress. Empty: the header is ignored,
    # even from 127.0.0.1 (uvicorn would trust that by default).
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    tls_cert: Path | None = None  # serve over HTTPS (and send HSTS) when both are set
    tls_key: Path | None = None
    tls_key_password: SecretStr | None = None
    livez_scope: str | None = None  # None: public
    readyz_scope: str | None = None
    metrics_scope: str | None = None

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("cot_types")
    @classmethod
    def _cot_templates(cls, value: dict[str, str]) -> dict[str, str]:
        from copbridge.cot import validate_template

        return {label: validate_template(template) for label, template in value.items()}

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("jwt_previous_keys", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("key_pepper")
    @classmethod
    def _real_pepper(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _refuse_placeholder(value.get_secret_value(), 32)
        return value

    @field_validator("bootstrap_key", "key_pepper", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("bootstrap_key")
    @classmethod
    def _well_formed_key(cls, value: SecretStr | None) -> SecretStr | None:
        from copbridge.security.keys import parse_key

        if value is not None and parse_key(value.get_secret_value()) is None:
            raise ValueError(
                "must be a key made by `copbridge keys create` (cpb_<id>_<secret><checksum>)"
            )
        return value

    @field_validator("rate_limit_credential", "rate_limit_ip", "rate_limit_auth")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        parse(value)  # raises ValueError naming the bad text
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must be memory:// or redis://host:port/db")
        return value

    @field_validator("livez_scope", "readyz_scope", "metrics_scope")
    @classmethod
    def _known_scope(cls, value: str | None) -> str | None:
        from copbridge.security.keys import SCOPES

        if value is not None and value not in SCOPES:
            raise ValueError(f"must be one of {', '.join(SCOPES)}")
        return value

    @field_validator("ground_labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def destination_settings(self) -> list[DestinationSettings]:
        """Every configured TAK destination; a plain URL list takes default options."""
        if isinstance(self.destinations, str):
            urls = [u.strip() for u in self.destinations.split(",") if u.strip()]
            return [DestinationSettings(url=u) for u in urls]
        return list(self.destinations)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    def without_secrets(self) -> Settings:
        """A copy for a process that holds no credential (the prepare helpers): every secret
        field dropped, the store URL's password masked, and the destinations (whose key
        passwords and certificates only the delivery needs) left out."""
        dropped = {name: None for name in type(self).model_fields if name in _SECRET_FIELDS}
        return self.model_copy(
            update={
                **dropped,
                "database_url": self.redacted_database_url(),
                "destinations": "",
                "rate_limit_storage": "memory://",  # a Redis URL may hold a password
            }
        )

    def redacted_database_url(self) -> str:
        """The store URL safe for logs: a PostgreSQL URL holding a password (in its user part
        or as ``password=`` / ``sslpassword=``, however spelt) is shown as libpq reads it,
        with the password replaced; any other URL as it is."""
        url = self.database_url
        if not self.is_postgres:
            return url
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        scheme = url.split("://", 1)[0]
        try:
            parts = {k: str(v) for k, v in conninfo_to_dict(url).items()}
        except psycopg.Error:
            return f"{scheme}://(an unreadable URL, not shown)"
        if not parts.keys() & {"password", "sslpassword"}:
            return url
        port = f":{parts['port']}" if "port" in parts else ""
        shown = f"{scheme}://{parts.get('user', '')}:***@{parts.get('host', '')}{port}"
        shown += f"/{parts.get('dbname', '')}"
        rest = [
            f"{key}={'***' if key == 'sslpassword' else value}"
            for key, value in parts.items()
            if key not in {"user", "password", "host", "port", "dbname"}
        ]
        return shown + ("?" + "&".join(rest) if rest else "")


def _secret_names(model: type[BaseModel]) -> frozenset[str]:
    """Every field of ``model`` and the models it nests that holds a ``SecretStr``: one
    source (the annotations) for what ``without_secrets`` drops and errors never show."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        for kind in _types_in(field.annotation):
            if kind is SecretStr:
                names.add(name)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= _secret_names(kind)
    return frozenset(names)


def _types_in(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


_SECRET_FIELDS = _secret_names(Settings)
#: Settings whose value is a URL that may carry a password (``postgresql://u:pw@h``,
#: ``redis://:pw@h``): a refusal shows only the scheme the validator judged.
_CREDENTIAL_URLS = frozenset({"database_url", "rate_limit_storage"})
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "secret", "password", "example", "xxxx")


def _refuse_placeholder(value: str, min_length: int) -> None:
    lowered = value.lower()
    if len(value) < min_length or any(p in lowered for p in _PLACEHOLDERS) or len(set(value)) < 8:
        raise ValueError(f"looks like a placeholder: use at least {min_length} random characters")


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings, turning any validation failure into a one-line error."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    token = _config_file.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except ValueError as exc:  # malformed TOML, bad env JSON
        raise SettingsError(f"invalid configuration: {exc}") from None
    finally:
        _config_file.reset(token)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        env = f"{field} (COPBRIDGE_{field.split('.')[0].upper()})"
        shown = error.get("input")
        names = {str(part) for part in error["loc"]}
        if names & _CREDENTIAL_URLS and isinstance(shown, str):
            shown = shown.split("://", 1)[0] + "://…" if "://" in shown else None
        secret = bool(names & _SECRET_FIELDS)
        value = (
            "" if isinstance(shown, dict | list) or shown is None or secret else f" (got {shown!r})"
        )
        parts.append(f"{env}: {error['msg']}{value}")
    return "invalid setting " + "; ".join(parts)
