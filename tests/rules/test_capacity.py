"""The capacity (reservations) report on real services: coincident feeder and substation peaks
from InfluxDB, ratings from feeders.csv / substations.csv, a past month with that month's
reservation, one XLSX sheet per level (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from rules.capacity import capacity_sheets, members
from rules.rule import Facts
from sitetwin.cli import main
from tests.rules.helpers import sites

pytestmark = pytest.mark.integration

LOCAL = ZoneInfo("Asia/Shanghai")
SITES_CSV = """site_id,name,lat,lon,county,kind,supply,region,customer_class,state,state_since
A,Noon site,30.1,104.1,Xinjin,macro,direct,SC,industrial,on_air,2026-01-01
B,Evening site,30.2,104.2,Xinjin,macro,direct,SC,industrial,on_air,2026-01-01
C,Two meters,30.3,104.3,Pi,micro,transfer,SC,industrial,on_air,2026-01-01
"""
# A's reservation was raised on 1 November (local): October keeps 8 kW.
RESERVATIONS_CSV = """site_id,declared_kw,reserved_kw,feeder,substation,status,effective_from
A,6,8,F-A,SUB-1,energized,2026-09-01
A,12,15,F-A,SUB-1,energized,2026-11-01
B,15,20,F-A,SUB-1,energized,
C,8,10,F-B,SUB-1,energized,
"""
FEEDERS_CSV = "feeder,substation,rated_kw\nF-A,SUB-1,30\nF-B,SUB-1,8\nF-X,SUB-2,50\n"
SUBSTATIONS_CSV = "substation,rated_kw\nSUB-1,40\n"


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 10**9


def _points() -> list[str]:
    """A day in October: A draws 10 kW at noon, B 10 kW at 20:00, 2 kW otherwise; C 5 kW
    always, on two meters.  Individual peaks 10 + 10 + 5, coincident on F-A 12 kW."""
    lines = []
    t, end = datetime(2026, 10, 10, tzinfo=LOCAL), datetime(2026, 10, 11, tzinfo=LOCAL)
    while t < end:
        hour = t.hour
        for site, kw, meter in (("A", 10.0 if hour == 12 else 2.0, "M-A"),
                                ("B", 10.0 if hour == 20 else 2.0, "M-B"),
                                ("C", 2.5, "M-C1"), ("C", 2.5, "M-C2")):
            lines.append(line("power", {"site_id": site, "meter_id": meter},
                              {"energy_kwh": 1.0, "power_kw": kw}, _ns(t)))
        t += timedelta(minutes=5)
    # November: A at 50 kW for an hour (outside October's window).
    t = datetime(2026, 11, 5, 9, tzinfo=LOCAL)
    for i in range(12):
        lines.append(line("power", {"site_id": "A", "meter_id": "M-A"},
                          {"energy_kwh": 1.0, "power_kw": 50.0}, _ns(t + timedelta(minutes=5 * i))))
    return lines


@pytest.fixture
def cli(influxdb, influx_db, twin_url, tmp_path, capsys):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(_points()).encode()).rejected
    writer.close()
    cfg = tmp_path / "sitetwin.toml"
    cfg.write_text(f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n'
                   f'[twin]\nurl = "{twin_url}"\n[services]\nstate_dir = "{tmp_path / "state"}"\n')

    def run(*argv: str) -> dict:
        capsys.readouterr()
        code = main([*argv, "--config", str(cfg), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    for name, text in (("sites", SITES_CSV), ("reservations", RESERVATIONS_CSV),
                       ("feeders", FEEDERS_CSV), ("substations", SUBSTATIONS_CSV)):
        (tmp_path / f"{name}.csv").write_text(text)
        run(name, "import", str(tmp_path / f"{name}.csv"))
    return run


def _sheet(book, name: str) -> dict[str, dict]:
    rows = list(book[name].values)
    return {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}


def test_past_month_sheets_per_level_with_coincident_peaks(cli, tmp_path):
    out = cli("report", "reservations", "--period", "2026-10", "--out", str(tmp_path / "oct.xlsx"))
    assert (out["sites"], out["feeders"], out["substations"]) == (3, 3, 1)
    book = openpyxl.load_workbook(tmp_path / "oct.xlsx")
    assert book.sheetnames == ["sites", "feeders", "substations"]
    site = _sheet(book, "sites")
    # October's reservation of A (8 kW), not today's (15 kW); location and county listed.
    assert (site["A"]["reserved_kw"], site["A"]["peak_kw"], site["A"]["headroom_kw"]) == (8.0, 10.0, -2.0)
    assert (site["A"]["name"], site["A"]["county"], site["A"]["lat"]) == ("Noon site", "Xinjin", 30.1)
    assert site["C"]["peak_kw"] == pytest.approx(5.0)  # two meters summed
    feeder = _sheet(book, "feeders")
    # Coincident: A and B never peak together - 12 kW, not the 20 kW of their own peaks.
    fa = feeder["F-A"]
    assert fa["coincident_peak_kw"] == pytest.approx(12.0) and fa["sum_site_peaks_kw"] == pytest.approx(20.0)
    assert (fa["rated_kw"], fa["headroom_kw"], fa["reserved_kw"], fa["sites"]) == (30.0, 18.0, 28.0, 2)
    assert fa["utilisation_pct"] == 40.0
    assert fa["peak_at"] is not None
    assert feeder["F-X"]["sites"] == 0 and feeder["F-X"]["coincident_peak_kw"] is None  # rated, no site yet
    assert feeder["F-X"]["substation"] == "SUB-2"
    sub = _sheet(book, "substations")
    assert sub["SUB-1"]["coincident_peak_kw"] == pytest.approx(17.0)
    assert sub["SUB-1"]["sum_site_peaks_kw"] == pytest.approx(25.0)
    assert (sub["SUB-1"]["rated_kw"], sub["SUB-1"]["headroom_kw"], sub["SUB-1"]["feeders"]) == (40.0, 23.0, 2)


def test_the_next_month_uses_the_raised_reservation(cli, tmp_path):
    cli("report", "reservations", "--period", "2026-11", "--out", str(tmp_path / "nov.csv"))
    table = pd.read_csv(tmp_path / "nov.csv", encoding="utf-8-sig")
    a = table[(table["level"] == "site") & (table["site_id"] == "A")].iloc[0]
    assert (a["reserved_kw"], a["peak_kw"], a["headroom_kw"]) == (15.0, 50.0, -35.0)
    fa = table[(table["level"] == "feeder") & (table["feeder"] == "F-A")].iloc[0]
    assert fa["coincident_peak_kw"] == pytest.approx(50.0) and fa["reserved_kw"] == pytest.approx(35.0)


def test_headers_and_sheet_names_in_chinese(cli, tmp_path):
    cli("report", "reservations", "--period", "2026-10", "--lang", "zh-CN",
        "--out", str(tmp_path / "zh.xlsx"))
    book = openpyxl.load_workbook(tmp_path / "zh.xlsx")
    assert book.sheetnames == ["站点", "馈线", "变电站"]
    header = next(book["馈线"].values)
    assert "额定容量 (kW)" in header and "同时最大负荷 (kW)" in header


def test_group_peaks_chunk_a_large_group_and_add_it_up(influxdb, influx_db):
    """A group above the 500-site filter is asked in chunks of summed buckets: same answer."""
    from connectors.influx import InfluxReader
    from rules.data import WindowData

    writer = InfluxWriter(influxdb.url, database=influx_db)
    t0 = datetime(2026, 10, 10, tzinfo=LOCAL)
    lines = [line("power", {"site_id": f"S{i:04d}", "meter_id": "M"},
                  {"energy_kwh": 1.0, "power_kw": 1.0 + (i % 2) * (k == 1)},
                  _ns(t0 + timedelta(minutes=15 * k)))
             for i in range(1200) for k in range(3)]
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()
    group = pd.DataFrame({"site_id": [f"S{i:04d}" for i in range(1200)],
                          "group": ["BIG"] * 1200})
    small = pd.DataFrame({"site_id": ["S0001", "S0002"], "group": ["SMALL", "SMALL"]})
    reader = InfluxReader(influxdb.url, database=influx_db)
    data = WindowData(reader)
    try:
        got = data.group_peaks(pd.concat([group, small]), t0, t0 + timedelta(hours=1)).set_index("group")
    finally:
        data.close()
        reader.close()
    assert got.loc["BIG", "peak_kw"] == pytest.approx(1800.0)  # 1200 sites + 600 odd ones at +1
    assert got.loc["SMALL", "peak_kw"] == pytest.approx(3.0)
    assert got.loc["BIG", "time"] == got.loc["SMALL", "time"] == pd.Timestamp(t0 + timedelta(minutes=15))


def test_capacity_sheets_without_ratings_leave_headroom_unknown():
    facts = Facts(sites=sites({"site_id": "A", "name": "a", "county": "X"},
                              {"site_id": "N", "name": "n", "county": "X", "state": "under_construction"}),
                  reservations=pd.DataFrame([{"site_id": "A", "declared_kw": 5.0, "reserved_kw": 6.0,
                                              "feeder": "F", "substation": "S", "status": "energized"}]))
    peaks = pd.DataFrame({"site_id": ["A"], "peak_kw": [4.0], "time": [pd.Timestamp("2026-10-10T04:00Z")]})
    group = pd.DataFrame({"group": ["F"], "peak_kw": [4.0], "time": [pd.Timestamp("2026-10-10T04:00Z")]})
    empty_f = pd.DataFrame(columns=["feeder", "substation", "rated_kw"])
    empty_s = pd.DataFrame(columns=["substation", "rated_kw"])
    start, end = pd.Timestamp("2026-10-01T00:00Z"), pd.Timestamp("2026-11-01T00:00Z")
    sheets = capacity_sheets(facts, peaks, group, group.assign(group="S"), empty_f, empty_s, start, end)
    site = sheets["site"].set_index("site_id")
    assert site.loc["N", "status"] == "missing" and pd.isna(site.loc["N", "reserved_kw"])
    assert site.loc["A", "headroom_kw"] == 2.0
    f = sheets["feeder"].set_index("feeder").loc["F"]
    assert f["coincident_peak_kw"] == 4.0 and pd.isna(f["rated_kw"]) and pd.isna(f["headroom_kw"])
    assert members(facts).to_dict("records") == [{"site_id": "A", "feeder": "F", "substation": "S"}]
