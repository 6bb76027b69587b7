"""CSV imports on SQLite and PostgreSQL: all or nothing, --skip-invalid, idempotency, references."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from twin.errors import ImportFailed
from twin.imports import BILLS, RESERVATIONS, SITES, TARIFFS, import_csv
from twin.lifecycle import history, state_at
from twin.models import Bill, LifecycleEvent, Reservation, Site, Tariff

pytestmark = pytest.mark.integration

SITES_CSV = """\ufeff\
county,site_id,name,lat,lon,kind,supply,region,customer_class,operators,state,replaces_site_id,colour
Xinjin,S001,Huayuan Rd,30.41,103.81,macro,direct,Sichuan,industrial,CM;CT,on_air,,blue
Xinjin,S002,=HYPERLINK("http://x"),30.42,103.82,pole,transfer,Sichuan,commercial,CU,planned,S001,red
Pi,S003,Xipu,30.8,103.9,micro,direct,Sichuan,industrial,,,,
"""


def write(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def count(store, model) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_sites_import_then_reimport_is_idempotent(store, tmp_path):
    path = write(tmp_path, "sites.csv", SITES_CSV)
    r = import_csv(store, path, SITES)
    assert (r.inserted, r.updated, r.rejected) == (3, 0, 0)
    assert r.warnings == ("unknown column(s) ignored: colour",)
    with store.session() as s:
        s1, s2, s3 = (s.get(Site, i) for i in ("S001", "S002", "S003"))
        assert (s1.state, s1.operators, s1.kind, s1.lat) == ("on_air", "CM;CT", "macro", 30.41)
        assert s2.name == '=HYPERLINK("http://x")'  # stored as given; exports neutralise it
        assert s2.replaces_site_id == "S001" and s3.state == "planned" and s3.operators is None
        assert [e.verb for e in history(s, "S001")] == ["import"]
        assert state_at(s, "S001", datetime.now(UTC)).value == "on_air"
    again = import_csv(store, path, SITES)
    assert (again.inserted, again.updated) == (0, 3)
    assert count(store, Site) == 3 and count(store, LifecycleEvent) == 3


def test_reimport_updates_attributes_but_never_the_state(store, tmp_path):
    import_csv(store, write(tmp_path, "a.csv", SITES_CSV), SITES)
    changed = SITES_CSV.replace("Huayuan Rd", "Huayuan Road").replace("on_air", "decommissioned")
    r = import_csv(store, write(tmp_path, "b.csv", changed), SITES)
    assert any("another state" in w and "S001" in w for w in r.warnings)
    with store.session() as s:
        assert s.get(Site, "S001").name == "Huayuan Road"
        assert s.get(Site, "S001").state == "on_air"


def test_every_bad_row_is_reported_and_nothing_imported(store, tmp_path):
    body = ("site_id,name,lat,lon,county,kind,supply,region,customer_class,planned_year\n"
            "OK1,Fine,30,104,Xinjin,macro,direct,R,C,2026\n"
            "bad id,X,30,104,Xinjin,macro,direct,R,C,2026\n"
            "OK2,Y,91,104,Xinjin,tower,direct,R,C,1999\n"
            "OK3,,30,104,Xinjin,macro,direct,R,C,\n"
            "OK1,Dup,30,104,Xinjin,macro,direct,R,C,2026\n"
            "OK4,Short,30\n")
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "sites.csv", body), SITES)
    got = {(e.line, e.column) for e in err.value.errors}
    assert got == {(3, "site_id"), (4, "lat"), (4, "kind"), (4, "planned_year"), (5, "name"),
                   (6, "site_id"), (7, "*")}
    reasons = {(e.line, e.column): e.reason for e in err.value.errors}
    assert "above 90" in reasons[(4, "lat")] and "macro|micro|pole|indoor" in reasons[(4, "kind")]
    assert "already on line 2" in reasons[(6, "site_id")]
    assert "--skip-invalid" in str(err.value)
    assert count(store, Site) == 0 and count(store, LifecycleEvent) == 0


def test_skip_invalid_imports_valid_rows_and_writes_rejects(store, tmp_path):
    body = ("site_id,name,lat,lon,county,kind,supply,region,customer_class,replaces_site_id\n"
            "N1,New,30,104,Xinjin,macro,direct,R,C,\n"
            "N2,Newer,30,104,Xinjin,macro,direct,R,C,N1\n"
            "N3,Ghost link,30,104,Xinjin,macro,direct,R,C,NOWHERE\n"
            "N4,Self,30,104,Xinjin,macro,direct,R,C,N4\n"
            "N5,Bad supply,30,104,Xinjin,macro,heat,R,C,\n"
            "N6,=cmd|' /C calc'!A0,30,104,Xinjin,macro,solar,R,C,\n")
    rejects = tmp_path / "out" / "rejects.csv"
    r = import_csv(store, write(tmp_path, "sites.csv", body), SITES, skip_invalid=True,
                   rejects=rejects)
    assert (r.inserted, r.rejected, r.rejects_path) == (2, 4, str(rejects))
    rows = list(csv.DictReader(rejects.open(encoding="utf-8")))
    assert [(x["site_id"], x["line"]) for x in rows] == [("N3", "4"), ("N4", "5"), ("N5", "6"),
                                                         ("N6", "7")]
    # the rejects file opens in spreadsheets too: a formula cell is neutralised
    assert rows[3]["name"] == "'=cmd|' /C calc'!A0"
    assert "replaces_site_id: 'NOWHERE' is not a registered site" in rows[0]["reasons"]
    assert rows[1]["reasons"] == "replaces_site_id: a site cannot replace itself"
    assert rows[2]["reasons"] == "supply: 'heat' is not one of direct|transfer"
    assert count(store, Site) == 2


def test_bad_files_import_nothing(store, tmp_path):
    with pytest.raises(ImportFailed, match="missing required column"):
        import_csv(store, write(tmp_path, "a.csv", "site_id,name\nA,B\n"), SITES)
    with pytest.raises(ImportFailed, match="empty"):
        import_csv(store, write(tmp_path, "b.csv", ""), SITES)
    latin = tmp_path / "c.csv"
    latin.write_bytes("site_id,name,lat,lon,county,kind,supply,region,customer_class\n"
                      "A,Caf\xe9,1,2,C,macro,direct,R,C\n".encode("latin-1"))
    with pytest.raises(ImportFailed, match="not UTF-8"):
        import_csv(store, latin, SITES)
    with pytest.raises(ImportFailed, match="cannot read"):
        import_csv(store, tmp_path / "absent.csv", SITES)


def test_reservations_need_registered_sites(store, tmp_path):
    import_csv(store, write(tmp_path, "sites.csv", SITES_CSV), SITES)
    body = ("site_id,declared_kw,reserved_kw,feeder,substation,status\n"
            "S001,8,10,F1,SubA,approved\n"
            "S404,8,10,F1,SubA,approved\n"
            "S002,-1,10,F1,SubA,maybe\n")
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "res.csv", body), RESERVATIONS)
    assert {(e.line, e.column) for e in err.value.errors} == {
        (3, "site_id"), (4, "declared_kw"), (4, "status")}
    r = import_csv(store, tmp_path / "res.csv", RESERVATIONS, skip_invalid=True)
    assert (r.inserted, r.rejected) == (1, 2)
    assert Path(r.rejects_path).name == "res.rejects.csv"
    r = import_csv(store, write(tmp_path, "res2.csv", "site_id,declared_kw,reserved_kw,feeder,"
                                "substation,status\nS001,9,12,F2,SubB,energized\n"), RESERVATIONS)
    assert (r.inserted, r.updated) == (0, 1)
    with store.session() as s:
        res = s.get(Reservation, "S001")
    assert (res.reserved_kw, res.feeder, res.status) == (12.0, "F2", "energized")


def test_tariffs_keyed_by_region_class_period_and_date(store, tmp_path):
    body = ("region,customer_class,effective_from,price_cny_per_kwh,period,hours\n"
            "Sichuan,industrial,2026-01-01,0.62,,\n"
            "Sichuan,industrial,2026-01-01,0.95,peak,8-11;18-21\n"
            "Sichuan,industrial,2026-07-01T00:00:00+08:00,0.64,flat,\n")
    path = write(tmp_path, "tariffs.csv", body)
    assert import_csv(store, path, TARIFFS).inserted == 3
    assert import_csv(store, path, TARIFFS).updated == 3
    assert count(store, Tariff) == 3
    with store.session() as s:
        rows = s.scalars(select(Tariff).order_by(Tariff.effective_from, Tariff.period)).all()
    # A date is local midnight in the default zone (Asia/Shanghai): 16:00Z the day before.
    assert [(t.period, t.hours, t.effective_from) for t in rows] == [
        ("flat", None, datetime(2025, 12, 31, 16, tzinfo=UTC)),
        ("peak", "8-11;18-21", datetime(2025, 12, 31, 16, tzinfo=UTC)),
        ("flat", None, datetime(2026, 6, 30, 16, tzinfo=UTC))]
    bad = ("region,customer_class,effective_from,price_cny_per_kwh,period,hours\n"
           "R,C,2026-13-01,0,valley,\n"
           "R,C,2026-01-01,0.3,valley,8-8\n")
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "bad.csv", bad), TARIFFS)
    assert {(e.line, e.column) for e in err.value.errors} == {
        (2, "effective_from"), (2, "price_cny_per_kwh"), (3, "hours")}


def test_bills(store, tmp_path):
    import_csv(store, write(tmp_path, "sites.csv", SITES_CSV), SITES)
    body = ("bill_id,site_id,supplier_id,period_start,period_end,billed_kwh,amount_cny,"
            "supplier_name,meter_id\n"
            "B1,S002,LL-7,2026-10-01,2026-11-01,1200,1500.5,+Landlord Co,M-2\n"
            "B2,S002,LL-7,2026-11-01,2026-10-01,10,10,,\n")
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "bills.csv", body), BILLS)
    assert [(e.line, e.column) for e in err.value.errors] == [(3, "period_end")]
    r = import_csv(store, tmp_path / "bills.csv", BILLS, skip_invalid=True)
    assert (r.inserted, r.rejected) == (1, 1)
    with store.session() as s:
        b = s.get(Bill, "B1")
    assert (b.supplier_name, b.meter_id, b.billed_kwh, b.period_start, b.period_end) == (
        "+Landlord Co", "M-2", 1200.0, datetime(2026, 9, 30, 16, tzinfo=UTC),
        datetime(2026, 10, 31, 16, tzinfo=UTC))
    assert b.supplier_credit_code is None  # optional columns absent from the file


def test_dates_are_local_in_the_given_zone_and_offsets_keep_their_instant(store, tmp_path):
    import_csv(store, write(tmp_path, "sites.csv", SITES_CSV), SITES)
    body = ("bill_id,site_id,supplier_id,period_start,period_end,billed_kwh,amount_cny\n"
            "B1,S001,LL,2026-10-01,2026-11-01T00:00,1,1\n"
            "B2,S001,LL,2026-10-01T00:00:00Z,2026-11-01T00:00:00+08:00,1,1\n")
    import_csv(store, write(tmp_path, "bills.csv", body), BILLS, zone="Europe/Berlin")
    with store.session() as s:
        b1, b2 = s.get(Bill, "B1"), s.get(Bill, "B2")
    # Berlin: CEST (+02:00) on 1 October, CET (+01:00) on 1 November.
    assert (b1.period_start, b1.period_end) == (datetime(2026, 9, 30, 22, tzinfo=UTC),
                                                datetime(2026, 10, 31, 23, tzinfo=UTC))
    assert (b2.period_start, b2.period_end) == (datetime(2026, 10, 1, tzinfo=UTC),
                                                datetime(2026, 10, 31, 16, tzinfo=UTC))


def test_supplier_identity_columns_and_the_credit_code_check(store, tmp_path):
    import_csv(store, write(tmp_path, "sites.csv", "site_id,name,lat,lon,county,kind,supply,region,"
                            "customer_class,address\nS9,Tower,30,104,Pi,macro,transfer,SC,C,"
                            "四川省成都市郫都区犀浦镇1号\n"), SITES)
    head = ("bill_id,site_id,supplier_id,period_start,period_end,billed_kwh,amount_cny,"
            "supplier_credit_code,supplier_address,supplier_contact\n")
    good = head + "B1,S9,LL,2026-10-01,2026-11-01,10,8,91350100M000100Y43,成都市一环路 8 号,张三 138-0000-0000\n"
    bad = head + ("B2,S9,LL,2026-10-01,2026-11-01,10,8,91350100M000100Y44,,\n"  # check fails
                  "B3,S9,LL,2026-10-01,2026-11-01,10,8,91350100M000100Y4,,\n"   # 17 characters
                  "B4,S9,LL,2026-10-01,2026-11-01,10,8,91350100M000100I43,,\n"  # I is not used
                  "B5,S9,LL,2026-10-01,2026-11-01,10,8,91350100m000100y43,,\n")  # lower case
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "bad.csv", bad), BILLS)
    reasons = {e.line: e.reason for e in err.value.errors}
    assert {e.column for e in err.value.errors} == {"supplier_credit_code"}
    assert "check character" in reasons[2] and "18 characters" in reasons[3]
    assert "not used" in reasons[4] and "capitals" in reasons[5]
    assert count(store, Bill) == 0
    import_csv(store, write(tmp_path, "good.csv", good), BILLS)
    with store.session() as s:
        b, site = s.get(Bill, "B1"), s.get(Site, "S9")
    assert (b.supplier_credit_code, b.supplier_address, b.supplier_contact) == (
        "91350100M000100Y43", "成都市一环路 8 号", "张三 138-0000-0000")
    assert site.address == "四川省成都市郫都区犀浦镇1号"


# -- strict cells ------------------------------------------------------------------------------

SITE_HEADER = "site_id,name,lat,lon,county,kind,supply,region,customer_class,planned_year\n"


@pytest.mark.parametrize(("column", "cell", "reason"), [
    ("lat", "3_0", "not a number"),            # float() reads it as 30
    ("lat", "３０.5", "not a number"),          # full-width digits
    ("lat", "٣٠", "not a number"),              # Arabic-Indic digits
    ("lat", "nan", "not a number"),
    ("lat", "1,5", "not a number"),
    ("planned_year", "2_026", "not a whole number"),
    ("planned_year", "２０２６", "not a whole number"),
    ("name", "Huayuan\x00Rd", "control character U+0000 at position 8"),
    ("name", "A\x1b[31mred", "control character U+001B"),
    ("county", "Xin\x85jin", "control character U+0085"),
])
def test_numbers_are_ascii_and_text_has_no_control_characters(store, tmp_path, column, cell, reason):
    row = {"site_id": "S9", "name": "ok", "lat": "30.5", "lon": "104", "county": "Pi",
           "kind": "macro", "supply": "direct", "region": "R", "customer_class": "C",
           "planned_year": "2026", column: cell}
    path = tmp_path / "sites.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(SITE_HEADER)
        csv.writer(fh).writerow([row[h] for h in SITE_HEADER.strip().split(",")])
    with pytest.raises(ImportFailed) as err:
        import_csv(store, path, SITES)
    (e,) = err.value.errors
    assert (e.line, e.column) == (2, column) and reason in e.reason
    assert count(store, Site) == 0


def test_plain_numbers_still_read(store, tmp_path):
    body = SITE_HEADER + "S9,ok, -30.5e0 ,+104.,Pi,macro,direct,R,C, 2026 \n"
    assert import_csv(store, write(tmp_path, "sites.csv", body), SITES).inserted == 1
    with store.session() as s:
        site = s.get(Site, "S9")
    assert (site.lat, site.lon, site.planned_year) == (-30.5, 104.0, 2026)


# -- tariff hours: one parser, no overlaps -------------------------------------------------------

TARIFF_HEADER = "region,customer_class,effective_from,price_cny_per_kwh,period,hours\n"


def test_tariff_hours_wrap_midnight_and_are_read_as_the_rule_reads_them(store, tmp_path):
    from rules.overcharging import parse_hours

    body = TARIFF_HEADER + ("R,C,2026-01-01,0.3,valley, 22-6 ; 12 \n"
                            "R,C,2026-01-01,0.9,peak,8-11;18-21\n")
    assert import_csv(store, write(tmp_path, "t.csv", body), TARIFFS).inserted == 2
    with store.session() as s:
        stored = {t.period: t.hours for t in s.scalars(select(Tariff))}
    assert stored == {"valley": "22-6;12", "peak": "8-11;18-21"}
    assert parse_hours(stored["valley"]) == {22, 23, 0, 1, 2, 3, 4, 5, 12}


@pytest.mark.parametrize("cell", ["8-8", "25", "24-3", "8-25", "8-11,18-21", "８-11", "8-1_1", "8-"])
def test_tariff_hours_that_either_reader_would_misread_are_refused(store, tmp_path, cell):
    from rules.overcharging import parse_hours

    body = TARIFF_HEADER + f'R,C,2026-01-01,0.3,valley,"{cell}"\n'
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "t.csv", body), TARIFFS)
    assert [(e.line, e.column) for e in err.value.errors] == [(2, "hours")]
    with pytest.raises(ValueError):
        parse_hours(cell)


def test_overlapping_periods_of_one_region_class_and_date_are_refused_naming_both_rows(
        store, tmp_path):
    body = TARIFF_HEADER + ("R,C,2026-01-01,0.5,,\n"
                            "R,C,2026-01-01,0.9,peak,8-12;18-21\n"
                            "R,C,2026-01-01,1.2,sharp,10-11\n"
                            "R,C,2026-01-01,0.3,valley,22-8\n"
                            "R,D,2026-01-01,1.2,sharp,10-11\n")  # another class: no overlap
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "t.csv", body), TARIFFS)
    by_line = {e.line: e.reason for e in err.value.errors}
    assert sorted(by_line) == [3, 4]
    assert "peak hours overlap sharp hours 10-11 of line 4 at 10-11" in by_line[3]
    assert "sharp hours overlap peak hours 8-12;18-21 of line 3 at 10-11" in by_line[4]
    assert "region R, class C" in by_line[3]
    assert count(store, Tariff) == 0
    # With --skip-invalid the others go in and the two are written to the rejects file.
    r = import_csv(store, write(tmp_path, "t.csv", body), TARIFFS, skip_invalid=True)
    assert (r.inserted, r.rejected) == (3, 2)
    rejects = Path(r.rejects_path).read_text()
    assert "line 4" in rejects and "line 3" in rejects


def test_a_period_overlapping_a_registered_one_in_force_is_refused(store, tmp_path):
    first = TARIFF_HEADER + "R,C,2026-01-01,0.9,peak,8-12\n"
    import_csv(store, write(tmp_path, "t1.csv", first), TARIFFS)
    # A later valley row overlapping the peak still in force then; and a row that replaces the
    # registered peak (same key) with hours that no longer overlap is fine.
    later = TARIFF_HEADER + "R,C,2026-07-01,0.3,valley,11-14\n"
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "t2.csv", later), TARIFFS)
    (e,) = err.value.errors
    assert e.line == 2 and "the registered tariff from 2026-01-01" in e.reason
    assert "at 11-12" in e.reason
    fixed = TARIFF_HEADER + ("R,C,2026-01-01,0.9,peak,8-11\n"
                             "R,C,2026-07-01,0.3,valley,11-14\n")
    r = import_csv(store, write(tmp_path, "t3.csv", fixed), TARIFFS)
    assert (r.inserted, r.updated) == (1, 1)
    # A new peak from 2026-09 replaces the old one in force, so it may take the old hours.
    moved = TARIFF_HEADER + ("R,C,2026-09-01,0.9,peak,16-20\n"
                             "R,C,2026-09-01,0.3,valley,8-12\n")
    assert import_csv(store, write(tmp_path, "t4.csv", moved), TARIFFS).inserted == 2
def test_interferers_windows_are_local_and_stored_in_utc(store, tmp_path):
    from twin.imports import INTERFERERS
    from twin.models import Interferer

    body = ("interferer_id,name,lat,lon,radius_m,bands,windows\n"
            "EXAM-1,Exam hall,30.6,104.0,800,n78;n41,"
            "2026-06-07T08:00/2026-06-07T17:00;2026-06-08T08:00+08:00/2026-06-08T11:30Z\n"
            "EXAM-2,Any band,30.7,104.1,500,,2026-06-07/2026-06-08\n")
    r = import_csv(store, write(tmp_path, "interferers.csv", body), INTERFERERS, zone="Asia/Shanghai")
    assert (r.inserted, r.rejected) == (2, 0)
    with store.session() as s:
        one, two = s.scalars(select(Interferer).order_by(Interferer.interferer_id)).all()
        assert one.windows == ("2026-06-07T00:00:00Z/2026-06-07T09:00:00Z;"
                               "2026-06-08T00:00:00Z/2026-06-08T11:30:00Z")
        assert (one.bands, one.radius_m) == ("n78;n41", 800.0)
        assert two.bands is None and two.windows == "2026-06-06T16:00:00Z/2026-06-07T16:00:00Z"
    again = import_csv(store, write(tmp_path, "interferers.csv", body), INTERFERERS)
    assert (again.inserted, again.updated) == (0, 2)


@pytest.mark.parametrize(("windows", "reason"), [
    ("2026-06-07T17:00/2026-06-07T08:00", "ends before it starts"),
    ("2026-06-07T08:00", "is not a start/end range"),
    ("2026-06-07T08:00/2026-06-07T17:00;", "without empty entries"),
    ("tomorrow/later", "is not an ISO 8601 date"),
], ids=["reversed", "no-end", "empty-entry", "not-a-time"])
def test_bad_interferer_windows_import_nothing(store, tmp_path, windows, reason):
    from twin.imports import INTERFERERS
    from twin.models import Interferer

    body = f"interferer_id,name,lat,lon,radius_m,windows\nEXAM-1,Exam hall,30.6,104.0,800,{windows}\n"
    with pytest.raises(ImportFailed) as err:
        import_csv(store, write(tmp_path, "interferers.csv", body), INTERFERERS)
    (e,) = err.value.errors
    assert e.column == "windows" and reason in e.reason
    assert count(store, Interferer) == 0
