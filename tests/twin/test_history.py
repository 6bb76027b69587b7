"""Reservation and supply history: import with effective dates, values in force, the upgrade of an
existing registry, and the conversions and half-year progress reports built on it
(SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import openpyxl
import pandas as pd
import pytest
from sqlalchemy import select, text

from sitetwin.cli import main
from twin.history import SINCE_ALWAYS, in_force
from twin.imports import import_csv
from twin.migrations import latest_version
from twin.models import Reservation, ReservationChange, Site, SupplyChange
from twin.store import open_store

SITES = """site_id,name,lat,lon,county,kind,supply,region,customer_class,state,state_since
A,A,30.1,104.1,Xinjin,macro,transfer,SC,industrial,power_connected,2025-11-01
B,B,30.2,104.2,Xinjin,macro,transfer,SC,industrial,power_connected,2025-11-01
C,C,30.3,104.3,Pi,micro,transfer,SC,industrial,on_air,2025-05-01
D,D,30.4,104.4,Pi,pole,direct,SC,industrial,planned,2025-05-01
"""
# A converts in March, C in July (local dates), B in 2025 (another year), D has always been direct.
CONVERSIONS = """site_id,name,lat,lon,county,kind,supply,region,customer_class,effective_from
A,A,30.1,104.1,Xinjin,macro,direct,SC,industrial,2026-03-15
B,B,30.2,104.2,Xinjin,macro,direct,SC,industrial,2025-12-31T23:00:00+08:00
C,C,30.3,104.3,Pi,micro,direct,SC,industrial,2026-07-01
"""
RESERVATIONS = """site_id,declared_kw,reserved_kw,feeder,substation,status,effective_from
A,6,8,F-1,S-1,approved,2026-01-01
A,10,12,F-2,S-1,energized,2026-04-01
B,5,6,F-1,S-1,energized,
"""


def _write(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text(body)
    return path


def _rows(store, model):
    with store.session() as s:
        return s.scalars(select(model).order_by(model.site_id, model.effective_from)).all()


@pytest.mark.integration
def test_reservation_history_imports_idempotently(twin_url, tmp_path):
    store = open_store(twin_url)
    try:
        import_csv(store, _write(tmp_path, "sites.csv", SITES), "sites")
        path = _write(tmp_path, "res.csv", RESERVATIONS)
        result = import_csv(store, path, "reservations", zone="Asia/Shanghai")
        assert (result.inserted, result.updated) == (2, 0)
        changes = _rows(store, ReservationChange)
        assert [(c.site_id, c.reserved_kw, c.dated) for c in changes] == [
            ("A", 8.0, True), ("A", 12.0, True), ("B", 6.0, False)]
        # A date is local midnight (Asia/Shanghai: 16:00 UTC the day before).
        assert changes[0].effective_from == datetime(2025, 12, 31, 16, tzinfo=UTC)
        with store.session() as s:
            current = {r.site_id: (r.reserved_kw, r.feeder) for r in s.scalars(select(Reservation))}
        assert current == {"A": (12.0, "F-2"), "B": (6.0, "F-1")}  # the rows in force now
        import_csv(store, path, "reservations", zone="Asia/Shanghai")  # the same file again
        assert [(c.site_id, c.effective_from, c.reserved_kw) for c in _rows(store, ReservationChange)] \
            == [(c.site_id, c.effective_from, c.reserved_kw) for c in changes]
        # An undated row that differs from the value in force is a change now; history stays.
        import_csv(store, _write(tmp_path, "r2.csv", "site_id,declared_kw,reserved_kw,feeder,"
                                 "substation,status\nB,5,9,F-1,S-1,energized\n"), "reservations")
        b = [(c.reserved_kw, c.dated) for c in _rows(store, ReservationChange) if c.site_id == "B"]
        assert b == [(6.0, False), (9.0, False)]
        with store.session() as s:
            assert s.get(Reservation, "B").reserved_kw == 9.0
    finally:
        store.close()


@pytest.mark.integration
def test_two_rows_of_one_date_are_refused_and_nothing_is_imported(twin_url, tmp_path):
    store = open_store(twin_url)
    try:
        import_csv(store, _write(tmp_path, "sites.csv", SITES), "sites")
        from twin.errors import ImportFailed

        bad = RESERVATIONS + "A,6,8,F-1,S-1,approved,2026-01-01\n"
        with pytest.raises(ImportFailed) as exc:
            import_csv(store, _write(tmp_path, "bad.csv", bad), "reservations")
        assert "duplicate key" in str(exc.value.errors[0])
        assert _rows(store, ReservationChange) == []
    finally:
        store.close()


@pytest.mark.integration
def test_supply_changes_set_the_current_supply_and_keep_history(twin_url, tmp_path):
    store = open_store(twin_url)
    try:
        import_csv(store, _write(tmp_path, "sites.csv", SITES), "sites")
        future = CONVERSIONS + "D,D,30.4,104.4,Pi,pole,transfer,SC,industrial,2099-01-01\n"
        import_csv(store, _write(tmp_path, "conv.csv", future), "sites", zone="Asia/Shanghai")
        with store.session() as s:
            supply = dict(s.execute(select(Site.site_id, Site.supply)).all())
        # D's change is planned for 2099: direct today.
        assert supply == {"A": "direct", "B": "direct", "C": "direct", "D": "direct"}
        history = [(c.site_id, c.supply) for c in _rows(store, SupplyChange)]
        assert history == [("A", "transfer"), ("A", "direct"), ("B", "transfer"), ("B", "direct"),
                           ("C", "transfer"), ("C", "direct"), ("D", "direct"), ("D", "transfer")]
        # The same dated file again: nothing changes.
        import_csv(store, tmp_path / "conv.csv", "sites", zone="Asia/Shanghai")
        assert len(_rows(store, SupplyChange)) == 8
        # An undated file says what holds now: where it differs, a change now (history kept),
        # and the same undated file again changes nothing.
        import_csv(store, tmp_path / "sites.csv", "sites")
        assert len(_rows(store, SupplyChange)) == 11
        import_csv(store, tmp_path / "sites.csv", "sites")
        assert len(_rows(store, SupplyChange)) == 11
        with store.session() as s:
            assert s.get(Site, "A").supply == "transfer"
    finally:
        store.close()


@pytest.mark.integration
def test_an_existing_registry_gets_its_current_values_as_first_history_rows(twin_url, tmp_path):
    store = open_store(twin_url)
    import_csv(store, _write(tmp_path, "sites.csv", SITES), "sites")
    import_csv(store, _write(tmp_path, "res.csv", RESERVATIONS), "reservations")
    with store.session() as s:  # back to a registry of revision 0001
        for table in ("reservation_changes", "supply_changes", "feeders", "substations"):
            s.execute(text(f"DROP TABLE {table}"))
        s.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    store.close()
    store = open_store(twin_url)
    try:
        assert store.version == latest_version()
        with store.session() as s:
            res = s.scalars(select(ReservationChange)).all()
            assert {(r.site_id, r.reserved_kw, r.dated) for r in res} == {("A", 12.0, False),
                                                                          ("B", 6.0, False)}
            assert {r.effective_from for r in res} == {SINCE_ALWAYS}
            assert s.get(Reservation, "A").updated_at == next(r for r in res
                                                               if r.site_id == "A").recorded_at
            sup = s.scalars(select(SupplyChange)).all()
            assert {(r.site_id, r.supply) for r in sup} == {("A", "transfer"), ("B", "transfer"),
                                                            ("C", "transfer"), ("D", "direct")}
            assert s.execute(text("SELECT count(*) FROM feeders")).scalar() == 0
        # and it works on: a dated change after the upgrade
        import_csv(store, _write(tmp_path, "c.csv", CONVERSIONS), "sites")
        assert len(_rows(store, SupplyChange)) == 7
    finally:
        store.close()


def test_in_force_picks_the_last_row_and_assumes_only_undated_first_rows():
    ts = lambda v: pd.Timestamp(v, tz="UTC")  # noqa: E731
    changes = pd.DataFrame([
        ("A", ts("2026-01-01"), True, 8.0), ("A", ts("2026-04-01"), True, 12.0),
        ("B", ts("2026-05-01"), False, 6.0), ("C", ts("2026-05-01"), True, 3.0),
    ], columns=["site_id", "effective_from", "dated", "reserved_kw"])
    at = lambda t: dict(zip(*in_force(changes, ts(t))[["site_id", "reserved_kw"]].T.values, strict=False))  # noqa: E731
    assert at("2026-02-01") == {"A": 8.0, "B": 6.0}   # B undated: held before; C did not exist
    assert at("2026-04-01") == {"A": 12.0, "B": 6.0}  # a change at the instant counts
    assert at("2025-06-01") == {"B": 6.0}
    assert at("2026-06-01") == {"A": 12.0, "B": 6.0, "C": 3.0}
    got = in_force(changes, ts("2025-06-01"), assume_first=True)
    assert set(got["site_id"]) == {"A", "B", "C"}


def test_grid_history_gives_the_reservations_and_supply_then():
    from rules.data import GridHistory
    from rules.rule import Facts

    ts = lambda v: pd.Timestamp(v, tz="UTC")  # noqa: E731
    res = pd.DataFrame([
        ("A", ts("2026-01-01"), True, 6.0, 8.0, "F-1", "S-1", "approved"),
        ("A", ts("2026-04-01"), True, 10.0, 12.0, "F-2", "S-1", "energized"),
    ], columns=["site_id", "effective_from", "dated", "declared_kw", "reserved_kw", "feeder",
                "substation", "status"])
    sup = pd.DataFrame([("A", ts("2026-01-01"), "transfer"), ("A", ts("2026-03-01"), "direct")],
                       columns=["site_id", "effective_from", "supply"])
    today = Facts(sites=pd.DataFrame({"site_id": ["A", "Z"], "supply": ["direct", "transfer"],
                                      "state": ["on_air", "on_air"]}),
                  reservations=pd.DataFrame([{"site_id": "Z", "declared_kw": 1.0, "reserved_kw": 2.0,
                                              "feeder": "F-9", "substation": "S-9",
                                              "status": "energized"}]))
    history = GridHistory(res, sup)
    feb = history.facts_at(today, ts("2026-02-01"))
    assert feb.reservations.set_index("site_id")["reserved_kw"].to_dict() == {"A": 8.0, "Z": 2.0}
    assert feb.sites.set_index("site_id")["supply"].to_dict() == {"A": "transfer", "Z": "transfer"}
    may = history.facts_at(today, ts("2026-05-01"))
    assert may.reservations.set_index("site_id").loc["A", "feeder"] == "F-2"
    assert may.sites.set_index("site_id").loc["A", "supply"] == "direct"
    before = history.facts_at(today, ts("2025-06-01"))  # A's reservation starts with a dated row
    assert list(before.reservations["site_id"]) == ["Z"]


@pytest.fixture
def cli(twin_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SITETWIN_TWIN__URL", twin_url)
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))

    def run(*argv: str) -> str:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out
    return run


@pytest.mark.integration
def test_conversions_report_per_county_and_month(cli, tmp_path):
    cli("sites", "import", str(_write(tmp_path, "sites.csv", SITES)))
    cli("sites", "import", str(_write(tmp_path, "conv.csv", CONVERSIONS)))
    shown = json.loads(cli("sites", "show", "A", "--json"))
    assert [(r["supply"], r["effective_from"][:10]) for r in shown["supply_history"]] == [
        ("transfer", "1970-01-01"), ("direct", "2026-03-14")]  # local midnight, 15 March
    assert "supply history: transfer from 1970-01-01" in cli("sites", "show", "A")
    out = json.loads(cli("report", "conversions", "--year", "2026", "--out",
                         str(tmp_path / "c.xlsx"), "--json"))
    assert out["conversions"] == 2  # B converted on 31 December 2025, local time
    book = openpyxl.load_workbook(tmp_path / "c.xlsx")
    assert book.sheetnames == ["by county and month", "conversions"]
    rows = list(book["by county and month"].values)
    counts = {(r[0], r[1]): r[2] for r in rows[1:]}
    assert counts[("Xinjin", "2026-03")] == 1 and counts[("Pi", "2026-07")] == 1
    assert counts[("Xinjin", "2026-01")] == 0 and counts[("TOTAL", "2026-03")] == 1
    assert len(rows) - 1 == 3 * 12  # two counties and the total, every month
    detail = list(book["conversions"].values)
    assert [r[2] for r in detail[1:]] == ["C", "A"]  # Pi before Xinjin
    cli("report", "conversions", "--year", "2025", "--out", str(tmp_path / "c.csv"))
    rows = list(csv.DictReader((tmp_path / "c.csv").open(encoding="utf-8-sig")))
    assert [(r["county"], r["month"]) for r in rows if r["conversion_count"] == "1"] == [
        ("Xinjin", "2025-12"), ("TOTAL", "2025-12")]
    cli("report", "conversions", "--year", "2026", "--lang", "zh-CN", "--out", str(tmp_path / "z.xlsx"))
    assert openpyxl.load_workbook(tmp_path / "z.xlsx").sheetnames == ["按区县和月份", "转改直"]


@pytest.mark.integration
def test_progress_half_year_as_of_with_annual_and_cumulative_targets(cli, tmp_path):
    cli("sites", "import", str(_write(tmp_path, "sites.csv", SITES)))
    cli("sites", "import", str(_write(tmp_path, "conv.csv", CONVERSIONS)))
    cli("sites", "transition", "A", "on_air", "--at", "2026-02-01T00:00:00Z")
    cli("sites", "transition", "B", "on_air", "--at", "2026-08-01T00:00:00Z")
    targets = _write(tmp_path, "targets.csv", "year,county,target_sites\n2026,Xinjin,4\n2026,Pi,2\n")

    def report(*extra: str) -> dict[str, dict]:
        out = json.loads(cli("report", "progress", "--year", "2026", "--targets", str(targets),
                             "--out", str(tmp_path / "p.csv"), "--json", *extra))
        return {r["county"]: r for r in out["rows"]}

    h1 = report("--half", "1", "--as-of", "2026-06-01")
    x, p = h1["Xinjin"], h1["Pi"]
    assert (x["period"], x["target_kind"], x["on_air_in_year"], x["on_air_in_period"]) == (
        "2026-H1", "annual", 1, 1)
    assert x["progress_pct"] == 25.0
    assert x["as_of"].startswith("2026-05-31 16:00:00")  # a date is local midnight
    # supply as it was on 1 June: A and B converted before, C not until July
    assert (x["direct_sites"], x["transfer_sites"], p["direct_sites"], p["transfer_sites"]) == (
        2, 0, 1, 1)
    h2 = report("--half", "2", "--as-of", "2026-09-01")
    x, p = h2["Xinjin"], h2["Pi"]
    assert (x["on_air_in_year"], x["on_air_in_period"], x["progress_pct"]) == (2, 1, 50.0)
    assert (p["direct_sites"], p["transfer_sites"]) == (2, 0)
    # cumulative: C, on air since 2025, counts towards Pi's target of 2 sites on air
    cum = report("--half", "2", "--as-of", "2026-09-01", "--targets-kind", "cumulative")
    assert (cum["Pi"]["target_kind"], cum["Pi"]["on_air_in_year"], cum["Pi"]["progress_pct"]) == (
        "cumulative", 0, 50.0)
    assert cum["TOTAL"]["progress_pct"] == round(100 * 3 / 6, 1)
    with (tmp_path / "p.csv").open(encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh))
    assert {"period", "target_kind", "on_air_in_period"} <= set(header)
    code = main(["report", "progress", "--year", "2026", "--half", "1", "--as-of", "2026-08-01",
                 "--out", str(tmp_path / "bad.csv")])
    assert code == 0  # a time after the half is its end
    assert main(["report", "progress", "--year", "2026", "--half", "2", "--as-of", "2026-03-01",
                 "--out", str(tmp_path / "bad.csv")]) == 1
