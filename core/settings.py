"""Configuration: one TOML file plus ``SITETWIN_*`` environment variables.

``sitetwin/sitetwin.sample.toml`` (the shell's) documents every key with its
default; a test checks that loading it yields exactly the defaults below, so
the two cannot drift apart.  Keys follow Telegraf's ``mqtt_consumer``
vocabulary (``servers``, ``topics``, ``qos``, ``client_id``,
``persistent_session``, ``tls_ca``...) and durations are written ``"30s"``.

Precedence, highest first: the environment
(``SITETWIN_MQTT__SERVERS='["tcp://h:1883"]'``, ``SITETWIN_INFLUXDB__TOKEN=...``),
then the TOML file (merged with any keyword overrides), then the defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import SitetwinError
from core.timeutil import DEFAULT_ZONE, get_zone
from core.units import Duration, Size, parse_duration, parse_size

__all__ = [
    "ConfigError",
    "Duration",
    "Size",
    "Settings",
    "load_settings",
    "parse_duration",
    "parse_size",
]


class ConfigError(SitetwinError):
    """The configuration is invalid; the message names the bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """Broker connection and subscription (Telegraf ``mqtt_consumer`` names)."""

    servers: list[str] = ["tcp://127.0.0.1:1883"]
    topics: list[str] = ["sites/+/+"]
    shared_group: str = "sitetwin"
    qos: Literal[0, 1] = 1
    client_id: str = "sitetwin-collector"
    persistent_session: bool = True
    session_expiry: Duration = 7 * 86400.0
    keepalive: Duration = 30.0
    connection_timeout: Duration = 10.0
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_skip_verify: bool = False
    max_payload_bytes: Size = 1024 * 1024


class InfluxSettings(_Section):
    """Where readings are written (line protocol) and read back (InfluxQL)."""

    url: str = "http://127.0.0.1:8086"
    mode: Literal["v1", "v2"] = "v1"
    database: str = "sitetwin"
    retention_policy: str = ""
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    org: str = ""
    bucket: str = ""
    timeout: Duration = 10.0
    create_database: bool = True


class CollectorSettings(_Section):
    """Batching, acknowledgement and self-metrics of ``sitetwin run``."""

    batch_size: int = Field(default=5000, ge=1)
    batch_age: Duration = 1.0
    metrics_interval: Duration = 10.0
    live_flush_interval: Duration = 5.0
    max_pending_batches: int = Field(default=4, ge=1)


class SpoolSettings(_Section):
    """On-disk spool used while InfluxDB is unreachable."""

    path: str = ""
    max_bytes: Size = 1024**3
    drain_interval: Duration = 1.0
    fsync: bool = True


class DeadLetterSettings(_Section):
    """Where rejected messages and rows are kept with their reason."""

    path: str = ""
    max_payload_bytes: Size = 16 * 1024


class TwinSettings(_Section):
    """The site registry (SQLite file by default, PostgreSQL by URL)."""

    url: str = ""
    reporting_period: Duration = 60.0
    online_periods: int = Field(default=3, ge=1)

    @property
    def online_window_s(self) -> float:
        """A site is online if seen within this many seconds."""
        return self.reporting_period * self.online_periods


class ServicesSettings(_Section):
    """Local Mosquitto and InfluxDB started by ``sitetwin services up``."""

    state_dir: str = ".sitetwin"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    influxdb_port: int = 8086
    influxdb_rpc_port: int = 8088
    start_timeout: Duration = 30.0


class GrafanaSettings(_Section):
    """Target of ``sitetwin dashboards push``."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None
    folder: str = "sitetwin"
    datasource_uid: str = "sitetwin-influxdb"


class TimeSettings(_Section):
    """The zone people, tariffs, bills and reports live in; storage stays UTC."""

    zone: str = DEFAULT_ZONE

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        get_zone(value)
        return value


class WebSettings(_Section):
    """``sitetwin serve``: where the web app and HTTP API listen, and how logins behave."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    session_lifetime: Duration = 8 * 3600.0
    secure_cookies: bool = False
    login_attempts: int = Field(default=5, ge=1)
    login_window: Duration = 900.0
    grafana_url: str = ""


class RulesSettings(_Section):
    """Rule thresholds and schedules; each rule reads its own sub-table."""

    model_config = ConfigDict(extra="allow", frozen=True)

    enabled: bool = True
    hold_off: Duration = 1800.0
    query_concurrency: int = Field(default=2, ge=1, le=32)


class Settings(BaseSettings):
    """All of sitetwin's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SITETWIN_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    influxdb: InfluxSettings = InfluxSettings()
    collector: CollectorSettings = CollectorSettings()
    spool: SpoolSettings = SpoolSettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    twin: TwinSettings = TwinSettings()
    services: ServicesSettings = ServicesSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    rules: RulesSettings = RulesSettings()
    time: TimeSettings = TimeSettings()
    web: WebSettings = WebSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs (see load_settings); environment wins over it.
        return (env_settings, init_settings)

    # Derived paths: everything local lives under the state dir unless configured.
    @property
    def state_dir(self) -> Path:
        return Path(self.services.state_dir).expanduser().resolve()

    @property
    def spool_path(self) -> Path:
        return Path(self.spool.path).expanduser() if self.spool.path else self.state_dir / "spool"

    @property
    def dead_letter_path(self) -> Path:
        if self.dead_letter.path:
            return Path(self.dead_letter.path).expanduser()
        return self.state_dir / "rejected.sqlite"

    @property
    def twin_url(self) -> str:
        return self.twin.url or f"sqlite:///{self.state_dir / 'twin.sqlite'}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    return f"invalid configuration key '{key}': {first['msg']}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$SITETWIN_CONFIG``), the environment and overrides."""
    data: dict[str, Any] = {}
    path = path or os.environ.get("SITETWIN_CONFIG")
    if path:
        data = _read_toml(Path(path))
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {})
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
