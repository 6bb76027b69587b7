"""Writing report tables to ``.csv`` or ``.xlsx``, safe to open and fit to hand over.

One writer for every report (overcharging, reservations, progress).  A column's
unit comes from its key's suffix, or from ``formats`` when a key says nothing:

==================  ===========================  ==========================
key ends in         XLSX number format           CSV
==================  ===========================  ==========================
``_cny_per_kwh``    ``#,##0.0000`` (4 decimals)  shortest exact decimal
``_cny``            ``#,##0.00`` (2 decimals)    rounded to 2 decimals
``_kwh``, ``_kw``   ``#,##0.0##``                shortest exact decimal
``_pct``            ``0.0"%"`` (value 0-100)     shortest exact decimal
``_share``          ``0.0%`` (value 0-1)         shortest exact decimal
==================  ===========================  ==========================

"Shortest exact decimal" is the float rounded to 9 decimals and printed
without exponent or trailing zeros: ``12.1``, not ``12.100000000000001`` (a
whole number keeps one ``.0``, as pandas writes it).

Times: with a ``zone`` a timezone-aware value is written in local time there —
a real date-time cell (``yyyy-mm-dd hh:mm``) in XLSX, ISO 8601 with its offset
(``2026-10-01T00:00:00+08:00``) in CSV — and the header names the zone.  Without
a zone (the old call) times are UTC: naive UTC cells in XLSX, ``...Z`` in CSV.

Every XLSX sheet has a bold, frozen header row, an autofilter over the table,
and column widths from the longest value (CJK characters count double, at most
60; longer text wraps).  CSV
is UTF-8 with a BOM so that Excel shows Chinese text correctly.

A text cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage
return) would run as a formula in Excel or LibreOffice ("CSV injection"): such
cells get a leading ``'`` (``core.text.neutralise``, shared with the import's
rejects file), which spreadsheets show as plain text.  Numbers are never
prefixed.  A dict or list cell is written as JSON text.

This module knows nothing of the registry, the rules or InfluxDB: it writes any
frame it is given (a contract in ``pyproject.toml`` keeps it so).
"""

from __future__ import annotations

import csv
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from core.text import neutralise
from core.timeutil import get_zone, utc_timestamp
from exports.errors import ReportFileError

__all__ = ["FORMATS", "Sheet", "unit_of", "write_sheets", "write_table", "write_workbook"]

# unit -> XLSX number format
FORMATS = {
    "cny": "#,##0.00",
    "cny_per_kwh": "#,##0.0000",
    "kwh": "#,##0.0##",
    "kw": "#,##0.0##",
    "pct": '0.0"%"',
    "share": "0.0%",
    "int": "0",
    "number": "General",
    "datetime": "yyyy-mm-dd hh:mm",
    "date": "yyyy-mm-dd",
    "text": "@",
}
# Longest suffix first: ``_cny_per_kwh`` before ``_kwh`` and ``_cny``.
_SUFFIXES = (("_cny_per_kwh", "cny_per_kwh"), ("_cny", "cny"), ("_kwh", "kwh"), ("_kw", "kw"),
             ("_pct", "pct"), ("_share", "share"))
_CSV_DECIMALS = {"cny": 2}
_MAX_WIDTH = 60
_INVALID_SHEET_CHARS = str.maketrans(dict.fromkeys("[]:*?/\\", " "))


@dataclass(frozen=True, slots=True)
class Sheet:
    """One table of a workbook: its sheet name, rows, header labels and unit overrides.

    ``labels`` maps a column key to the header shown (a translated label);
    ``formats`` maps a key to a unit of ``FORMATS`` where its suffix says none.
    """

    name: str
    frame: pd.DataFrame
    labels: Mapping[str, str] = field(default_factory=dict)
    formats: Mapping[str, str] = field(default_factory=dict)


def unit_of(key: str, dtype: Any = None, override: str | None = None) -> str | None:
    """The unit of a column: ``override``, else its key's suffix, else its dtype (or None)."""
    if override:
        return override
    for suffix, unit in _SUFFIXES:
        if key.endswith(suffix):
            return unit
    if dtype is not None:
        if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
            return "datetime"
        if pd.api.types.is_bool_dtype(dtype):
            return None
        if pd.api.types.is_integer_dtype(dtype):
            return "int"
    return None


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _is_time(value: Any) -> bool:
    return isinstance(value, (datetime, pd.Timestamp))


def _local(value: Any, zone: tzinfo | None) -> pd.Timestamp:
    return utc_timestamp(value).tz_convert(zone if zone is not None else "UTC")


def _plain(value: Any) -> Any:
    """numpy scalars as Python values; dicts and lists as JSON text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (dict, list, tuple)):
        value = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return value


def _csv_number(value: float, unit: str | None) -> str:
    decimals = _CSV_DECIMALS.get(unit or "", 9)
    if not math.isfinite(value):
        return ""
    return np.format_float_positional(round(value, decimals), trim="0")


def _csv_cell(value: Any, unit: str | None, zone: tzinfo | None) -> str:
    value = _plain(value)
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_time(value):
        ts = _local(value, zone)
        return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ") if zone is None
                   else ts.isoformat(timespec="seconds"))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _csv_number(value, unit)
    return str(neutralise(str(value)))


def _xlsx_cell(value: Any, unit: str | None, zone: tzinfo | None) -> Any:
    value = _plain(value)
    if _missing(value):
        return None
    if _is_time(value):
        return _local(value, zone).tz_localize(None).to_pydatetime()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return neutralise(value)
    return value


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _shown(value: Any, unit: str | None) -> str:
    """Roughly what a spreadsheet shows for a cell, to size its column."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return "2026-10-01 08:00"
    if isinstance(value, bool):
        return "FALSE"
    if isinstance(value, (int, float)):
        decimals = {"cny": 2, "cny_per_kwh": 4, "pct": 2, "share": 2}.get(unit or "", 3)
        return f"{value:,.{decimals}f}"
    return str(value)


def _headers(sheet: Sheet, zone_name: str | None) -> list[tuple[str, str, str | None]]:
    """``(key, header, unit)`` of each column."""
    out = []
    for key in sheet.frame.columns:
        key = str(key)
        unit = unit_of(key, sheet.frame[key].dtype, sheet.formats.get(key))
        if unit is None and sheet.frame[key].map(_is_time).any():
            unit = "datetime"
        header = str(sheet.labels.get(key, key))
        if unit == "datetime" and zone_name:
            header = f"{header} ({zone_name})"
        out.append((key, str(neutralise(header)), unit))
    return out


def _sheet_title(name: str, taken: set[str]) -> str:
    title = (name.translate(_INVALID_SHEET_CHARS).strip() or "sheet")[:31]
    base, n = title, 2
    while title.lower() in taken:
        suffix = f" ({n})"
        title, n = base[:31 - len(suffix)] + suffix, n + 1
    taken.add(title.lower())
    return title


def _fill_sheet(ws: Any, sheet: Sheet, zone: tzinfo | None, zone_name: str | None) -> None:
    cols = _headers(sheet, zone_name)
    header_font = Font(bold=True)
    header_fill = PatternFill("solid", start_color="FFDDEBF7")
    widths = [_width(h) for _, h, _ in cols]
    ws.append([h for _, h, _ in cols])
    for cell in ws[1]:
        cell.font = header_font
        cell.fill = header_fill
        cell.alignment = Alignment(vertical="top", wrap_text=True)
    frame = sheet.frame
    columns = [frame[k].tolist() for k, _, _ in cols]
    for i in range(len(frame)):
        row = [_xlsx_cell(columns[j][i], unit, zone) for j, (_, _, unit) in enumerate(cols)]
        ws.append(row)
        r = ws.max_row
        for j, (value, (_, _, unit)) in enumerate(zip(row, cols, strict=True)):
            if value is None:
                continue
            cell = ws.cell(row=r, column=j + 1)
            if isinstance(value, str):
                cell.data_type = "s"  # never a formula, whatever the text
                if _width(value) > _MAX_WIDTH:
                    cell.alignment = Alignment(vertical="top", wrap_text=True)
            elif isinstance(value, datetime):
                cell.number_format = FORMATS["datetime"]
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and unit:
                cell.number_format = FORMATS.get(unit, "General")
            widths[j] = max(widths[j], min(_width(_shown(value, unit)), _MAX_WIDTH))
    for j, w in enumerate(widths):
        ws.column_dimensions[get_column_letter(j + 1)].width = min(max(w + 2, 8), _MAX_WIDTH + 2)
    last = get_column_letter(max(len(cols), 1))
    ws.freeze_panes = "A2"
    ws.auto_filter.ref = f"A1:{last}{max(ws.max_row, 1)}"


def _zone(zone: str | tzinfo | None) -> tuple[tzinfo | None, str | None]:
    if zone is None:
        return None, None
    tz = get_zone(zone) if isinstance(zone, str) else zone
    return tz, zone if isinstance(zone, str) else str(tz)


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise ReportFileError(f"cannot write {path.name}: the report file must end in .csv or .xlsx")
    return suffix


def _write_csv(sheet: Sheet, path: Path, zone: tzinfo | None, zone_name: str | None) -> None:
    cols = _headers(sheet, zone_name)
    frame = sheet.frame
    columns = [frame[k].tolist() for k, _, _ in cols]
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([h for _, h, _ in cols])
        for i in range(len(frame)):
            w.writerow([_csv_cell(columns[j][i], unit, zone)
                        for j, (_, _, unit) in enumerate(cols)])


def write_workbook(sheets: Sequence[Sheet], path: str | Path, *,
                   zone: str | tzinfo | None = None) -> Path:
    """Write ``sheets`` to ``path``: every sheet in an ``.xlsx``, the first one in a ``.csv``.

    ``zone`` (an IANA name) writes times as local time there and names it in the headers.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not sheets:
        raise ValueError("a workbook needs at least one sheet")
    tz, zone_name = _zone(zone)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix == ".csv":
            _write_csv(sheets[0], path, tz, zone_name)
        else:
            wb = Workbook()
            wb.remove(wb.active)
            taken: set[str] = set()
            for sheet in sheets:
                _fill_sheet(wb.create_sheet(_sheet_title(sheet.name, taken)), sheet, tz, zone_name)
            wb.save(path)
    except OSError as exc:
        raise ReportFileError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_table(frame: pd.DataFrame, path: str | Path, *, sheet_name: str = "report",
                zone: str | tzinfo | None = None, labels: Mapping[str, str] | None = None,
                formats: Mapping[str, str] | None = None) -> Path:
    """Write one table to ``path`` (``.csv`` or ``.xlsx`` by suffix); see ``write_workbook``."""
    return write_workbook([Sheet(sheet_name, frame, labels or {}, formats or {})], path, zone=zone)


def write_sheets(sheets: dict[str, pd.DataFrame], path: str | Path, *,
                 combined: pd.DataFrame | None = None,
                 label: Callable[[str], str] | None = None,
                 zone: str | tzinfo | None = None) -> Path:
    """Several tables: one sheet each in ``.xlsx``; ``combined`` (or their concatenation)
    in ``.csv``, which has no sheets.  ``label`` turns a column key or a sheet name into
    the header a person reads (a translation); the keys stay those of the frames, so the
    formats still follow their unit suffixes (``write_workbook``).
    """
    label = label or (lambda key: key)

    def sheet(name: str, frame: pd.DataFrame) -> Sheet:
        return Sheet(label(name), frame, {c: label(str(c)) for c in frame.columns})

    if Path(path).suffix.lower() == ".csv":
        frame = combined if combined is not None else pd.concat(list(sheets.values()),
                                                                 ignore_index=True)
        return write_workbook([sheet("report", frame)], path, zone=zone)
    return write_workbook([sheet(name, frame) for name, frame in sheets.items()], path, zone=zone)
