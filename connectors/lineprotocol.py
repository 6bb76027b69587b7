"""InfluxDB line protocol: readings and arbitrary points, escaped correctly.

Identifiers are validated before they get here, so tag values from readings
need no escaping; ``line`` is the general path for points whose tag values
come from people (county names, summaries) and escapes them.  Line protocol
cannot carry a newline in a measurement, tag or field key, or tag value: those
raise ``LineProtocolError`` rather than being altered silently.  In string
field values a newline is written as the two characters ``\\n``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from connectors.errors import LineProtocolError
from connectors.reading import InterferenceReading, PowerReading, Reading, TowerReading

__all__ = [
    "encode",
    "encode_reading",
    "escape_measurement",
    "escape_tag",
    "field_value",
    "line",
    "prb_field",
]

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_FORBIDDEN = ("\n", "\r")


def _check(value: str, what: str) -> str:
    if not value:
        raise LineProtocolError(f"{what} must not be empty")
    if any(c in value for c in _FORBIDDEN):
        raise LineProtocolError(f"{what} {value[:60]!r} contains a line break")
    if value.endswith("\\"):
        # A trailing backslash would escape the separator that follows it.
        raise LineProtocolError(f"{what} {value[:60]!r} ends with a backslash")
    return value


def escape_measurement(name: str) -> str:
    return _check(name, "measurement").translate(_MEASUREMENT_ESCAPES)


def escape_tag(value: str) -> str:
    """Escape a tag key or tag value (commas, equals signs, spaces)."""
    return _check(value, "tag").translate(_TAG_ESCAPES)


def field_value(value: object) -> str:
    """Format one field value: bool, integer (``i`` suffix), float, or quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"field value {value!r} is not finite")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\r", "\\r").replace("\n", "\\n")
        return f'"{escaped}"'
    raise LineProtocolError(f"cannot write a {type(value).__name__} as a field value")


def line(
    measurement: str,
    tags: Mapping[str, object],
    fields: Mapping[str, object],
    ts_ns: int | None = None,
) -> str:
    """One point as a line of line protocol. Empty/None tags and None fields are left out."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value is None or value == "":
            continue
        parts.append(f"{escape_tag(key)}={escape_tag(str(value))}")
    head = ",".join(parts)
    body = ",".join(
        f"{escape_tag(k)}={field_value(v)}" for k, v in fields.items() if v is not None
    )
    if not body:
        raise LineProtocolError(f"point of {measurement!r} has no field")
    return f"{head} {body}" if ts_ns is None else f"{head} {body} {int(ts_ns)}"


def prb_field(index: int) -> str:
    """Field name of one PRB in measurement ``interference_prb``."""
    return f"prb_{index:03d}"


_PRB_FIELDS = tuple(prb_field(i) for i in range(275))

_TOWER_FIELDS = (
    "mains_ok", "on_battery", "generator_running", "battery_voltage_v", "battery_soc_pct",
    "rectifier_load_a", "cabinet_temp_c", "humidity_pct", "door_open", "tilt_deg",
)
_POWER_FIELDS = ("energy_kwh", "power_kw", "voltage_v", "current_a", "power_factor")
_INTERFERENCE_FIELDS = ("ul_interference_dbm", "ul_prb_usage_pct")


def _fields(reading: Reading, names: tuple[str, ...]) -> str:
    values = reading.__dict__  # a validated model's fields; getattr per name cost ~10 % more
    out = []
    for name in names:
        value = values[name]
        if value is None:
            continue
        if value is True:
            out.append(f"{name}=true")
        elif value is False:
            out.append(f"{name}=false")
        else:
            out.append(f"{name}={float(value)!r}")
    return ",".join(out)


def encode_reading(reading: Reading) -> str:
    """The line(s) of one validated reading (its identifiers need no escaping)."""
    ts = reading.ts_ns
    if isinstance(reading, TowerReading):
        return f"tower,site_id={reading.site_id} {_fields(reading, _TOWER_FIELDS)} {ts}"
    if isinstance(reading, PowerReading):
        return (f"power,meter_id={reading.meter_id},site_id={reading.site_id} "
                f"{_fields(reading, _POWER_FIELDS)} {ts}")
    if isinstance(reading, InterferenceReading):
        tags = f"band={reading.band},cell_id={reading.cell_id},site_id={reading.site_id}"
        out = (f"interference,{tags} {_fields(reading, _INTERFERENCE_FIELDS)},"
               f"period_s={reading.period_s}i {ts}")
        if reading.prb_dbm:
            prbs = ",".join(f"{_PRB_FIELDS[i]}={float(v)!r}" for i, v in enumerate(reading.prb_dbm))
            out += f"\ninterference_prb,{tags} {prbs} {ts}"
        return out
    raise LineProtocolError(f"not a reading: {type(reading).__name__}")


def encode(readings: Iterable[Reading]) -> bytes:
    """Line protocol for many readings, newline separated, as UTF-8 bytes."""
    return "\n".join(encode_reading(r) for r in readings).encode()
