"""CSV imports (docs/contracts.md section 2): read, validate every row, upsert all or nothing.

Used by ``sitetwin sites|reservations|tariffs|bills import``; rows go into the
twin's tables (``twin.models``).  A file is UTF-8 (a BOM is tolerated) with a
header row; columns may come in any order; unknown columns are ignored with a
warning.  Every bad row is
reported with its line (the header is line 1), column and reason.  By default
one bad row imports nothing (``ImportFailed`` carries every error); with
``skip_invalid=True`` the valid rows are imported and the rejected ones are
written, with their reasons, to a rejects file.  Rows are upserted by their
key (``site_id``, ``bill_id``, ...), in bulk, in one transaction, so a
re-import of the same file changes nothing.

Dates and times are read as people write them (docs/contracts.md, "Identifiers and times"): a date
without a time (``2026-10-01``) or a time without an offset is local time in the
configured zone (``[time] zone``, passed in as ``zone``), so ``2026-10-01`` in
Asia/Shanghai is stored as ``2026-09-30T16:00:00Z``; ``Z`` or an offset keeps its
instant.  A bill's ``period_end`` is exclusive.

Text cells are stored exactly as given, even ones that start with ``=``,
``+``, ``-`` or ``@``; exports neutralise them (``core.text.neutralise``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Table, select, tuple_
from sqlalchemy.orm import Session

from connectors.errors import InvalidIdentifier
from connectors.reading import check_id
from core.creditcode import check_credit_code
from core.states import State
from core.tariff import HOURS_EXAMPLE, format_hours, normalise_hours, parse_hours
from core.text import control_character, neutralise
from core.timeutil import DEFAULT_ZONE, as_utc, format_local, get_zone, parse_instant
from twin.errors import ImportFailed, RowError
from twin.history import record_reservations, record_supply
from twin.lifecycle import UNDATED_IMPORT_NOTE
from twin.models import (
    Bill,
    Feeder,
    Interferer,
    LifecycleEvent,
    LiveSiteState,
    MaintenanceWindow,
    Reservation,
    Site,
    Substation,
    Tariff,
    utcnow,
)
from twin.store import Store, upsert_insert

T = TypeVar("T")

__all__ = [
    "BILLS",
    "FEEDERS",
    "INTERFERERS",
    "MAINTENANCE",
    "RESERVATIONS",
    "SCHEMAS",
    "SITES",
    "SUBSTATIONS",
    "TARGETS",
    "TARIFFS",
    "Column",
    "ImportResult",
    "ParsedFile",
    "Schema",
    "import_csv",
    "read_rows",
]

CHUNK_ROWS = 5000


# --- cell parsers: str -> value, or ValueError with a reason for a person ---------------------

# Numbers as a spreadsheet writes them: ASCII digits, '.' for decimals, an exponent.  float()
# and int() also read '3_0' (as 30), full-width and other Unicode digits, 'nan' and 'inf'.
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _no_control(value: str) -> str:
    found = control_character(value)  # a NUL in a name used to crash the XLSX reports
    if found:
        raise ValueError(f"contains {found}")
    return value


def text(max_len: int = 200) -> Callable[[str], str]:
    def parse(cell: str) -> str:
        value = _no_control(cell.strip())
        if len(value) > max_len:
            raise ValueError(f"longer than {max_len} characters")
        return value
    return parse


def identifier(cell: str) -> str:
    try:
        return check_id(cell.strip())
    except InvalidIdentifier:
        raise ValueError(f"{cell!r} is not an identifier (letters, digits, _ . -; at most 64)")\
            from None


def number(lo: float | None = None, hi: float | None = None, *,
           above: float | None = None) -> Callable[[str], float]:
    def parse(cell: str) -> float:
        if not _NUMBER.match(cell.strip()):
            raise ValueError(f"{cell!r} is not a number (ASCII digits, '.' for decimals,"
                             " no separators)")
        value = float(cell)
        if not math.isfinite(value):
            raise ValueError(f"{cell!r} is not a finite number")
        if lo is not None and value < lo:
            raise ValueError(f"{value:g} is below {lo:g}")
        if hi is not None and value > hi:
            raise ValueError(f"{value:g} is above {hi:g}")
        if above is not None and value <= above:
            raise ValueError(f"{value:g} must be above {above:g}")
        return value
    return parse


def integer(lo: int, hi: int) -> Callable[[str], int]:
    def parse(cell: str) -> int:
        if not _INTEGER.match(cell.strip()):
            raise ValueError(f"{cell!r} is not a whole number (ASCII digits)")
        value = int(cell.strip())
        if not lo <= value <= hi:
            raise ValueError(f"{value} is not within {lo}-{hi}")
        return value
    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(cell: str) -> str:
        value = cell.strip()
        if value not in options:
            raise ValueError(f"{value!r} is not one of {'|'.join(options)}")
        return value
    return parse


def timestamp(cell: str, zone: str | tzinfo = DEFAULT_ZONE) -> datetime:
    """ISO 8601 date or date-time as UTC: a date, or a time without an offset, is local in
    ``zone``; ``Z`` or an offset keeps its instant (docs/contracts.md, "Identifiers and times")."""
    try:
        return parse_instant(cell, zone)
    except ValueError:
        raise ValueError(f"{cell.strip()!r} is not an ISO 8601 date (2026-11-24, 2026-11-24T08:15"
                         " local, or 2026-11-24T00:15:00Z)") from None


def credit_code(cell: str) -> str:
    return check_credit_code(cell)


def effective_date(cell: str) -> str:
    """An ISO 8601 date or date-time, checked here and read in the zone at import
    (``twin.history``): a date is local midnight, like every date a person types."""
    value = cell.strip()
    try:
        parse_instant(value, "UTC")
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date (2026-11-24 or"
                         " 2026-11-24T08:15:00+08:00)") from None
    return value


def operators(cell: str) -> str:
    items = [o.strip() for o in _no_control(cell).split(";")]
    if any(not o for o in items):
        raise ValueError("operators is a ';'-separated list without empty entries")
    joined = ";".join(items)
    if len(joined) > 200:
        raise ValueError("longer than 200 characters")
    return joined


def hours(cell: str) -> str:
    """Time-of-use hours, read by ``core.tariff`` exactly as the overcharging rule reads them."""
    return normalise_hours(cell)


# --- schemas ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Column:
    """One CSV column: its parser, whether it is required, and its default when empty."""

    name: str
    parse: Callable[..., Any]
    required: bool = True
    default: Any = None

    @property
    def zoned(self) -> bool:
        """A date or time column: its parser is told the zone of local times."""
        return self.parse is timestamp or getattr(self.parse, "zoned", False)


@dataclass(frozen=True, slots=True)
class Schema:
    """One import format: its columns, its key, and the table rows are upserted into."""

    name: str
    table: Table | None  # None: a file that is read (read_rows) but not stored
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    # Cross-column checks of one parsed row: [(column, reason)].
    check: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None
    # Columns whose value must name a row of another table (or of this file, see sites).
    references: tuple[tuple[str, Table, str], ...] = ()
    # Columns written on insert but never overwritten by a re-import.
    insert_only: tuple[str, ...] = ()
    # Added to every row (not in the file), e.g. updated_at.
    stamped: tuple[str, ...] = ()
    # Columns read from the file but not stored in ``table`` (used by import hooks).
    not_stored: tuple[str, ...] = ()
    # What makes a row unique within one file, if more than ``key`` (a history's date).
    row_key: tuple[str, ...] | None = None

    @property
    def by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}


def _check_site(row: dict[str, Any]) -> list[tuple[str, str]]:
    errors = []
    if row.get("replaces_site_id") and row["replaces_site_id"] == row["site_id"]:
        errors.append(("replaces_site_id", "a site cannot replace itself"))
    if row.get("state_since") and row["state_since"] > utcnow():
        errors.append(("state_since", "is in the future"))
    return errors


def _check_tariff(row: dict[str, Any]) -> list[tuple[str, str]]:
    if row.get("period", "flat") != "flat" and not row.get("hours"):
        return [("hours", f"a {row['period']} tariff needs its hours (e.g. {HOURS_EXAMPLE})")]
    return []


def _local_when(value: datetime, zone: str | tzinfo) -> str:
    """A registered time as people typed it: a local date, or a local time with its offset."""
    local = as_utc(value).astimezone(get_zone(zone) if isinstance(zone, str) else zone)
    if (local.hour, local.minute, local.second) == (0, 0, 0):
        return local.date().isoformat()
    return format_local(value, zone)


def _check_tariff_overlaps(session: Session, parsed: ParsedFile,
                           zone: str | tzinfo = DEFAULT_ZONE) -> None:
    """Refuse time-of-use rows whose hours overlap another period's in force at the same time.

    An hour in two periods (peak 8-12 and sharp 10-11 of one region and class)
    made the overcharging cap depend on the order the periods were read in.  The
    periods in force at each ``effective_from`` of a region and class, from the
    file and the registry (a file row replaces the registered one of its key),
    must not share an hour.  Each file row involved is refused, naming the other.
    """
    tou = [(line, row) for line, row in parsed.rows if row.get("period", "flat") != "flat"]
    if not tou:
        return
    pairs = {(row["region"], row["customer_class"]) for _, row in tou}
    key = ("region", "customer_class", "period", "effective_from")
    entries: dict[tuple[Any, ...], tuple[int | None, dict[str, Any]]] = {}
    t = Tariff.__table__
    for chunk in _chunks(sorted(pairs), 500):
        for r in session.execute(select(t.c.region, t.c.customer_class, t.c.period,
                                        t.c.effective_from, t.c.hours)
                                 .where(tuple_(t.c.region, t.c.customer_class).in_(chunk),
                                        t.c.period != "flat")):
            row = dict(r._mapping)
            entries[tuple(row[k] for k in key)] = (None, row)
    for line, row in tou:
        entries[tuple(row[k] for k in key)] = (line, row)
    groups: dict[tuple[Any, ...], list[tuple[int | None, dict[str, Any], frozenset[int]]]] = {}
    for at_line, row in entries.values():
        try:
            hrs = parse_hours(row.get("hours"))
        except ValueError:
            continue  # a registered row from before the parser was strict: not ours to judge
        groups.setdefault((row["region"], row["customer_class"]), []).append((at_line, row, hrs))
    refused: dict[int, list[str]] = {}
    for (region, klass), items in groups.items():
        for when in sorted({row["effective_from"] for _, row, _ in items}):
            in_force: dict[str, tuple[Any, ...]] = {}
            for item in items:
                frm = item[1]["effective_from"]
                current = in_force.get(item[1]["period"])
                if frm <= when and (current is None or frm > current[1]["effective_from"]):
                    in_force[item[1]["period"]] = item
            chosen = sorted(in_force.values(), key=lambda i: i[1]["period"])
            for i, a in enumerate(chosen):
                for b in chosen[i + 1:]:
                    common = a[2] & b[2]
                    if not common or (a[0] is None and b[0] is None):
                        continue
                    for mine, other in ((a, b), (b, a)):
                        if mine[0] is None:
                            continue
                        where = (f"line {other[0]}" if other[0] is not None else
                                 f"the registered tariff from {_local_when(other[1]['effective_from'], zone)}")
                        reason = (f"{mine[1]['period']} hours overlap {other[1]['period']} hours"
                                  f" {other[1]['hours']} of {where} at {format_hours(common)}"
                                  f" (region {region}, class {klass}, from {_local_when(when, zone)}):"
                                  " an hour belongs to one period")
                        if reason not in refused.setdefault(mine[0], []):
                            refused[mine[0]].append(reason)
    if not refused:
        return
    kept = []
    for line, row in parsed.rows:
        if line in refused:
            parsed.errors += [RowError(line, "hours", r) for r in refused[line]]
            parsed.raw[line] = [_cell(row.get(h)) for h in parsed.header]
        else:
            kept.append((line, row))
    parsed.rows = kept


def _check_bill(row: dict[str, Any]) -> list[tuple[str, str]]:
    if row["period_end"] <= row["period_start"]:
        return [("period_end", "must be after period_start")]
    return []


_STATES = tuple(s.value for s in State)

SITES = Schema(
    name="sites",
    table=Site.__table__,
    key=("site_id",),
    columns=(
        Column("site_id", identifier),
        Column("name", text(200)),
        Column("lat", number(-90, 90)),
        Column("lon", number(-180, 180)),
        Column("county", text(100)),
        Column("kind", choice("macro", "micro", "pole", "indoor")),
        Column("supply", choice("direct", "transfer")),
        Column("region", text(100)),
        Column("customer_class", text(100)),
        Column("district", text(100), required=False),
        Column("owner", text(200), required=False),
        Column("operators", operators, required=False),
        Column("planned_year", integer(2000, 2100), required=False),
        Column("state", choice(*_STATES), required=False, default=State.PLANNED.value),
        Column("replaces_site_id", identifier, required=False),
        Column("address", text(300), required=False),
        # An extension: when a new site reached its imported state (default: the import time).
        Column("state_since", timestamp, required=False),
        # Contract v2: from when the row's supply holds (a change kept as history).
        Column("effective_from", effective_date, required=False),
    ),
    check=_check_site,
    references=(("replaces_site_id", Site.__table__, "site_id"),),
    insert_only=("state", "created_at"),
    stamped=("created_at", "updated_at"),
    not_stored=("state_since", "effective_from"),
)

RESERVATIONS = Schema(
    name="reservations",
    table=Reservation.__table__,
    key=("site_id",),
    columns=(
        Column("site_id", identifier),
        Column("declared_kw", number(0, 100_000)),
        Column("reserved_kw", number(0, 100_000)),
        Column("feeder", text(100)),
        Column("substation", text(100)),
        Column("status", choice("requested", "approved", "energized")),
        # Contract v2: from when the row holds; several dated rows of a site are its history.
        Column("effective_from", effective_date, required=False),
    ),
    references=(("site_id", Site.__table__, "site_id"),),
    stamped=("updated_at",),
    not_stored=("effective_from",),
    row_key=("site_id", "effective_from"),
)

TARIFFS = Schema(
    name="tariffs",
    table=Tariff.__table__,
    key=("region", "customer_class", "period", "effective_from"),
    columns=(
        Column("region", text(100)),
        Column("customer_class", text(100)),
        Column("effective_from", timestamp),
        Column("price_cny_per_kwh", number(hi=100, above=0)),
        Column("period", choice("flat", "peak", "valley", "sharp"), required=False,
               default="flat"),
        Column("hours", hours, required=False),
    ),
    check=_check_tariff,
)

BILLS = Schema(
    name="bills",
    table=Bill.__table__,
    key=("bill_id",),
    columns=(
        Column("bill_id", identifier),
        Column("site_id", identifier),
        Column("supplier_id", identifier),
        Column("period_start", timestamp),
        Column("period_end", timestamp),
        Column("billed_kwh", number(0, 1e9)),
        Column("amount_cny", number(0, 1e10)),
        Column("supplier_name", text(200), required=False),
        Column("meter_id", identifier, required=False),
        Column("supplier_credit_code", credit_code, required=False),
        Column("supplier_address", text(300), required=False),
        Column("supplier_contact", text(200), required=False),
    ),
    check=_check_bill,
    references=(("site_id", Site.__table__, "site_id"),),
)

def windows(cell: str, zone: str | tzinfo = DEFAULT_ZONE) -> str:
    """``start/end;start/end``: local times in ``zone`` (or with an offset), each ending after
    it starts; stored as UTC instants (``2026-06-07T00:00:00Z/2026-06-07T09:00:00Z``)."""
    ranges = [r.strip() for r in cell.split(";")]
    if not ranges or any(not r for r in ranges):
        raise ValueError("windows is a ';'-separated list of start/end ranges without empty entries")
    if len(ranges) > 200:
        raise ValueError("at most 200 windows")
    out = []
    for r in ranges:
        start, sep, end = r.partition("/")
        if not sep:
            raise ValueError(f"{r!r} is not a start/end range (2026-06-07T08:00/2026-06-07T17:00)")
        a, b = timestamp(start, zone), timestamp(end, zone)
        if b <= a:
            raise ValueError(f"{r!r} ends before it starts")
        out.append("/".join(t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (a, b)))
    return ";".join(out)


windows.zoned = True  # type: ignore[attr-defined]  # told the zone like a timestamp column


def bands(cell: str) -> str:
    items = [b.strip() for b in cell.split(";")]
    if any(not re.fullmatch(r"[A-Za-z0-9_.-]{1,16}", b) for b in items):
        raise ValueError("bands is a ';'-separated list of band names (n78;n41)")
    return ";".join(items)


# Known, authorised interferers (公用干扰器, e.g. exam-hall jammers): an interference finding
# in one's radius, band and time window is marked authorised (issue 14).
INTERFERERS = Schema(
    name="interferers",
    table=Interferer.__table__,
    key=("interferer_id",),
    columns=(
        Column("interferer_id", identifier),
        Column("name", text(200)),
        Column("lat", number(-90, 90)),
        Column("lon", number(-180, 180)),
        Column("radius_m", number(hi=100_000, above=0)),
        Column("windows", windows),
        Column("bands", bands, required=False),
    ),
    stamped=("updated_at",),
)


# Contract v2: feeder and substation ratings, for headroom against coincident peaks.
FEEDERS = Schema(
    name="feeders",
    table=Feeder.__table__,
    key=("feeder",),
    columns=(
        Column("feeder", text(100)),
        Column("substation", text(100)),
        Column("rated_kw", number(hi=10_000_000, above=0)),
    ),
    stamped=("updated_at",),
)

SUBSTATIONS = Schema(
    name="substations",
    table=Substation.__table__,
    key=("substation",),
    columns=(
        Column("substation", text(100)),
        Column("rated_kw", number(hi=100_000_000, above=0)),
    ),
    stamped=("updated_at",),
)


def _check_maintenance(row: dict[str, Any]) -> list[tuple[str, str]]:
    if row["end"] <= row["start"]:
        return [("end", "must be after start")]
    return []


# Booked maintenance visits: a door open during one is not an intrusion (issue 14).
MAINTENANCE = Schema(
    name="maintenance",
    table=MaintenanceWindow.__table__,
    key=("site_id", "start"),
    columns=(
        Column("site_id", identifier),
        Column("start", timestamp),
        Column("end", timestamp),
        Column("ticket", text(100), required=False),
    ),
    check=_check_maintenance,
    references=(("site_id", Site.__table__, "site_id"),),
    stamped=("updated_at",),
)

SCHEMAS = {s.name: s for s in (SITES, RESERVATIONS, TARIFFS, BILLS, FEEDERS, SUBSTATIONS,
                                      INTERFERERS, MAINTENANCE)}

# Annual build targets per county, read by ``sitetwin report progress`` (not stored).
TARGETS = Schema(
    name="targets",
    table=None,
    key=("year", "county"),
    columns=(
        Column("year", integer(2000, 2100)),
        Column("county", text(100)),
        Column("target_sites", integer(0, 1_000_000)),
    ),
)


# --- reading ----------------------------------------------------------------------------------

@dataclass(slots=True)
class ParsedFile:
    """The outcome of reading one file: valid rows, every error, and warnings."""

    header: list[str]
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw: dict[int, list[str]] = field(default_factory=dict)  # cells of rejected rows, by line

    @property
    def bad_lines(self) -> set[int]:
        return {e.line for e in self.errors}


def read_rows(path: str | Path, schema: Schema,
              progress: Callable[[int], None] | None = None, *,
              zone: str | tzinfo = DEFAULT_ZONE) -> ParsedFile:
    """Parse and validate every row of ``path``; raises ``ImportFailed`` only for a bad file.

    Dates and times without an offset are local time in ``zone`` (``[time] zone``).
    """
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFailed(str(path), [], header=f"cannot read the file: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise ImportFailed(str(path), [],
                                   header="the file is empty (a header row is required)")
            header = [h.strip() for h in header]
            result = ParsedFile(header=header)
            _check_header(path, schema, header, result)
            names = schema.by_name
            positions = [(i, names[h]) for i, h in enumerate(header) if h in names]
            parsers = {c.name: (lambda cell, p=c.parse: p(cell, zone)) if c.zoned else c.parse
                       for _, c in positions}
            present = {c.name for _, c in positions}
            absent_optional = [c for c in schema.columns if c.name not in present]
            first_line_of: dict[tuple[Any, ...], int] = {}
            row_key = schema.row_key or schema.key
            done = 0
            for cells in reader:
                line_no = reader.line_num
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(1000)
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line
                errors: list[RowError] = []
                if len(cells) != len(header):
                    errors.append(RowError(line_no, "*", f"{len(cells)} cells, but the header"
                                                          f" has {len(header)} columns"))
                else:
                    row: dict[str, Any] = {}
                    for i, col in positions:
                        cell = cells[i]
                        if not cell.strip():
                            if col.required:
                                errors.append(RowError(line_no, col.name, "required, but empty"))
                            else:
                                row[col.name] = col.default
                            continue
                        try:
                            row[col.name] = parsers[col.name](cell)
                        except ValueError as exc:
                            errors.append(RowError(line_no, col.name, str(exc)))
                    if not errors:
                        for col in absent_optional:
                            if col.default is not None:
                                row[col.name] = col.default
                        if schema.check is not None:
                            errors += [RowError(line_no, c, r) for c, r in schema.check(row)]
                    if not errors:
                        key = tuple(row.get(k) for k in row_key)
                        first = first_line_of.setdefault(key, line_no)
                        if first != line_no:
                            errors.append(RowError(line_no, ",".join(row_key),
                                                   f"duplicate key, already on line {first}"))
                if errors:
                    result.errors += errors
                    result.raw[line_no] = cells
                else:
                    result.rows.append((line_no, row))
            if progress is not None:
                progress(done % 1000)
        except UnicodeDecodeError as exc:
            raise ImportFailed(str(path), [], header=f"not UTF-8 ({exc.reason}); save the file"
                               " as UTF-8 CSV") from None
        except csv.Error as exc:
            raise ImportFailed(str(path), [], header=f"not a valid CSV file at line"
                               f" {reader.line_num}: {exc}") from None
    return result


def _check_header(path: Path, schema: Schema, header: list[str], result: ParsedFile) -> None:
    known = schema.by_name
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ImportFailed(str(path), [], header=f"column(s) {', '.join(dupes)} appear twice")
    missing = [c.name for c in schema.columns if c.required and c.name not in header]
    if missing:
        raise ImportFailed(str(path), [RowError(1, m, "required column missing") for m in missing],
                           header=f"missing required column(s) {', '.join(missing)} (a"
                           f" {schema.name} file has {', '.join(c.name for c in schema.columns)})")
    unknown = [h for h in header if h not in known]
    if unknown:
        result.warnings.append(f"unknown column(s) ignored: {', '.join(unknown)}")


# --- importing --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did."""

    kind: str
    path: str
    inserted: int
    updated: int
    rejected: int
    warnings: tuple[str, ...] = ()
    errors: tuple[RowError, ...] = ()
    rejects_path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "inserted": self.inserted,
                "updated": self.updated, "rejected": self.rejected,
                "warnings": list(self.warnings), "rejects_path": self.rejects_path,
                "errors": [{"line": e.line, "column": e.column, "reason": e.reason}
                           for e in self.errors]}


def _chunks(seq: Sequence[T], n: int = CHUNK_ROWS) -> Iterable[Sequence[T]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _existing(session: Session, table: Table, columns: Sequence[str],
              wanted: set[tuple[Any, ...]] | None = None) -> set[tuple[Any, ...]]:
    """Key tuples of ``table`` (all of them, or those among ``wanted``)."""
    cols = [table.c[c] for c in columns]
    if wanted is None:
        return {tuple(r) for r in session.execute(select(*cols))}
    found: set[tuple[Any, ...]] = set()
    items = list(wanted)
    for chunk in _chunks(items, 1000):
        cond = cols[0].in_([k[0] for k in chunk]) if len(cols) == 1 else tuple_(*cols).in_(chunk)
        found |= {tuple(r) for r in session.execute(select(*cols).where(cond))}
    return found


def _check_references(session: Session, schema: Schema, parsed: ParsedFile) -> None:
    for column, table, target in schema.references:
        wanted = {(row[column],) for _, row in parsed.rows if row.get(column)}
        if not wanted:
            continue
        known = _existing(session, table, [target], wanted)
        if table is schema.table:  # a row may name another row of the same file
            known |= {(row[schema.key[0]],) for _, row in parsed.rows}
        kept = []
        for line_no, row in parsed.rows:
            value = row.get(column)
            if value and (value,) not in known:
                parsed.errors.append(RowError(line_no, column,
                                              f"{value!r} is not a registered site"))
                parsed.raw[line_no] = [_cell(row.get(h)) for h in parsed.header]
            else:
                kept.append((line_no, row))
        parsed.rows = kept


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _write_rejects(path: Path, parsed: ParsedFile) -> None:
    reasons: dict[int, list[str]] = {}
    for e in parsed.errors:
        reasons.setdefault(e.line, []).append(f"{e.column}: {e.reason}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*parsed.header, "line", "reasons"])
        for line_no in sorted(reasons):
            cells = parsed.raw.get(line_no, [])
            cells = (cells + [""] * len(parsed.header))[:len(parsed.header)]
            # The rejects file is opened in spreadsheets too: neutralise formula cells.
            w.writerow([*(neutralise(c) for c in cells), line_no,
                        neutralise("; ".join(reasons[line_no]))])


def import_csv(store: Store, path: str | Path, schema: Schema | str, *, skip_invalid: bool = False,
               rejects: str | Path | None = None, actor: str = "import",
               progress: Callable[[int], None] | None = None,
               write_progress: Callable[[int], None] | None = None,
               zone: str | tzinfo = DEFAULT_ZONE) -> ImportResult:
    """Import ``path`` into the registry: all or nothing, or the valid rows with ``skip_invalid``.

    Raises ``ImportFailed`` (nothing imported) when the file is unreadable or,
    without ``skip_invalid``, when any row is bad.  With ``skip_invalid`` the
    rejected rows go to ``rejects`` (default ``<file>.rejects.csv``).
    ``progress(n)`` is told of rows read, ``write_progress(n)`` of rows written.
    Dates and times without an offset are local time in ``zone`` (``effective_from`` of
    reservation and supply history included).
    """
    if isinstance(schema, str):
        schema = SCHEMAS[schema]
    table = schema.table
    if table is None:
        raise ValueError(f"{schema.name} files are read (read_rows), not imported")
    path = Path(path)
    parsed = read_rows(path, schema, progress, zone=zone)
    now = utcnow()
    with store.session() as session:
        _check_references(session, schema, parsed)
        if schema is TARIFFS:
            _check_tariff_overlaps(session, parsed, zone)
        if parsed.errors and not skip_invalid:
            raise ImportFailed(str(path), sorted(parsed.errors, key=lambda e: e.line))
        rows = [row for _, row in parsed.rows]
        keys = {tuple(r[k] for k in schema.key) for r in rows}
        before = _existing(session, table, schema.key,
                           keys if len(keys) < 10_000 else None) if keys else set()
        inserted = sum(1 for k in keys if k not in before)
        present = {c for c in parsed.header if c in schema.by_name}
        present |= {c.name for c in schema.columns if c.default is not None}
        if schema is SITES:
            _sites_before(session, parsed, before)
        if schema is RESERVATIONS:
            record_reservations(session, store.dialect, rows, now, zone)
            if write_progress is not None:
                write_progress(len(rows))
        else:
            _upsert(session, store.dialect, schema, table, rows, present, now, write_progress)
        if schema is SITES:
            _sites_after(session, rows, before, now, actor)
            record_supply(session, store.dialect, rows, now, zone)
    rejects_path = None
    if parsed.errors:
        rejects_path = Path(rejects) if rejects else path.with_suffix(".rejects.csv")
        _write_rejects(rejects_path, parsed)
    return ImportResult(kind=schema.name, path=str(path), inserted=inserted,
                        updated=len(keys) - inserted, rejected=len(parsed.bad_lines),
                        warnings=tuple(parsed.warnings),
                        errors=tuple(sorted(parsed.errors, key=lambda e: e.line)),
                        rejects_path=str(rejects_path) if rejects_path else None)


def _upsert(session: Session, dialect: str, schema: Schema, table: Table, rows: list[dict[str, Any]],
            present: set[str], now: datetime,
            progress: Callable[[int], None] | None = None) -> None:
    if not rows:
        return
    columns = [c.name for c in schema.columns if c.name in present
               and c.name not in schema.not_stored]
    stamped = dict.fromkeys(schema.stamped, now)
    stmt = upsert_insert(dialect, table)
    update = {c: stmt.excluded[c] for c in [*columns, *stamped]
              if c not in schema.key and c not in schema.insert_only}
    if update:
        stmt = stmt.on_conflict_do_update(index_elements=list(schema.key), set_=update)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(schema.key))
    # Sorted by key: concurrent imports lock rows in the same order.
    ordered = sorted(rows, key=lambda r: tuple(str(r[k]) for k in schema.key))
    for chunk in _chunks(ordered):
        session.execute(stmt, [{**{c: r.get(c) for c in columns}, **stamped} for r in chunk])
        if progress is not None:
            progress(len(chunk))


def _sites_before(session: Session, parsed: ParsedFile, before: set[tuple[Any, ...]]) -> None:
    """Warn about states the file would change: only ``sites transition`` moves a site."""
    existing = [row for _, row in parsed.rows if (row["site_id"],) in before and "state" in row]
    if not existing:
        return
    ids = {r["site_id"] for r in existing}
    current: dict[str, str] = {}
    for chunk in _chunks(sorted(ids), 1000):
        current.update((r[0], r[1]) for r in session.execute(
            select(Site.site_id, Site.state).where(Site.site_id.in_(chunk))))
    differ = sorted(r["site_id"] for r in existing if current.get(r["site_id"]) != r["state"])
    if differ:
        shown = ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
        parsed.warnings.append(f"{len(differ)} existing site(s) have another state in the file;"
                               f" left unchanged (use `sitetwin sites transition`): {shown}")


def _sites_after(session: Session, rows: list[dict[str, Any]], before: set[tuple[Any, ...]],
                 now: datetime, actor: str) -> None:
    """New sites start their history with an ``import`` event; live state learns they exist."""
    new = [r for r in rows if (r["site_id"],) not in before]
    events = [{"site_id": r["site_id"], "from_state": None, "to_state": r.get("state") or State.PLANNED.value,
               "verb": "import", "at": r.get("state_since") or now, "actor": actor,
               "note": None if r.get("state_since") else UNDATED_IMPORT_NOTE, "reason": None}
              for r in sorted(new, key=lambda r: r["site_id"])]
    for chunk in _chunks(events):
        session.execute(LifecycleEvent.__table__.insert(), list(chunk))
    if new:
        lt = LiveSiteState.__table__
        session.execute(lt.update().where(lt.c.registered.is_(False),
                                          lt.c.site_id.in_(select(Site.site_id)))
                        .values(registered=True))
