"""Writing a report table to ``.csv`` or ``.xlsx``, safe to open in a spreadsheet.

A text cell that starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage
return) would run as a formula in Excel or LibreOffice ("CSV injection"): such
cells get a leading ``'``, which spreadsheets show as plain text.  Numbers are
untouched.  Times are written in UTC (ISO 8601 with ``Z`` in CSV; naive UTC in
XLSX, which has no time zones).  CSV is UTF-8 with a BOM so that Excel shows
Chinese county names correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from core.errors import UserError

__all__ = ["FORMULA_PREFIXES", "neutralise", "write_sheets", "write_table"]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """Prefix a text value that a spreadsheet would read as a formula with ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        value = orjson.dumps(value, default=str).decode()
    return neutralise(value)


def _prepare(frame: pd.DataFrame, *, excel: bool) -> pd.DataFrame:
    out = frame.copy()
    out.columns = [str(neutralise(str(c))) for c in out.columns]
    for name in out.columns:
        col = out[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            col = col.dt.tz_convert("UTC")
            out[name] = (col.dt.tz_localize(None) if excel
                         else col.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            out[name] = col.astype(object).map(_cell_for(excel))
    return out


def _cell_for(excel: bool):
    def convert(value: Any) -> Any:
        if hasattr(value, "tzinfo") and hasattr(value, "isoformat") and value.tzinfo is not None:
            utc = pd.Timestamp(value).tz_convert("UTC")
            return utc.tz_localize(None).to_pydatetime() if excel else \
                utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        return _cell(value)
    return convert


def write_table(frame: pd.DataFrame, path: str | Path, *, sheet_name: str = "report") -> Path:
    """Write ``frame`` to ``path`` (``.csv`` or ``.xlsx`` by suffix), neutralising formulas."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise UserError(f"cannot write {path.name}: the report file must end in .csv or .xlsx")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix == ".csv":
            _prepare(frame, excel=False).to_csv(path, index=False, encoding="utf-8-sig")
        else:
            _prepare(frame, excel=True).to_excel(path, index=False, sheet_name=sheet_name[:31],
                                                 engine="openpyxl")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_sheets(sheets: dict[str, pd.DataFrame], path: str | Path, *,
                 combined: pd.DataFrame | None = None,
                 label: Callable[[str], str] | None = None) -> Path:
    """Several tables: one sheet each in ``.xlsx``; ``combined`` (or their concatenation)
    in ``.csv``, which has no sheets.  ``label`` turns a column key or a sheet name into
    the header a person reads (a translation); the keys stay those of the frames.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    label = label or (lambda key: key)
    if suffix != ".xlsx":
        frame = combined if combined is not None else pd.concat(list(sheets.values()),
                                                                 ignore_index=True)
        return write_table(frame.rename(columns=label), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            for name, frame in sheets.items():
                out = _prepare(frame.rename(columns=label), excel=True)
                # Excel: at most 31 characters, none of []:*?/\ in a sheet name
                title = "".join(c for c in label(name) if c not in "[]:*?/\\")[:31] or "sheet"
                out.to_excel(writer, index=False, sheet_name=title)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    return path
