"""The overcharging report: local months, both parties, the review trail, evidence as rows,
every header in zh-CN; and, end to end through the CLI, the XLSX a regulator is handed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import openpyxl
import pandas as pd
import pytest

from core.i18n import catalog
from rules.report import (
    BILL_COLUMNS,
    CAP_STEPS,
    EVIDENCE_COLUMNS,
    PARTIAL_BASIS,
    REVIEW_COLUMNS,
    SHEETS,
    TOTAL_COLUMNS,
    VALUE_LABELS,
    month_bounds,
    overcharging_report,
    overcharging_table,
)

OCT_START = datetime(2026, 9, 30, 16, tzinfo=UTC)   # 2026-10-01 00:00 in Shanghai
OCT_END = datetime(2026, 10, 31, 16, tzinfo=UTC)    # 2026-11-01 00:00 in Shanghai


def flag(fid: int, bill: str, supplier: str = "LL-1", *, kind: str = "overcharging",
         status: str = "open", excess: float = 100.0, start: datetime = OCT_START,
         end: datetime = OCT_END, evidence: dict | None = None) -> dict:
    return {"id": fid, "kind": kind, "site_id": "S1", "bill_id": bill, "supplier_id": supplier,
            "status": status, "severity": "warning", "window_start": start, "window_end": end,
            "summary": f"bill {bill}", "evidence": {"supplier_name": "Landlord", "billed_kwh": 100.0,
                                                      "amount_cny": 150.0, "excess_cny": excess,
                                                      **(evidence or {})}}


def test_a_local_october_bill_is_in_octobers_report_not_septembers():
    assert month_bounds("2026-10") == (pd.Timestamp(OCT_START), pd.Timestamp(OCT_END))
    flags = [flag(1, "B-OCT")]
    assert list(overcharging_table(flags, "2026-10")["bill_id"].dropna().unique()) == ["B-OCT"]
    assert overcharging_table(flags, "2026-09").empty
    # The same bill read in UTC would start on 30 September: in UTC it is September's.
    assert overcharging_table(flags, "2026-09", zone="UTC")["bill_id"].iloc[0] == "B-OCT"
    with pytest.raises(ValueError, match="YYYY-MM"):
        overcharging_table(flags, "2026-13")


def test_totals_per_supplier_leave_out_dismissed_flags():
    flags = [flag(1, "B1", excess=12.100000000000001), flag(2, "B2", excess=30.0),
             flag(3, "B3", status="dismissed", excess=999.0), flag(4, "B4", "LL-2", excess=5.0)]
    report = overcharging_report(flags, "2026-10")
    assert list(report.bills["bill_id"]) == ["B1", "B2", "B3", "B4"]
    t = report.totals.set_index(["row", "supplier_id"], drop=False)
    assert t.loc[("supplier_total", "LL-1"), "excess_cny"] == pytest.approx(42.1)
    assert t.loc[("supplier_total", "LL-1"), "bills"] == 2
    grand = report.totals[report.totals["row"] == "total"].iloc[0]
    assert (grand["excess_cny"], grand["bills"]) == (pytest.approx(47.1), 3)


def test_parties_review_trail_and_evidence_rows():
    ev = {"energy_mix_kwh": {"peak": 25.0, "valley": 75.0},
          "tariff_rows": [{"period": "peak", "hours": "8-11;18-21",
                           "effective_from": "2025-12-31T16:00:00Z", "price_cny_per_kwh": 1.0},
                          {"period": "valley", "hours": "23-7",
                           "effective_from": "2025-12-31T16:00:00Z", "price_cny_per_kwh": 0.3}],
          "cap_basis": "highest period price (meter data covers 75% of the period)"}
    parties = {"B1": {"supplier_name": "成都某物业", "supplier_credit_code": "91350100M000100Y43",
                      "supplier_address": "成都市一环路 8 号", "supplier_contact": "张三",
                      "site_name": "犀浦站", "site_address": "郫都区犀浦镇"}}
    first = datetime(2026, 11, 3, 2, tzinfo=UTC)
    reviews = {1: [{"decision": "dismissed", "reviewed_by": "Li", "reviewed_at": first, "note": "x"},
                   {"decision": "confirmed", "reviewed_by": "Wang",
                    "reviewed_at": first + timedelta(days=1), "note": "meter photo matches"}]}
    report = overcharging_report([flag(1, "B1", evidence=ev),
                                  flag(2, "B2", kind="overbilling",
                                       evidence={"metered_kwh_by_meter": {"M1": 60.0, "M2": 20.5}})],
                                 "2026-10", parties=parties, reviews=reviews)
    b1 = report.bills.set_index("bill_id").loc["B1"]
    assert (b1["supplier_name"], b1["supplier_credit_code"], b1["site_address"]) == (
        "成都某物业", "91350100M000100Y43", "郫都区犀浦镇")
    assert (b1["review_decision"], b1["reviewed_by"], b1["review_note"]) == (
        "confirmed", "Wang", "meter photo matches")  # the latest decision
    assert list(report.reviews["reviewed_by"]) == ["Li", "Wang"]  # the whole trail
    ev_rows = report.evidence
    assert list(ev_rows["item"]) == ["tariff row", "tariff row", "energy mix", "energy mix",
                                     "metered by meter", "metered by meter"]
    mix = ev_rows[ev_rows["item"] == "energy mix"].set_index("tou_period")
    assert mix.loc["peak", "energy_share"] == pytest.approx(0.25)
    assert ev_rows.iloc[0]["effective_from"] == pd.Timestamp("2025-12-31T16:00:00Z")
    zh = {s.name: s for s in report.sheets("zh-CN")}
    assert set(zh) == {"疑似违规账单", "按转供电方汇总", "账单证据明细", "复核记录", "限价计算方法"}
    shown = zh["疑似违规账单"].frame.set_index("bill_id")
    assert shown.loc["B1", "cap_basis"] == "最高时段电价（计量数据仅覆盖计费期的 75%）"
    assert (shown.loc["B1", "kind"], shown.loc["B2", "kind"]) == ("超标收费", "多计电量")
    assert "Asia/Shanghai" in zh["限价计算方法"].frame["explanation"].iloc[0]


def test_every_report_label_has_a_zh_cn_translation():
    zh = catalog("zh-CN", "reports")
    wanted = {*BILL_COLUMNS.values(), *TOTAL_COLUMNS.values(), *EVIDENCE_COLUMNS.values(),
              *REVIEW_COLUMNS.values(), *SHEETS.values(), *VALUE_LABELS, PARTIAL_BASIS, *CAP_STEPS}
    missing = sorted(m for m in wanted if not zh.get(m))
    assert not missing, f"untranslated report labels: {missing}"
    assert all(len(zh[name]) <= 31 for name in SHEETS.values())  # Excel's sheet-name limit
    assert "{coverage}" in zh[PARTIAL_BASIS]
    for step in CAP_STEPS:
        assert all(("{" + k + "}" in zh[step]) == ("{" + k + "}" in step) for k in ("period", "zone"))
    # Every column the report writes has a label, so none is left untranslated.
    report = overcharging_report([flag(1, "B1")], "2026-10")
    for sheet in report.sheets("zh-CN"):
        assert set(sheet.frame.columns) <= set(sheet.labels), sheet.name


# --- end to end: CSV imports, the real rule, a review, the XLSX ----------------------------

SITES_CSV = ("site_id,name,lat,lon,county,kind,supply,region,customer_class,address\n"
             "S1,犀浦站,30.8,103.9,Pi,macro,transfer,SC,commercial,四川省成都市郫都区犀浦镇 1 号\n")
TARIFFS_CSV = ("region,customer_class,effective_from,price_cny_per_kwh,period,hours\n"
               "SC,commercial,2026-01-01,0.6,flat,\n"
               "SC,commercial,2026-01-01,1.0,peak,8-11;18-21\n")
BILLS_CSV = ("bill_id,site_id,supplier_id,period_start,period_end,billed_kwh,amount_cny,"
             "supplier_name,supplier_credit_code,supplier_address,supplier_contact\n"
             "B-OCT,S1,LL-1,2026-10-01,2026-11-01,7440,8928,成都某物业管理有限公司,"
             "91350100M000100Y43,成都市一环路 8 号,张三 138-0000-0000\n")


def _energy_hourly() -> pd.DataFrame:
    """10 kW steady from a day before the local month to a day after: 7440 kWh in October."""
    times = pd.date_range(OCT_START - timedelta(days=1), OCT_END + timedelta(days=1), freq="h",
                          tz="UTC")
    return pd.DataFrame({"time": times, "site_id": "S1", "meter_id": "M1",
                         "energy_kwh": 1000.0 + 10.0 * np.arange(len(times))})


@pytest.fixture
def cli(twin_url, tmp_path, monkeypatch, capsys):
    from sitetwin.cli import main

    monkeypatch.setenv("SITETWIN_TWIN__URL", twin_url)
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))
    # Reviews are announced over MQTT and InfluxDB, best effort: point both at nothing.
    monkeypatch.setenv("SITETWIN_MQTT__SERVERS", '["mqtt://127.0.0.1:9"]')
    monkeypatch.setenv("SITETWIN_INFLUXDB__URL", "http://127.0.0.1:9")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.mark.integration
def test_overcharging_report_end_to_end(cli, twin_url, tmp_path):
    from rules.data import load_facts
    from rules.flag import FlagBook
    from rules.overcharging import BillThresholds, evaluate_overcharging
    from twin.store import open_store

    for kind, body in (("sites", SITES_CSV), ("tariffs", TARIFFS_CSV), ("bills", BILLS_CSV)):
        (tmp_path / f"{kind}.csv").write_text(body, encoding="utf-8")
        code, _, err = cli(kind, "import", str(tmp_path / f"{kind}.csv"))
        assert code == 0, err
    now = OCT_END + timedelta(days=2)
    store = open_store(twin_url)
    try:
        facts = load_facts(store)
        # Dates in the CSV are local: the bill starts at 16:00Z the day before.
        assert facts.bills.iloc[0]["period_start"] == pd.Timestamp(OCT_START)
        (finding,) = evaluate_overcharging({"energy_readings": _energy_hourly()}, facts, now,
                                           BillThresholds())
        (flag_id,) = [f["id"] for f in FlagBook(store).sync("overcharging", [finding], now, 0).opened]
    finally:
        store.close()
    code, out, err = cli("flags", "review", str(flag_id), "--decision", "confirmed", "--by",
                         "王检查员", "--note", "电表照片与计量一致")
    assert code == 0, err
    assert "2026-10-01 00:00 +08:00 .. 2026-11-01 00:00 +08:00 (end exclusive)" in out
    assert "[times in Asia/Shanghai]" in out

    code, out, err = cli("report", "overcharging", "--period", "2026-10", "--lang", "zh-CN",
                         "--out", str(tmp_path / "oc.xlsx"))
    assert code == 0, err
    assert "1 flagged bill(s) starting in 2026-10" in out and "Asia/Shanghai" in out
    assert "1 reviewed" in out
    wb = openpyxl.load_workbook(tmp_path / "oc.xlsx")
    assert wb.sheetnames == ["疑似违规账单", "按转供电方汇总", "账单证据明细", "复核记录", "限价计算方法"]
    ws = wb["疑似违规账单"]
    header = [c.value for c in ws[1]]
    row = dict(zip(header, list(ws[2]), strict=True))
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref.startswith("A1:")
    assert ws.max_row == 2
    assert row["账单编号"].value == "B-OCT" and row["问题类型"].value == "超标收费"
    assert row["统一社会信用代码"].value == "91350100M000100Y43"
    assert row["转供电方名称"].value == "成都某物业管理有限公司"
    assert row["转供电方联系方式"].value == "张三 138-0000-0000"
    assert (row["站点名称"].value, row["站点地址"].value) == ("犀浦站", "四川省成都市郫都区犀浦镇 1 号")
    start, end = row["计费期起 (Asia/Shanghai)"], row["计费期止（不含） (Asia/Shanghai)"]
    assert (start.value, end.value) == (datetime(2026, 10, 1), datetime(2026, 11, 1))
    assert start.is_date and start.number_format == "yyyy-mm-dd hh:mm"
    amount, price = row["账单金额（元）"], row["结算单价（元/kWh）"]
    assert (amount.value, amount.number_format) == (8928.0, "#,##0.00")
    assert (price.value, price.number_format) == (pytest.approx(1.2), "#,##0.0000")
    assert row["计费电量 (kWh)"].number_format == "#,##0.0##"
    assert row["计量数据覆盖率"].number_format == "0.0%"
    # The review trail: decision, who, when (local), note.
    assert (row["复核结论"].value, row["复核人"].value, row["复核备注"].value) == (
        "已确认", "王检查员", "电表照片与计量一致")
    reviewed = row["复核时间 (Asia/Shanghai)"].value
    shanghai_now = (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None)
    assert isinstance(reviewed, datetime) and abs((reviewed - shanghai_now).total_seconds()) < 300
    trail = list(wb["复核记录"].values)
    assert trail[0][3:] == ("复核结论", "复核人", "复核时间 (Asia/Shanghai)", "复核备注")
    assert trail[1][3:5] == ("已确认", "王检查员")
    # Evidence as rows: the two tariff rows, then the energy mix per time-of-use period.
    ev = list(wb["账单证据明细"].values)
    items = [(r[3], r[4]) for r in ev[1:]]
    assert items == [("电价条目", "平段"), ("电价条目", "峰段"), ("电量结构", "平段"),
                     ("电量结构", "峰段")]
    mix = {r[4]: r[9] for r in ev[1:] if r[3] == "电量结构"}
    assert mix == {"平段": pytest.approx(5580.0), "峰段": pytest.approx(1860.0)}  # 6 peak h/day
    assert ev[1][6] == datetime(2026, 1, 1)  # effective_from as a local date-time
    totals = list(wb["按转供电方汇总"].values)
    assert totals[0][0] == "行类型" and [r[0] for r in totals[1:]] == ["转供电方小计", "合计"]
    cap = [r[1] for r in wb["限价计算方法"].values]
    assert cap[0] == "限价计算方法" and any("2026-10" in c for c in cap[1:])

    # English, and September's report holds no October bill.
    code, out, err = cli("report", "overcharging", "--period", "2026-10", "--lang", "en",
                         "--out", str(tmp_path / "oc-en.xlsx"))
    assert code == 0, err
    en = openpyxl.load_workbook(tmp_path / "oc-en.xlsx")
    assert en.sheetnames == ["Flagged bills", "Totals per supplier", "Evidence per bill",
                             "Review trail", "How the cap is made"]
    assert [c.value for c in en["Flagged bills"][1]][:3] == ["Flag", "Bill", "Finding"]
    code, out, _ = cli("report", "overcharging", "--period", "2026-09", "--out",
                       str(tmp_path / "sep.csv"), "--json")
    assert json.loads(out)["bills"] == 0
    code, out, _ = cli("report", "overcharging", "--period", "2026-10", "--out",
                       str(tmp_path / "oct.csv"), "--json")
    data = json.loads(out)
    assert (data["bills"], data["period_start"], data["period_end"]) == (
        1, "2026-09-30T16:00:00Z", "2026-10-31T16:00:00Z")
    text = (tmp_path / "oct.csv").read_text(encoding="utf-8-sig")
    head, first = text.splitlines()[:2]
    assert head.startswith("row,flag_id,bill_id,") and "period_start (Asia/Shanghai)" in head
    assert "2026-10-01T00:00:00+08:00" in first and "91350100M000100Y43" in first
    code, _, err = cli("report", "overcharging", "--period", "2026-10", "--lang", "fr",
                       "--out", str(tmp_path / "x.csv"))
    assert code == 1 and "unsupported language" in err
