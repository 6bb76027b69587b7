"""write_table: CSV and XLSX by suffix, formula cells neutralised, times in UTC."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta, timezone

import openpyxl
import pandas as pd
import pytest

from sitetwin.errors import UserError
from twin.export import neutralise, write_table


def frame() -> pd.DataFrame:
    cst = timezone(timedelta(hours=8))
    return pd.DataFrame({
        "site": ["=1+1", "+86 28", "-2", "@SUM(A1)", "\tx", "plain", None],
        "amount_cny": [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "at": [datetime(2026, 1, 1, 8, tzinfo=cst)] * 7,
        "evidence": [{"k": 1}, [1, 2], "ok", "=A1", "x", "y", "z"],
    })


def test_neutralise():
    assert [neutralise(v) for v in ("=x", "+x", "-x", "@x", "x", 5, None)] == [
        "'=x", "'+x", "'-x", "'@x", "x", 5, None]


def test_csv(tmp_path):
    path = write_table(frame(), tmp_path / "r.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(path.open(encoding="utf-8-sig")))
    assert [r["site"] for r in rows] == ["'=1+1", "'+86 28", "'-2", "'@SUM(A1)", "'\tx", "plain", ""]
    assert rows[0]["amount_cny"] == "-1.5"  # numbers are not touched
    assert rows[0]["at"] == "2026-01-01T00:00:00Z"
    assert rows[0]["evidence"] == '{"k":1}' and rows[3]["evidence"] == "'=A1"


def test_xlsx_has_no_formulas(tmp_path):
    path = write_table(frame(), tmp_path / "r.xlsx", sheet_name="a very long sheet name over 31 chars")
    ws = openpyxl.load_workbook(path).active
    cells = [c for row in ws.iter_rows() for c in row]
    assert all(c.data_type != "f" for c in cells)
    values = [[c.value for c in row] for row in ws.iter_rows()]
    assert values[1][:3] == ["'=1+1", -1.5, datetime(2026, 1, 1, 0, 0)]


def test_unknown_suffix(tmp_path):
    with pytest.raises(UserError, match=".csv or .xlsx"):
        write_table(frame(), tmp_path / "r.json")
