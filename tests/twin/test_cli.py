"""``sitetwin sites|reservations|tariffs|bills`` and ``report progress`` through ``cli.main``."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta, timezone

import openpyxl
import pytest

from connectors.reading import TowerReading
from sitetwin.cli import main
from twin.live import LiveState
from twin.store import open_store

pytestmark = pytest.mark.integration

SITES = """site_id,name,lat,lon,county,kind,supply,region,customer_class,planned_year,state,replaces_site_id,state_since
A1,=cmd|' /C calc'!A0,30.1,104.1,Xinjin,macro,direct,Sichuan,industrial,2026,power_connected,,2026-01-10
A2,Two,30.2,104.2,Xinjin,pole,transfer,Sichuan,commercial,2026,planned,,2026-01-01T00:00:00Z
A3,Three,30.3,104.3,Pi,micro,direct,Sichuan,industrial,2025,on_air,,2025-06-30
A4,Four,30.4,104.4,Pi,indoor,transfer,Sichuan,industrial,2026,under_construction,A3,2026-02-01
"""


@pytest.fixture
def cli(twin_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SITETWIN_TWIN__URL", twin_url)
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_import_list_show_transition(cli, tmp_path, twin_url):
    (tmp_path / "sites.csv").write_text(SITES)
    code, out, err = cli("sites", "import", str(tmp_path / "sites.csv"), "--json")
    assert code == 0 and json.loads(out)["inserted"] == 4
    (tmp_path / "res.csv").write_text("site_id,declared_kw,reserved_kw,feeder,substation,status\n"
                                      "A1,6,8,F-7,Xinjin-110kV,approved\n")
    assert cli("reservations", "import", str(tmp_path / "res.csv"))[1].startswith(
        "reservations: 1 inserted")

    code, out, _ = cli("sites", "list", "--county", "Xinjin", "--json")
    assert [s["site_id"] for s in json.loads(out)] == ["A1", "A2"]
    code, out, _ = cli("sites", "list", "--supply", "transfer", "--state", "planned")
    assert "A2" in out and "A4" not in out and "1 site(s)" in out

    code, out, err = cli("sites", "transition", "A1", "on_air", "--at", "2026-03-01T00:00:00Z",
                         "--note", "switched on", "--by", "wang")
    assert code == 0 and "power_connected -> on_air (put_on_air)" in out and "by wang" in out
    code, out, err = cli("sites", "transition", "A2", "on_air")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "sitetwin: error: site 'A2' cannot go from planned to on_air: no such move"
        " (allowed: secure_site -> site_secured, block -> blocked)"]
    code, out, err = cli("sites", "transition", "A3", "relocating", "--at", "2026-04-01")
    code, out, err = cli("sites", "transition", "A3", "decommissioned", "--at", "2026-04-02")
    assert code == 1 and "replacement is under_construction" in err

    code, out, _ = cli("sites", "show", "A1", "--at", "2026-02-01", "--json")
    d = json.loads(out)
    assert d["state"] == "on_air" and d["state_at"] == "power_connected"
    assert [e["verb"] for e in d["history"]] == ["import", "put_on_air"]
    assert d["reservation"]["reserved_kw"] == 8.0 and d["live"] is None
    code, out, _ = cli("sites", "show", "A3")
    assert "replaced by: A4" in out and "history:" in out and "relocating" in out
    # People read local times, the zone named; --json stays UTC.  A date typed with --at
    # is local midnight: 2026-04-01 in Shanghai is 2026-03-31T16:00Z.
    assert "(times in Asia/Shanghai)" in out and "2026-04-01 00:00:00 +08:00" in out
    code, out, _ = cli("sites", "show", "A3", "--json")
    relocated = next(e for e in json.loads(out)["history"] if e["to_state"] == "relocating")
    assert relocated["at"] == "2026-03-31T16:00:00Z"
    code, out, _ = cli("sites", "show", "A1")
    assert "2026-03-01 08:00:00 +08:00" in out  # --at 2026-03-01T00:00:00Z kept its instant
    code, _, err = cli("sites", "show", "NOPE")
    assert code == 1 and "unknown site 'NOPE'" in err
    code, _, err = cli("sites", "show", "A1", "--at", "yesterday")
    assert code == 1 and "--at" in err


def test_online_filters_and_unregistered(cli, tmp_path, twin_url):
    (tmp_path / "sites.csv").write_text(SITES)
    cli("sites", "import", str(tmp_path / "sites.csv"))
    now = datetime.now(UTC)
    live = LiveState(online_window_s=180)
    live.observe_batch([TowerReading(site_id=s, ts=(now - timedelta(seconds=age)).timestamp(),
                                     mains_ok=True) for s, age in
                        (("A1", 10), ("A2", 3600), ("X9", 5))])
    store = open_store(twin_url)
    live.flush(store)
    store.close()
    code, out, _ = cli("sites", "list", "--online", "--json")
    assert code == 0, out
    assert [s["site_id"] for s in json.loads(out)] == ["A1"]
    assert json.loads(out)[0]["last_seen"].endswith("Z")  # --json stays UTC
    code, out, _ = cli("sites", "list", "--online")
    assert code == 0, out
    header, row = out.splitlines()[:2]
    seen = (now - timedelta(seconds=10)).astimezone(timezone(timedelta(hours=8)))
    assert "last_seen (Asia/Shanghai)" in header
    assert seen.strftime("%Y-%m-%d %H:%M:%S +08:00") in row  # local, its offset shown
    code, out, _ = cli("sites", "list", "--offline", "--json")
    assert code == 0, out
    # Offline is a site that should be on air and is silent: A2 (planned, seen an hour ago) and
    # A4 (under construction, never seen) are expected to be silent; A1 is online.
    assert [(s["site_id"], s["offline"]) for s in json.loads(out)] == [("A3", True)]
    code, out, _ = cli("sites", "list", "--json")
    assert code == 0, out
    assert [s["site_id"] for s in json.loads(out) if s["offline"]] == ["A3"]
    code, out, _ = cli("sites", "list", "--unregistered", "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["site_id"], r["online"]) for r in rows] == [("X9", True)]


def test_bad_import_reports_every_row_and_imports_nothing(cli, tmp_path):
    bad = SITES.replace("30.2,104.2", "300,104.2").replace("micro", "tower")
    (tmp_path / "bad.csv").write_text(bad)
    code, out, err = cli("sites", "import", str(tmp_path / "bad.csv"))
    assert code == 1
    assert "bad.csv: line 3, column lat: 300 is above 90" in err
    assert "bad.csv: line 4, column kind:" in err
    # A4 replaces A3, which is refused: the link is refused with it.
    assert "bad.csv: line 5, column replaces_site_id: 'A3' is not a registered site" in err
    assert "3 invalid row(s), nothing imported" in err.splitlines()[-1]
    assert json.loads(cli("sites", "list", "--json")[1]) == []
    code, out, err = cli("sites", "import", str(tmp_path / "bad.csv"), "--skip-invalid",
                         "--rejects", str(tmp_path / "rej.csv"))
    assert code == 0 and "1 inserted" in out and "3 rejected" in out
    assert len(list(csv.DictReader((tmp_path / "rej.csv").open()))) == 3


def test_tariffs_and_bills_import(cli, tmp_path):
    (tmp_path / "sites.csv").write_text(SITES)
    cli("sites", "import", str(tmp_path / "sites.csv"))
    (tmp_path / "t.csv").write_text("region,customer_class,effective_from,price_cny_per_kwh\n"
                                    "Sichuan,industrial,2026-01-01,0.62\n")
    assert cli("tariffs", "import", str(tmp_path / "t.csv"))[0] == 0
    (tmp_path / "b.csv").write_text("bill_id,site_id,supplier_id,period_start,period_end,"
                                    "billed_kwh,amount_cny\nB1,A2,LL1,2026-10-01,2026-11-01,900,1200\n")
    code, out, _ = cli("bills", "import", str(tmp_path / "b.csv"), "--json")
    assert code == 0 and json.loads(out)["inserted"] == 1


def test_report_progress_csv_and_xlsx(cli, tmp_path):
    (tmp_path / "sites.csv").write_text(SITES)
    cli("sites", "import", str(tmp_path / "sites.csv"))
    cli("sites", "transition", "A1", "on_air", "--at", "2026-05-01")
    (tmp_path / "targets.csv").write_text("year,county,target_sites\n2026,Xinjin,4\n2026,Pi,2\n"
                                          "2026,=1+2,1\n2025,Xinjin,9\n")
    code, out, err = cli("report", "progress", "--year", "2026", "--targets",
                         str(tmp_path / "targets.csv"), "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    rows = {r["county"]: r for r in csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8-sig"))}
    assert set(rows) == {"'=1+2", "Pi", "Xinjin", "TOTAL"}  # the formula county is neutralised
    x = rows["Xinjin"]
    assert (x["target_sites"], x["planned_in_year"], x["in_planning"], x["on_air_in_year"],
            x["progress_pct"], x["direct_sites"], x["transfer_sites"]) == (
        "4", "2", "1", "1", "25.0", "1", "1")
    p = rows["Pi"]
    assert (p["on_air"], p["under_construction"], p["on_air_in_year"]) == ("1", "1", "0")
    assert rows["TOTAL"]["target_sites"] == "7" and rows["TOTAL"]["on_air"] == "2"

    code, out, _ = cli("report", "progress", "--year", "2026", "--targets",
                       str(tmp_path / "targets.csv"), "--out", str(tmp_path / "p.xlsx"), "--json")
    assert code == 0 and json.loads(out)["out"].endswith("p.xlsx")
    ws = openpyxl.load_workbook(tmp_path / "p.xlsx").active
    values = [[c.value for c in row] for row in ws.iter_rows()]
    assert values[0][:3] == ["county", "year", "target_sites"]
    assert "'=1+2" in [r[0] for r in values] and all(c.data_type != "f" for row in ws.iter_rows()
                                                     for c in row)
    # A past year is reported as of its end: only A3 existed (on air since mid-2025).
    code, out, _ = cli("report", "progress", "--year", "2025", "--out", str(tmp_path / "q.csv"))
    rows = {r["county"]: r for r in csv.DictReader((tmp_path / "q.csv").open(encoding="utf-8-sig"))}
    assert code == 0 and set(rows) == {"Pi", "TOTAL"}
    assert (rows["Pi"]["on_air"], rows["Pi"]["on_air_in_year"], rows["Pi"]["planned_in_year"],
            rows["Pi"]["target_sites"]) == ("1", "1", "1", "")
    code, _, err = cli("report", "progress", "--year", "2026", "--out", str(tmp_path / "p.txt"))
    assert code == 1 and ".csv or .xlsx" in err
