"""InfluxDB line protocol read back: points, and the points that are readings of the contract.

``parse_line`` reads one line as InfluxDB does (escapes ``\\,`` ``\\=`` ``\\ ``
in measurement, tag keys and values and field keys; string fields in double
quotes with ``\\"`` and ``\\\\``; integers ``12i``, unsigned ``12u``, floats,
booleans ``t``/``true``/``F``/``FALSE``...; an optional timestamp in the
request's precision) and raises ``LineError`` with the column of the fault.

``to_reading`` maps a point onto the contract (README "Data in InfluxDB"):
measurement ``tower``, ``power`` or ``interference``, identifiers from the tags
(``site_id``; ``meter_id``; ``cell_id`` and ``band``), the reading's fields from
the fields.  Other tags (Telegraf adds ``host``) are ignored: like a reading's
unknown fields they are not stored and do not refuse the line.  Per-PRB values
(``interference_prb`` with ``prb_000``...) are joined with the ``interference``
line of the same cell and time in the same request (``join_prb``).  A point
with no timestamp gets the time it was received, as InfluxDB does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.reading import Rejection

__all__ = ["PRECISION_NS", "LineError", "Point", "join_prb", "parse_line", "to_reading"]

PRECISION_NS = {"ns": 1, "n": 1, "us": 1_000, "u": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                "m": 60_000_000_000, "h": 3_600_000_000_000}
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})
_INT = re.compile(r"^[+-]?\d+$")
_PRB = re.compile(r"^prb_(\d{3})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Which tags identify a stream's reading, and which fields it may carry.
IDENTITY = {"tower": ("site_id",), "power": ("site_id", "meter_id"),
            "interference": ("site_id", "cell_id", "band")}


class LineError(ValueError):
    """A line that is not line protocol; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} at column {column}")
        self.column = column


@dataclass(frozen=True, slots=True)
class Point:
    """One parsed line."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]  # a scalar per field; the PRB vector (a list) after ``join_prb``
    ts_ns: int | None


def _until(text: str, i: int, stops: str) -> tuple[str, int]:
    """Unescape from ``i`` up to the first unescaped char of ``stops``; (value, its index)."""
    out = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in ",= \\\"":
            out.append(text[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _field_value(raw: str, column: int) -> float | int | bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    if raw.endswith(("i", "u")) and _INT.match(raw[:-1]):
        value = int(raw[:-1])
        if raw.endswith("u") and value < 0:
            raise LineError(f"unsigned integer {raw!r} is negative", column)
        return value
    try:
        return float(raw)
    except ValueError:
        raise LineError(f"invalid field value {raw[:40]!r}", column) from None


def parse_line(line: str, *, precision_ns: int = 1) -> Point:
    """One line of line protocol (no trailing newline); raises ``LineError``."""
    measurement, i = _until(line, 0, ", ")
    if not measurement:
        raise LineError("missing measurement", 1)
    tags: dict[str, str] = {}
    n = len(line)
    while i < n and line[i] == ",":
        key, j = _until(line, i + 1, "=, ")
        if j >= n or line[j] != "=" or not key:
            raise LineError("tag without key=value", i + 2)
        value, i = _until(line, j + 1, ", =")
        if not value:
            raise LineError(f"tag {key!r} has no value", j + 2)
        tags[key] = value
    if i >= n or line[i] != " ":
        raise LineError("missing fields", i + 1)
    i += 1
    fields: dict[str, float | int | bool | str] = {}
    while True:
        key, j = _until(line, i, "= ,")
        if j >= n or line[j] != "=" or not key:
            raise LineError("field without key=value", i + 1)
        j += 1
        if j < n and line[j] == '"':
            out = []
            j += 1
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n and line[j + 1] in '"\\':
                    j += 1
                out.append(line[j])
                j += 1
            if j >= n:
                raise LineError(f"unterminated string in field {key!r}", i + 1)
            fields[key] = "".join(out)
            j += 1
        else:
            start = j
            while j < n and line[j] not in ", ":
                j += 1
            fields[key] = _field_value(line[start:j], start + 1)
        if j < n and line[j] == ",":
            i = j + 1
            continue
        break
    ts_ns = None
    rest = line[j:].strip()
    if rest:
        if not _INT.match(rest):
            raise LineError(f"invalid timestamp {rest[:30]!r}", j + 2)
        ts_ns = int(rest) * precision_ns
    return Point(measurement, tags, fields, ts_ns)


def _iso(ts_ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ts_ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_reading(point: Point, received_ns: int) -> tuple[str, str, dict] | Rejection:
    """``(site_id, stream, document)`` for a contract measurement, else the reason it is not one."""
    stream = point.measurement
    identity = IDENTITY.get(stream)
    if identity is None:
        return Rejection("unknown_measurement", f"measurement {stream[:60]!r} is not one of "
                         f"{', '.join(IDENTITY)} (or interference_prb with its interference line)")
    missing = [t for t in identity if t not in point.tags]
    if missing:
        return Rejection("schema", f"{stream} needs tag(s) {', '.join(missing)}")
    ts_ns = point.ts_ns if point.ts_ns is not None else received_ns
    if not -10**20 < ts_ns < 10**20:
        return Rejection("schema", f"timestamp {ts_ns} ns is out of range")
    try:
        ts = _iso(ts_ns)
    except OverflowError:
        return Rejection("schema", f"timestamp {ts_ns} ns is out of range")
    doc: dict = {"ts": ts}
    for tag in identity[1:]:
        doc[tag] = point.tags[tag]
    for key, value in point.fields.items():
        if key in doc or key == "site_id":
            return Rejection("schema", f"{stream}: {key!r} given as a field; it is a tag")
        doc[key] = value
    return point.tags["site_id"], stream, doc


def join_prb(points: list[tuple[int, Point]]) -> tuple[list[tuple[int, Point]],
                                                       list[tuple[int, Rejection]]]:
    """Fold ``interference_prb`` points into the ``interference`` point of the same
    cell, band, site and time as its ``prb_dbm``; a PRB point without one is refused."""
    def key_of(p):
        return (p.tags.get("site_id"), p.tags.get("cell_id"), p.tags.get("band"), p.ts_ns)

    prbs = {key_of(p): (n, p) for n, p in points if p.measurement == "interference_prb"}
    if not prbs:
        return points, []
    out: list[tuple[int, Point]] = []
    refused: list[tuple[int, Rejection]] = []
    used = set()
    for n, p in points:
        if p.measurement == "interference_prb":
            continue
        if p.measurement == "interference" and (hit := prbs.get(key_of(p))) is not None:
            used.add(key_of(p))
            values: dict[int, object] = {}
            for k, v in hit[1].fields.items():
                m = _PRB.match(k)
                if m is None:
                    refused.append((hit[0], Rejection("schema", f"interference_prb field {k!r} "
                                                      "is not prb_NNN")))
                    break
                values[int(m[1])] = v
            else:
                if sorted(values) != list(range(len(values))):
                    refused.append((hit[0], Rejection("schema", "interference_prb has a gap in "
                                                      "prb_000...")))
                else:
                    p = Point(p.measurement, p.tags,
                              {**p.fields, "prb_dbm": [values[i] for i in range(len(values))]},
                              p.ts_ns)
        out.append((n, p))
    for key, (n, _p) in prbs.items():
        if key not in used:
            refused.append((n, Rejection("unknown_measurement", "interference_prb without an "
                                         "interference line of the same cell and time")))
    return out, refused
