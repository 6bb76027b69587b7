"""Telemetry readings: the payloads of docs/contracts.md section 1, validated once at the edge.

A message on ``sites/{site_id}/{stream}`` carries one reading object or a JSON
array of them.  ``parse_message`` turns the raw bytes into frozen reading
models or into one ``Rejection`` with a reason code; it never raises for bad
input.  A message is all or nothing: if one reading of an array is bad, the
message is rejected whole (so a device's backlog is never half stored).

Reason codes (stable: they become counter names and dead-letter reasons):
``oversize``, ``bad_topic``, ``unknown_stream``, ``bad_site_id``,
``bad_encoding``, ``bad_json``, ``not_a_reading``, ``empty``,
``too_many_readings``, ``site_mismatch``, ``schema``, ``future_ts``, ``ancient_ts``,
``too_old``.

Times: ISO 8601 strings (``Z`` or an offset; a string without an offset is
read as UTC, since every time in the contract is UTC; ASCII digits only) or
epoch seconds.  A reading more than 5 minutes in the future, or before
2000-01-01, is rejected; so is one older than ``max_age_s`` (``too_old``;
``[collector] max_reading_age``, default 400 days).  Why a horizon: one device
with readings spread since 2000 made InfluxDB 1.x open a shard per week it
touched (1 400 shards; its RSS went from 138 to 353 MiB), and a point older than
the retention policy is dropped by InfluxDB anyway.  The check is one integer
comparison per reading against a bound derived from ``now``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, NamedTuple

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from connectors.errors import InvalidIdentifier

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "ID_PATTERN",
    "STREAMS",
    "InterferenceReading",
    "Parsed",
    "PowerReading",
    "Reading",
    "Rejection",
    "TowerReading",
    "check_id",
    "parse_message",
    "parse_topic",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)
_BAND = r"^(n[0-9]{1,3}|B[0-9]{1,3})$"
STREAMS = ("tower", "power", "interference")
FUTURE_TOLERANCE_S = 300
EARLIEST_TS_S = 946684800  # 2000-01-01T00:00:00Z
DEFAULT_MAX_AGE_S = 400 * 86400
MAX_READINGS_PER_MESSAGE = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_id(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid identifier, else raise ``InvalidIdentifier``."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidIdentifier(f"invalid {what} {value!r}: must match {ID_PATTERN}")
    return value


def _to_utc(value: Any) -> datetime:
    if type(value) is int and -100_000_000_000 < value < 100_000_000_000:  # the common case first
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, bool):
        raise ValueError("ts must be an ISO 8601 string or epoch seconds")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("ts must be finite")
        if not -1e11 < value < 1e11:
            raise ValueError("ts epoch seconds out of range (milliseconds sent as seconds?)")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        if not value.isascii():  # fromisoformat reads full-width and other Unicode digits
            raise ValueError(f"ts {value[:40]!r} is not ISO 8601 (ASCII digits only)")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts {value[:40]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is before year 1 in UTC
            raise ValueError(f"ts {value[:40]!r} is out of range") from None
    raise ValueError("ts must be an ISO 8601 string or epoch seconds")


Timestamp = Annotated[datetime, BeforeValidator(_to_utc)]
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class _Reading(BaseModel):
    """Fields common to every stream."""

    model_config = ConfigDict(
        frozen=True, strict=True, allow_inf_nan=False, extra="ignore", str_max_length=64
    )
    stream: ClassVar[str]
    site_id: Identifier
    ts: Timestamp

    @property
    def ts_ns(self) -> int:
        """Timestamp in integer nanoseconds since the epoch (line protocol precision)."""
        delta = self.ts - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class TowerReading(_Reading):
    """Site environment / power plant (FSU) reading."""

    stream: ClassVar[str] = "tower"
    mains_ok: bool
    on_battery: bool | None = None
    generator_running: bool | None = None
    battery_voltage_v: float | None = Field(default=None, ge=0, le=60)
    battery_soc_pct: float | None = Field(default=None, ge=0, le=100)
    rectifier_load_a: float | None = Field(default=None, ge=0)
    cabinet_temp_c: float | None = Field(default=None, ge=-40, le=90)
    humidity_pct: float | None = Field(default=None, ge=0, le=100)
    door_open: bool | None = None
    tilt_deg: float | None = Field(default=None, ge=0, le=90)


class PowerReading(_Reading):
    """Electricity meter reading (cumulative imported energy may reset on a meter swap)."""

    stream: ClassVar[str] = "power"
    meter_id: Identifier
    energy_kwh: float = Field(ge=0)
    power_kw: float | None = Field(default=None, ge=0, le=500)
    voltage_v: float | None = Field(default=None, ge=0, le=1000)
    current_a: float | None = Field(default=None, ge=0)
    power_factor: float | None = Field(default=None, ge=-1, le=1)


Dbm = Annotated[float, Field(ge=-140, le=-40)]


def _as_tuple(value: Any) -> Any:
    # JSON arrays arrive as lists; strict mode would refuse a list for a tuple field.
    return tuple(value) if isinstance(value, list) else value


class InterferenceReading(_Reading):
    """Uplink interference of one cell over one reporting period (``ts`` = its end)."""

    stream: ClassVar[str] = "interference"
    cell_id: Identifier
    band: Annotated[str, Field(pattern=_BAND)]
    ul_interference_dbm: Dbm
    prb_dbm: Annotated[tuple[Dbm, ...], BeforeValidator(_as_tuple)] | None = Field(
        default=None, max_length=275
    )
    ul_prb_usage_pct: float | None = Field(default=None, ge=0, le=100)
    period_s: int = Field(default=900, gt=0, le=86400)


Reading = TowerReading | PowerReading | InterferenceReading
MODELS: dict[str, type[TowerReading] | type[PowerReading] | type[InterferenceReading]] = {
    "tower": TowerReading,
    "power": PowerReading,
    "interference": InterferenceReading,
}
_KNOWN = {name: frozenset(model.model_fields) for name, model in MODELS.items()}
# The models' validators called directly: ``model_validate`` adds about 1 us a message
# (a Python frame and keyword handling) on the collector's hot path.
_VALIDATORS: dict[str, Callable[[Any], Reading]] = {
    name: model.__pydantic_validator__.validate_python for name, model in MODELS.items()}
# Topics already parsed (a fleet has a bounded set of them): about 1 us a message less.
_TOPICS: dict[str, tuple[str, str] | Rejection] = {}
_TOPIC_CACHE_SIZE = 200_000


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused: a stable ``reason`` code and a human ``detail``."""

    reason: str
    detail: str


class Parsed(NamedTuple):
    """The outcome of one MQTT message: readings, or a rejection (never both).

    A named tuple rather than a frozen dataclass: one is made per message on the
    collector's hot path, and a frozen dataclass's ``__init__`` (``object.__setattr__``
    per field) cost 0.6 us of the ~4 us ``parse_message`` takes for a tower reading."""

    site_id: str | None
    stream: str | None
    readings: tuple[Reading, ...] = ()
    rejection: Rejection | None = None
    unknown_fields: int = 0

    @property
    def ok(self) -> bool:
        return self.rejection is None


def _reject(reason: str, detail: str, site_id: str | None = None, stream: str | None = None) -> Parsed:
    return Parsed(site_id=site_id, stream=stream, rejection=Rejection(reason, detail))


def parse_topic(topic: str) -> tuple[str, str] | Rejection:
    """``sites/{site_id}/{stream}`` -> ``(site_id, stream)``, or the reason it is not one."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "sites":
        return Rejection("bad_topic", f"topic {topic[:200]!r} is not sites/{{site_id}}/{{stream}}")
    site_id, stream = parts[1], parts[2]
    if not _ID.fullmatch(site_id):
        return Rejection("bad_site_id", f"site_id {site_id[:80]!r} in topic must match {ID_PATTERN}")
    if stream not in MODELS:
        return Rejection("unknown_stream", f"stream {stream[:40]!r} is not one of {', '.join(STREAMS)}")
    return site_id, stream


def _short(value: Any, limit: int = 80) -> str:
    """``str(value)`` cut to ``limit``, safe for values nested too deep to print."""
    try:
        return str(value)[:limit]
    except (RecursionError, ValueError):
        return f"a deeply nested {type(value).__name__}"


def _describe(exc: ValidationError, index: int | None) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "reading"
    prefix = f"reading[{index}]." if index is not None else ""
    try:
        value = repr(err.get("input"))[:60]
    except (RecursionError, ValueError):  # nested too deep to print
        value = f"a deeply nested {type(err.get('input')).__name__}"
    return f"{prefix}{where}: {err['msg']} (got {value})"


def parse_message(
    topic: str,
    payload: bytes,
    now: datetime | float,
    *,
    max_payload_bytes: int = 1024 * 1024,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> Parsed:
    """Validate one MQTT message; return its readings or a ``Rejection``. Never raises for bad input.

    A reading older than ``max_age_s`` before ``now`` is ``too_old`` (the whole message with it).
    """
    if len(payload) > max_payload_bytes:
        return _reject("oversize", f"payload of {len(payload)} bytes exceeds {max_payload_bytes}")
    where = _TOPICS.get(topic)
    if where is None:
        where = parse_topic(topic)
        if len(_TOPICS) >= _TOPIC_CACHE_SIZE:
            _TOPICS.clear()
        _TOPICS[topic] = where
    if isinstance(where, Rejection):
        return Parsed(site_id=None, stream=None, rejection=where)
    site_id, stream = where
    try:
        # orjson refuses invalid UTF-8 too; which of the two it was is only asked on failure.
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _reject("bad_encoding", f"payload is not UTF-8: {bad.reason} at byte {bad.start}",
                           site_id, stream)
        return _reject("bad_json", f"payload is not JSON: {str(exc)[:160]}", site_id, stream)

    items: Sequence[Any]
    if type(doc) is dict:
        items, indexed = (doc,), False
    elif isinstance(doc, list):
        if not doc:
            return _reject("empty", "payload is an empty array", site_id, stream)
        if len(doc) > MAX_READINGS_PER_MESSAGE:
            return _reject("too_many_readings",
                           f"array of {len(doc)} readings exceeds {MAX_READINGS_PER_MESSAGE}",
                           site_id, stream)
        items, indexed = doc, True
    else:
        return _reject("not_a_reading", f"payload is a JSON {type(doc).__name__}, not an object or array",
                       site_id, stream)

    # Bounds in float seconds: ``datetime.timestamp`` is one C call, where the exact
    # nanoseconds (``ts_ns``) cost a timedelta and three attribute reads; at 1.8e9 s a
    # double resolves 0.25 us, finer than the microseconds a timestamp carries.
    now_s = now if type(now) is float else (now.timestamp() if isinstance(now, datetime) else float(now))
    latest_s = now_s + FUTURE_TOLERANCE_S
    oldest_s = now_s - max_age_s
    validate = _VALIDATORS[stream]
    known = _KNOWN[stream]
    readings: list[Reading] = []
    unknown = 0
    for i, item in enumerate(items):
        if type(item) is not dict:
            return _reject("not_a_reading", f"reading[{i}] is a JSON {type(item).__name__}, not an object",
                           site_id, stream)
        if "site_id" in item:
            given = item["site_id"]
            if given != site_id:
                return _reject("site_mismatch",
                               f"{f'reading[{i}].' if indexed else ''}site_id {_short(given)!r}"
                               f" differs from the topic's {site_id!r}", site_id, stream)
        else:
            item["site_id"] = site_id
        try:
            reading = validate(item)
        except ValidationError as exc:
            return _reject("schema", _describe(exc, i if indexed else None), site_id, stream)
        ts_s = reading.ts.timestamp()
        if ts_s > latest_s or ts_s < oldest_s or ts_s < EARLIEST_TS_S:
            return _time_rejection(reading, ts_s, i if indexed else None, latest_s, max_age_s,
                                   site_id, stream)
        if len(item) > len(known) or not known.issuperset(item):
            unknown += len(item.keys() - known)
        readings.append(reading)
    return Parsed(site_id, stream, tuple(readings), None, unknown)


def _time_rejection(reading: Reading, ts_s: float, index: int | None, latest_s: float,
                    max_age_s: float, site_id: str, stream: str) -> Parsed:
    where = f"reading[{index}]." if index is not None else ""
    if ts_s > latest_s:
        return _reject("future_ts", f"{where}ts {reading.ts.isoformat()}"
                       f" is more than {FUTURE_TOLERANCE_S}s in the future", site_id, stream)
    if ts_s < EARLIEST_TS_S:
        return _reject("ancient_ts", f"{where}ts {reading.ts.isoformat()} is before 2000-01-01",
                       site_id, stream)
    return _reject("too_old", f"{where}ts {reading.ts.isoformat()}"
                   f" is older than the {max_age_s / 86400:g}-day horizon"
                   " ([collector] max_reading_age)", site_id, stream)

