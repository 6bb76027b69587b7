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
    "Settings",
    "Size",
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
    # Empty = a plain subscription (one collector): Mosquitto restores it after a restart.
    # A group ($share/<group>/...) splits the stream between collectors; see
    # docs/operations.md for which broker keeps a group's messages while no member is on.
    shared_group: str = ""
    qos: Literal[0, 1] = 1
    client_id: str = "sitetwin-collector"
    persistent_session: bool = True
    session_expiry: Duration = 7 * 86400.0
    keepalive: Duration = 30.0
    connection_timeout: Duration = 10.0
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    # The collector's transport: "lean" = paho with buffered reads and one write for a
    # batch's PUBACKs (connectors/transport.py); "paho" = paho as it comes.
    client: Literal["paho", "lean"] = "lean"
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
    # Batches written to InfluxDB at once (one thread each); acks still go out in order.
    writers: int = Field(default=2, ge=1, le=16)
    # Exit non-zero when nothing was made durable for this long while messages wait (0 = off).
    watchdog: Duration = 600.0
    # A peer instance whose lock has been free this long is adopted: its spool drained,
    # its broker session emptied and ended (0 = never adopt).
    adopt_after: Duration = 30.0
    # Readings older than this are dead-lettered as ``too_old`` (see connectors.reading).
    max_reading_age: Duration = Field(default=400 * 86400.0, gt=0)
    # Collector processes of ``sitetwin run``: a number, or "auto" = one per core when
    # ``mqtt.shared_group`` is set and 1 with a plain subscription (sitetwin.supervisor).
    workers: int | Literal["auto"] = "auto"

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError('workers must be a positive number or "auto"')
        return value


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
    max_bytes: Size = 256 * 1024**2
    max_age: Duration = 30 * 86400.0


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
    """Target of ``sitetwin dashboards push``, and what the built dashboards show."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None
    folder: str = "sitetwin"
    datasource_uid: str = "sitetwin-influxdb"
    # "browser" (each viewer's own zone), "time" (the [time] zone), or a zone name.
    timezone: str = "browser"
    # The geomap base layer: an XYZ tile URL with {z}/{x}/{y}; empty = Grafana's default.
    map_tiles: str = ""
    map_attribution: str = ""
    # Grafana alert rules (provisioning/alerting/sitetwin.yaml): evaluation interval and
    # how long a condition must hold before the alert fires.
    alert_interval: Duration = 60.0
    alert_for: Duration = 300.0

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value not in ("browser", "time", "utc"):
            get_zone(value)
        return value

    @field_validator("map_tiles")
    @classmethod
    def _xyz_url(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith(("http://", "https://"))
                          and all(p in value for p in ("{z}", "{x}", "{y}"))):
            raise ValueError("map_tiles must be an http(s) XYZ tile URL with {z}, {x} and {y}")
        return value


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


SEVERITIES = ("info", "warning", "critical")
NotifyEvent = Literal["open", "escalate", "resolve", "review", "remind"]
EVENTS: tuple[NotifyEvent, ...] = ("open", "escalate", "resolve", "review", "remind")


class ChannelSettings(_Section):
    """One notification channel: an Apprise URL and the flags routed to it.

    The URL usually holds a token or a password, so it is a secret: it is never
    logged or printed (Apprise's privacy form is shown instead).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: SecretStr
    kinds: list[str] = []
    min_severity: Literal["info", "warning", "critical"] = "warning"
    counties: list[str] = []
    events: list[NotifyEvent] = list(EVENTS)
    digest: Duration = 0.0
    quiet_hours: str = ""

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        if value.strip():
            quiet_window(value)
        return value.strip()


def quiet_window(text: str) -> tuple[int, int]:
    """``"22:00-07:00"`` as minutes after local midnight (start, end); the end may be earlier."""
    import re

    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise ValueError(f"quiet_hours must look like 22:00-07:00, not {text!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ValueError(f"quiet_hours {text!r}: times are HH:MM and start differs from end")
    return h1 * 60 + m1, h2 * 60 + m2


class NotifySettings(_Section):
    """Flag changes sent to people through Apprise channels (docs/notifications.md)."""

    enabled: bool = True
    interval: Duration = 15.0
    retries: int = Field(default=5, ge=0, le=100)
    retry_backoff: Duration = 30.0
    repeat: Duration = 0.0
    channels: list[ChannelSettings] = []

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, value: list[ChannelSettings]) -> list[ChannelSettings]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique: {', '.join(dupes)}")
        return value


class PmVendorSettings(_Section):
    """How one vendor's 3GPP PM counters map onto the ``interference`` stream.

    ``dBm = value * scale + offset`` for every counter named here.  A counter a
    file carries and no vendor table names is counted and ignored.
    """

    match: str = ""  # case-insensitive part of fileHeader@vendorName; empty = the key
    interference: str = ""  # mean uplink interference per PRB of the cell
    prb_prefix: str = ""  # per-PRB counters: prefix + PRB index (e.g. "...PRB0")
    prb_first_index: int = Field(default=0, ge=0)
    usage: str = ""  # uplink PRB usage, %
    band: str = ""  # band of every cell of this vendor, when the cells file lacks one
    scale: float = 1.0
    offset: float = 0.0


BUILTIN_PM_VENDORS: dict[str, PmVendorSettings] = {
    "sitetwin": PmVendorSettings(
        match="sitetwin", interference="UL.Interference.Mean",
        prb_prefix="UL.Interference.PRB", usage="UL.PRB.Usage"),
    "huawei": PmVendorSettings(
        match="huawei", interference="L.UL.Interference.Avg",
        prb_prefix="L.UL.Interference.PRB"),
}


class PmAdapterSettings(_Section):
    """``sitetwin adapters pm``: a directory of 3GPP TS 32.435 measurement files."""

    watch_dir: str = ""
    archive_dir: str = ""
    rejected_dir: str = ""
    ledger: str = ""
    poll_interval: Duration = 5.0
    settle: Duration = 2.0
    cells_file: str = ""
    site_pattern: str = r"(?:ManagedElement|MeContext)=(?P<site_id>[^,]+)"
    cell_pattern: str = (r"(?:NRCellDU|NRCellCU|EUtranCellFDD|EUtranCellTDD|EUtranCell|NRCell)"
                         r"=(?P<cell>[^,]+)")
    cell_id_format: str = "{cell}"
    default_vendor: str = "sitetwin"
    keep_suspect: bool = False
    vendors: dict[str, PmVendorSettings] = dict(BUILTIN_PM_VENDORS)

    @field_validator("vendors", mode="after")
    @classmethod
    def _over_builtins(cls, value: dict[str, PmVendorSettings]) -> dict[str, PmVendorSettings]:
        # A vendor table in the file adds to (or replaces one of) the built-in tables.
        return {**BUILTIN_PM_VENDORS, **value}

    @field_validator("site_pattern", "cell_pattern")
    @classmethod
    def _a_regex(cls, value: str) -> str:
        import re

        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if not compiled.groupindex:
            raise ValueError("needs a named group, (?P<site_id>...) or (?P<cell>...)")
        return value


class ListenerAdapterSettings(_Section):
    """``sitetwin adapters listen``: an InfluxDB-compatible write endpoint."""

    listen: str = "127.0.0.1:8186"
    tokens: list[SecretStr] = []
    max_body_bytes: Size = 32 * 1024 * 1024
    ack_timeout: Duration = 30.0


class GatewayAdapterSettings(_Section):
    """``sitetwin adapters gateway``: devices polled over Modbus TCP on a schedule."""

    devices_file: str = ""
    buffer_dir: str = ""
    interval: Duration = 60.0
    timeout: Duration = 2.0
    retries: int = Field(default=2, ge=0, le=10)
    backoff_max: Duration = 600.0
    workers: int = Field(default=16, ge=1, le=256)
    flush_interval: Duration = 1.0
    fsync: bool = True


class AdaptersSettings(_Section):
    """Producers that turn other systems' data into readings of the MQTT contract."""

    pm: PmAdapterSettings = PmAdapterSettings()
    listener: ListenerAdapterSettings = ListenerAdapterSettings()
    gateway: GatewayAdapterSettings = GatewayAdapterSettings()


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
    notify: NotifySettings = NotifySettings()
    adapters: AdaptersSettings = AdaptersSettings()
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
