"""End to end on real services: readings in InfluxDB, registry in SQL (SQLite and PostgreSQL),
``sitetwin rules run`` finds exactly the injected anomalies, flags are listed per docs/contracts.md
section 4, written to InfluxDB and published over MQTT, and the reports are written."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import openpyxl
import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line, prb_field
from sitetwin.cli import main
from tests.support import wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
BILL_START, BILL_END = datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 19, tzinfo=UTC)

# site -> (state, days in that state, replaces)
SITES = {
    "S-OC": ("on_air", 10, None),      # overcharged bill, reservation exceeded
    "S-OB": ("on_air", 10, None),      # over-billed
    "S-CLEAN": ("on_air", 10, None),   # nothing wrong: must yield no flag
    "S-INT": ("on_air", 10, None),     # wideband interference on one cell
    "S-BATT": ("on_air", 10, None),    # on battery for 40 minutes
    "S-OFF": ("on_air", 10, None),     # silent for an hour
    "S-BUILD": ("under_construction", 200, None),  # no reservation, and stalled
    "S-OLD": ("decommissioned", 2, None),          # taken down ...
    "S-NEW": ("under_construction", 5, "S-OLD"),   # ... before its replacement is on air
}
EXPECTED = {
    ("overcharging", "S-OC"), ("reservation_exceeded", "S-OC"), ("overbilling", "S-OB"),
    ("interference", "S-INT"), ("mains_failure", "S-BATT"), ("site_offline", "S-OFF"),
    ("reservation_missing", "S-BUILD"), ("lifecycle_stalled", "S-BUILD"),
    ("relocation_violation", "S-OLD"),
}


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 10**9


def _points() -> list[str]:
    lines = []
    # Meters: 10 kW steady (2.5 kWh per 15 minutes) from before the bill period until now.
    for site in ("S-OC", "S-OB", "S-CLEAN"):
        t, kwh = BILL_START - timedelta(hours=2), 1000.0
        while t < NOW:
            lines.append(line("power", {"site_id": site, "meter_id": f"M-{site}"},
                              {"energy_kwh": kwh, "power_kw": 10.0}, _ns(t)))
            t, kwh = t + timedelta(minutes=15), kwh + 2.5
    # Tower readings every 5 minutes for the last hour (S-OFF stopped an hour ago).
    for site in ("S-OC", "S-OB", "S-CLEAN", "S-INT", "S-BATT", "S-OFF"):
        for i in range(12):
            t = NOW - timedelta(minutes=60) + timedelta(minutes=5 * i)
            if site == "S-OFF" and i > 0:
                break
            on_batt = site == "S-BATT" and i >= 4
            soc = 100.0 - (3.0 * (i - 3) if on_batt else 0.0)
            lines.append(line("tower", {"site_id": site}, {"mains_ok": not on_batt, "on_battery": on_batt,
                                                           "battery_soc_pct": soc}, _ns(t)))
    # Interference for the last two hours: S-INT/C1 jammed across all PRBs, the others quiet.
    for site, cell, level in (("S-INT", "S-INT-1", -98.0), ("S-CLEAN", "S-CLEAN-1", -118.0),
                              ("S-INT", "S-INT-2", -117.0)):
        for i in range(8):
            t = NOW - timedelta(minutes=120) + timedelta(minutes=15 * (i + 1)) - timedelta(seconds=1)
            tags = {"site_id": site, "cell_id": cell, "band": "n78"}
            lines.append(line("interference", tags, {"ul_interference_dbm": level, "period_s": 900}, _ns(t)))
            lines.append(line("interference_prb", tags,
                              {prb_field(k): level + (0.3 if k % 2 else -0.3) for k in range(273)}, _ns(t)))
    return lines


def _registry(url: str) -> None:
    from twin.models import Bill, LifecycleEvent, Reservation, Site, Tariff
    from twin.store import open_store

    store = open_store(url)
    with store.session() as s:
        for i, (sid, (state, days, replaces)) in enumerate(SITES.items()):
            s.add(Site(site_id=sid, name=sid, lat=31.0 + i * 0.1, lon=121.0, county="Pudong", kind="macro",
                       supply="transfer", region="SH", customer_class="C", state=state,
                       replaces_site_id=replaces))
            s.flush()
            s.add(LifecycleEvent(site_id=sid, from_state=None, to_state=state, verb="import",
                                 at=NOW - days * DAY, actor="test"))
        for sid, reserved in (("S-OC", 5.0), ("S-OB", 20.0), ("S-CLEAN", 20.0), ("S-INT", 20.0),
                              ("S-BATT", 20.0), ("S-OFF", 20.0), ("S-NEW", 20.0)):
            s.add(Reservation(site_id=sid, declared_kw=reserved * 0.8, reserved_kw=reserved,
                              feeder="F-1" if sid in ("S-OC", "S-OB", "S-CLEAN") else "F-2",
                              substation="SUB-A", status="energized"))
        s.add(Tariff(region="SH", customer_class="C", period="flat", hours=None,
                     effective_from=datetime(2026, 1, 1, tzinfo=UTC), price_cny_per_kwh=0.8))
        for bill_id, sid, kwh, amount in (("B-OC", "S-OC", 240.0, 300.0), ("B-OB", "S-OB", 400.0, 320.0),
                                          ("B-CLEAN", "S-CLEAN", 240.0, 190.0)):
            s.add(Bill(bill_id=bill_id, site_id=sid, supplier_id="LL-1", supplier_name="=Landlord",
                       meter_id=f"M-{sid}", period_start=BILL_START, period_end=BILL_END,
                       billed_kwh=kwh, amount_cny=amount))
    store.close()


def _cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_rules_run_finds_every_injected_anomaly(influxdb, influx_db, mosquitto, twin_url, tmp_path, capsys):
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(_points()).encode()).rejected
    writer.close()
    _registry(twin_url)
    from tests.notify.conftest import Webhook

    hook = Webhook()
    hook.up()
    cfg = tmp_path / "sitetwin.toml"
    cfg.write_text(f'[influxdb]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n'
                   f'[twin]\nurl = "{twin_url}"\n[mqtt]\nservers = ["{mosquitto.url}"]\n'
                   f'client_id = "rules-{influx_db}"\n[services]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[[notify.channels]]\nname = "noc"\nurl = "{hook.url()}"\nmin_severity = "info"\n')

    received: list[tuple[str, dict]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{influx_db}", protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("sitetwin/flags/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.on_message = lambda c, u, m: received.append((m.topic, json.loads(m.payload)))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        code, out = _cli(capsys, "rules", "run", "--until", NOW.isoformat(), "--config", str(cfg), "--json")
        summary = {r["rule"]: r for r in json.loads(out)}
        assert code == 0, summary
        assert all(r["status"] == "ok" for r in summary.values())

        code, out = _cli(capsys, "flags", "list", "--json", "--config", str(cfg))
        flags = json.loads(out)
        assert {(f["kind"], f["site_id"]) for f in flags} == EXPECTED
        assert not [f for f in flags if f["site_id"] == "S-CLEAN"]
        for f in flags:  # docs/contracts.md section 4
            assert {"id", "kind", "rule", "site_id", "severity", "status", "opened_at", "updated_at",
                    "window_start", "window_end", "summary", "evidence", "cell_id", "supplier_id",
                    "bill_id"} <= set(f)
            assert f["status"] == "open" and f["severity"] in ("info", "warning", "critical")
            assert isinstance(f["evidence"], dict) and f["opened_at"].endswith("Z")
        by_kind = {f["kind"]: f for f in flags}
        oc = by_kind["overcharging"]
        assert (oc["bill_id"], oc["supplier_id"]) == ("B-OC", "LL-1")
        assert oc["evidence"]["metered_kwh"] == pytest.approx(240.0)
        assert oc["evidence"]["excess_cny"] == pytest.approx((1.25 - 0.8) * 240)
        assert by_kind["overbilling"]["evidence"]["excess_kwh"] == pytest.approx(160.0)
        assert by_kind["reservation_exceeded"]["evidence"]["peak_kw"] == pytest.approx(10.0)
        interference = by_kind["interference"]
        assert interference["cell_id"] == "S-INT-1" and interference["severity"] == "critical"
        assert interference["evidence"]["classification"] == "wideband"
        mains = by_kind["mains_failure"]["evidence"]
        assert mains["soc_slope_pct_per_h"] == pytest.approx(-36.0) and mains["hours_to_empty"] > 0

        wait_for(lambda: len(received) >= len(EXPECTED), timeout=15, message="flags over MQTT")
        assert {t for t, _ in received} == {f"sitetwin/flags/{k}/{s}" for k, s in EXPECTED}
        # A subscriber that connects now sees the open alarms, retained per site and in sum.
        from tests.rules.test_sink import late_subscriber

        sites = {f"sitetwin/alarms/{s}" for _, s in EXPECTED}
        retained = late_subscriber(mosquitto, sites | {"sitetwin/alarms"})
        assert retained["sitetwin/alarms"]["open"] == len(EXPECTED)
        assert sorted(f["kind"] for t in sites for f in retained[t]["flags"]) == \
            sorted(k for k, _ in EXPECTED)
        # `rules run` sent one message per new flag before it returned.
        opened = hook.titles()
        assert len(opened) == len(EXPECTED) and all(" opened - " in t for t in opened)

        # A second evaluation updates the same flags: no duplicates.
        code, out = _cli(capsys, "rules", "run", "--until", (NOW + timedelta(minutes=5)).isoformat(),
                         "--config", str(cfg), "--json")
        again = {r["rule"]: r for r in json.loads(out)}
        assert sum(r["opened"] for r in again.values()) == 0
        code, out = _cli(capsys, "flags", "list", "--json", "--config", str(cfg))
        later = json.loads(out)
        assert len(later) == len(EXPECTED)
        # Updates are not announced again; a severity that rose is, once.
        rank = ("info", "warning", "critical").index
        before = {f["id"]: f["severity"] for f in flags}
        rose = [f for f in later if rank(f["severity"]) > rank(before[f["id"]])]
        assert [t.split(" - ")[0] for t in hook.titles()[len(EXPECTED):]] == [
            f"[{f['severity'].upper()}] {f['kind']} escalated" for f in rose]
        assert rose, "the silent site's flag was expected to escalate as its silence grew"
        announced = len(hook.titles())

        # A review is recorded, and announced like any other change.
        code, out = _cli(capsys, "flags", "review", str(oc["id"]), "--decision", "confirmed", "--by",
                         "inspector", "--note", "checked the meter", "--json", "--config", str(cfg))
        shown = json.loads(out)
        assert shown["status"] == "confirmed" and shown["reviews"][0]["reviewed_by"] == "inspector"
        wait_for(lambda: any(m["status"] == "confirmed" for _, m in received), timeout=15,
                 message="the review over MQTT")
        # Acknowledged and assigned, from the command line; the history keeps both.
        mains_id = str(by_kind["mains_failure"]["id"])
        code, out = _cli(capsys, "flags", "ack", mains_id, "--by", "zhang.san", "--json",
                         "--config", str(cfg))
        assert code == 0 and json.loads(out)["acknowledged_by"] == "zhang.san"
        code, out = _cli(capsys, "flags", "assign", mains_id, "--to", "wang.wu", "--by", "lead",
                         "--json", "--config", str(cfg))
        shown = json.loads(out)
        assert shown["assignee"] == "wang.wu" and shown["acknowledged_at"].endswith("Z")
        assert [(a["action"], a["by"], a["value"]) for a in shown["actions"]] == [
            ("ack", "zhang.san", None), ("assign", "lead", "wang.wu")]
        code, out = _cli(capsys, "flags", "show", mains_id, "--config", str(cfg))
        assert "acknowledged by zhang.san" in out and "assigned to wang.wu by lead" in out
        # The review goes out on the next pass; the ack and the assignment are no events.
        code, out = _cli(capsys, "notify", "send", "--json", "--config", str(cfg))
        assert json.loads(out)["sent"] == 1
        assert "overcharging reviewed: confirmed - S-OC" in hook.titles()[-1]
        assert len(hook.titles()) == announced + 1
    finally:
        sub.loop_stop()
        sub.disconnect()
        hook.down()

    points = influxdb.query('SELECT count("open") FROM "flags"', db=influx_db)
    assert points["results"][0]["series"][0]["values"][0][1] >= 2 * len(EXPECTED) + 1

    # The reports.
    code, _ = _cli(capsys, "report", "overcharging", "--period", "2026-11", "--out",
                   str(tmp_path / "oc.csv"), "--config", str(cfg))
    assert code == 0
    report = pd.read_csv(tmp_path / "oc.csv", encoding="utf-8-sig")
    bills = report[report["row"] == "bill"]
    assert set(bills["bill_id"]) == {"B-OC", "B-OB"}
    assert set(bills["supplier_name"]) == {"'=Landlord"}  # a formula is neutralised
    totals = report[report["row"] == "supplier_total"].set_index("kind")["excess_cny"]
    assert totals["overcharging"] == pytest.approx(108.0) and totals["overbilling"] == pytest.approx(128.0)
    code, _ = _cli(capsys, "report", "reservations", "--until", NOW.isoformat(), "--out",
                   str(tmp_path / "res.xlsx"), "--config", str(cfg))
    assert code == 0
    book = openpyxl.load_workbook(tmp_path / "res.xlsx")
    assert book.sheetnames == ["sites", "feeders", "substations"]

    def body(name):
        rows = list(book[name].values)
        return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    header, sites = body("sites")
    site_oc = next(r for r in sites if r["site_id"] == "S-OC")
    assert (site_oc["reserved_kw"], site_oc["peak_kw"], site_oc["headroom_kw"]) == (5.0, 10.0, -5.0)
    build = next(r for r in sites if r["site_id"] == "S-BUILD")
    assert build["status"] == "missing"
    assert "headroom_kw" in header
    _, feeders = body("feeders")
    feeder = next(r for r in feeders if r["feeder"] == "F-1")
    assert (feeder["reserved_kw"], feeder["coincident_peak_kw"], feeder["sites"]) == (45.0, 30.0, 3)
    # no feeders.csv: the rating, hence the headroom, is unknown
    assert feeder["headroom_kw"] is None and feeder["substation"] == "SUB-A"


def test_peak_of_a_site_with_two_meters_is_their_coincident_sum(influxdb, influx_db):
    """A second meter adds to the site's demand where both report in the same 15 minutes."""
    from connectors.influx import InfluxReader
    from rules.data import WindowData
    from rules.reservations import ReservationThresholds

    lines = []
    for i in range(8):
        ts = NOW - timedelta(hours=2) + timedelta(minutes=15 * i)
        lines.append(line("power", {"site_id": "TWO", "meter_id": "MA"}, {"energy_kwh": 1.0 * i,
                                                                           "power_kw": 4.0 + i}, _ns(ts)))
        if i in (2, 3):
            lines.append(line("power", {"site_id": "TWO", "meter_id": "MB"}, {"energy_kwh": 1.0 * i,
                                                                               "power_kw": 6.0}, _ns(ts)))
        lines.append(line("power", {"site_id": "ONE", "meter_id": "M1"}, {"energy_kwh": 1.0 * i,
                                                                          "power_kw": 3.0 + (i == 5)}, _ns(ts)))
    writer = InfluxWriter(influxdb.url, database=influx_db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()
    reader = InfluxReader(influxdb.url, influx_db)
    peaks = WindowData(reader).power_peak(None, NOW, ReservationThresholds(window=3 * 3600), {})
    reader.close()
    got = {r.site_id: (r.peak_kw, r.time) for r in peaks.itertuples()}
    # TWO: meter A alone peaks at 11 kW (i=7), but A+B at i=3 is 7 + 6 = 13 kW.
    assert got["TWO"] == (13.0, pd.Timestamp(NOW - timedelta(minutes=75)))
    assert got["ONE"][0] == 4.0
