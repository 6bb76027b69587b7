"""write_table / write_workbook: CSV and XLSX by suffix, formula cells neutralised, typed and
formatted XLSX cells from the column keys' units, local times with the zone named."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

import openpyxl
import pandas as pd
import pytest

from core.errors import UserError
from exports.errors import ReportFileError
from exports.tables import FORMATS, Sheet, unit_of, write_table, write_workbook


def frame() -> pd.DataFrame:
    cst = timezone(timedelta(hours=8))
    return pd.DataFrame({
        "site": ["=1+1", "+86 28", "-2", "@SUM(A1)", "\tx", "plain", None],
        "amount_cny": [-1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "at": [datetime(2026, 1, 1, 8, tzinfo=cst)] * 7,
        "evidence": [{"k": 1}, [1, 2], "ok", "=A1", "x", "y", "z"],
    })


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
    with pytest.raises(ReportFileError, match=r"\.csv or \.xlsx") as caught:
        write_table(frame(), tmp_path / "r.json")
    assert isinstance(caught.value, UserError)  # the CLI shows it as the person's mistake
    assert not (tmp_path / "r.json").exists()


def bills() -> pd.DataFrame:
    return pd.DataFrame({
        "bill_id": ["B1", "B2"],
        "supplier_name": ["成都某物业管理有限公司", "=Landlord"],
        "period_start": pd.to_datetime(["2026-09-30T16:00:00Z", "2026-10-14T16:00:00Z"], utc=True),
        "billed_kwh": [1200.5, 10.0],
        "amount_cny": [1500.1 + 0.2, 12.100000000000001],  # 1500.3000000000002: float noise
        "unit_price_cny_per_kwh": [1.249729, 1.21],
        "utilisation_pct": [85.25, None],
        "coverage": [0.9876, 1.0],
        "meters": [1, 2],
        "evidence": [{"peak": 1.5}, None],
    })


def test_unit_of_reads_the_suffix_longest_first():
    assert [unit_of(k) for k in ("excess_cny", "cap_cny_per_kwh", "billed_kwh", "peak_kw",
                                 "progress_pct", "loss_share", "site_id")] == [
        "cny", "cny_per_kwh", "kwh", "kw", "pct", "share", None]
    assert unit_of("coverage", None, "share") == "share"


def test_xlsx_is_typed_formatted_local_and_frozen(tmp_path):
    labels = {"bill_id": "账单编号", "period_start": "计费期起", "amount_cny": "账单金额（元）"}
    path = write_table(bills(), tmp_path / "b.xlsx", sheet_name="bills", zone="Asia/Shanghai",
                       labels=labels, formats={"coverage": "share"})
    ws = openpyxl.load_workbook(path)["bills"]
    header = [c.value for c in ws[1]]
    assert header[:3] == ["账单编号", "supplier_name", "计费期起 (Asia/Shanghai)"]
    assert all(c.font.bold for c in ws[1])
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref == "A1:J3"
    col = {h: i + 1 for i, h in enumerate(header)}
    start = ws.cell(2, col["计费期起 (Asia/Shanghai)"])
    # A real date-time, in local time: 16:00Z is midnight in Shanghai.
    assert start.value == datetime(2026, 10, 1, 0, 0) and start.is_date
    assert start.number_format == FORMATS["datetime"]
    cny = ws.cell(2, col["账单金额（元）"])
    assert cny.data_type == "n" and cny.number_format == "#,##0.00"
    assert ws.cell(2, col["unit_price_cny_per_kwh"]).number_format == "#,##0.0000"
    assert ws.cell(2, col["billed_kwh"]).number_format == "#,##0.0##"
    assert ws.cell(2, col["utilisation_pct"]).number_format == '0.0"%"'
    assert ws.cell(3, col["utilisation_pct"]).value is None  # NaN is an empty cell
    assert ws.cell(2, col["coverage"]).number_format == "0.0%"
    assert ws.cell(2, col["meters"]).number_format == "0" and ws.cell(2, col["meters"]).value == 1
    assert ws.cell(3, col["supplier_name"]).value == "'=Landlord"
    assert ws.cell(2, col["evidence"]).value == '{"peak":1.5}'
    # Widths fit the longest value; a Chinese character is two columns wide.
    assert ws.column_dimensions["B"].width >= 2 * len("成都某物业管理有限公司")
    assert ws.column_dimensions["A"].width >= 8


def test_csv_has_no_float_noise_and_local_times_with_their_offset(tmp_path):
    path = write_table(bills(), tmp_path / "b.csv", zone="Asia/Shanghai",
                       labels={"bill_id": "账单编号"})
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    assert "0000000" not in text
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["账单编号"] == "B1"
    assert rows[0]["period_start (Asia/Shanghai)"] == "2026-10-01T00:00:00+08:00"
    assert (rows[0]["amount_cny"], rows[1]["amount_cny"]) == ("1500.3", "12.1")
    assert rows[0]["unit_price_cny_per_kwh"] == "1.249729" and rows[1]["billed_kwh"] == "10.0"
    assert rows[1]["utilisation_pct"] == "" and rows[1]["supplier_name"] == "'=Landlord"


def test_workbook_one_sheet_per_table_with_safe_unique_names(tmp_path):
    sheets = [Sheet("Flagged bills", bills()), Sheet("a/b:c?[d]", pd.DataFrame({"x": [1]})),
              Sheet("Flagged bills", pd.DataFrame(columns=["empty_cny"]))]
    path = write_workbook(sheets, tmp_path / "w.xlsx", zone="Asia/Shanghai")
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Flagged bills", "a b c  d", "Flagged bills (2)"]
    empty = wb["Flagged bills (2)"]
    assert [c.value for c in empty[1]] == ["empty_cny"] and empty.max_row == 1
    assert empty.auto_filter.ref == "A1:A1"
    # A CSV holds one table: the first sheet.
    csv_path = write_workbook(sheets, tmp_path / "w.csv")
    assert csv_path.read_text(encoding="utf-8-sig").splitlines()[0].startswith("bill_id,")
