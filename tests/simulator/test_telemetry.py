"""The synthetic fleet, its CSVs, the telemetry generator and ``sitetwin simulate`` end to end."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime

import orjson
import pytest

from connectors.reading import InterferenceReading, PowerReading, TowerReading, check_id, parse_message
from simulator.fleet import SCENARIOS, TOU_HOURS, Fleet, tou_period
from simulator.telemetry import chunks, malformed, onset, readings
from tests.support import ROOT, collector_process, count, wait_for
from twin.imports import SCHEMAS, TARGETS, import_csv, read_rows

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REQUIRED = {
    "sites": {"site_id", "name", "lat", "lon", "county", "kind", "supply", "region", "customer_class"},
    "reservations": {"site_id", "declared_kw", "reserved_kw", "feeder", "substation", "status"},
    "tariffs": {"region", "customer_class", "effective_from", "price_cny_per_kwh"},
    "bills": {"bill_id", "site_id", "supplier_id", "period_start", "period_end", "billed_kwh",
              "amount_cny"},
    "targets": {"year", "county", "target_sites"},
    "feeders": {"feeder", "substation", "rated_kw"},
    "substations": {"substation", "rated_kw"},
    "conversions": {"site_id", "supply", "effective_from"},
    "maintenance": {"site_id", "start", "end"},
}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.build(120, seed=11, now=NOW)


def _parse_all(messages, now=NOW):
    out = defaultdict(list)
    for topic, payload in messages:
        parsed = parse_message(topic, payload, now)
        assert parsed.ok, (topic, parsed.rejection, payload[:200])
        assert parsed.unknown_fields == 0
        out[parsed.stream].extend(parsed.readings)
    return out


# -- the fleet ------------------------------------------------------------------------------

def test_the_same_seed_builds_the_same_fleet_and_another_seed_another(fleet):
    again = Fleet.build(120, seed=11, now=NOW)
    assert again == fleet
    assert again.expected_anomalies("demo") == fleet.expected_anomalies("demo")
    other = Fleet.build(120, seed=12, now=NOW)
    assert other != fleet
    assert (other.sites[0].lat, other.sites[0].lon) != (fleet.sites[0].lat, fleet.sites[0].lon)


def test_the_fleet_looks_like_a_city(fleet):
    sites = fleet.sites
    assert len(sites) == 120
    assert {s.kind for s in sites} == {"macro", "micro", "pole", "indoor"}
    assert 0.3 < sum(s.supply == "transfer" for s in sites) / len(sites) < 0.5
    assert len({s.county for s in sites}) == 6
    states = {s.state for s in sites}
    assert {"planned", "under_construction", "power_connected", "on_air", "relocating"} <= states
    for s in sites:
        assert 29.9 < s.lat < 30.7 and 119.8 < s.lon < 120.6
        assert len(s.cells) == (3 if s.kind == "macro" else 1)
        assert {c.band for c in s.cells} <= {"n78", "n41", "n28", "B3"}
    ids = {s.site_id for s in sites}
    movers = [s for s in sites if s.replaces_site_id]
    assert movers and all(fleet.site(s.replaces_site_id).state == "relocating" for s in movers)
    assert len(ids) == len(sites)


def test_csvs_follow_the_contract_and_import_into_the_registry(fleet, tmp_path):
    from twin.store import open_store

    paths = fleet.write_csvs(tmp_path)
    assert set(paths) == set(REQUIRED)
    ids = {"site_id", "supplier_id", "bill_id", "meter_id", "replaces_site_id"}
    for name, path in paths.items():
        with path.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert rows, name
        assert REQUIRED[name] <= set(rows[0]), name
        for row in rows:
            for col in ids & set(row):
                if row[col]:
                    check_id(row[col], col)
    parsed = read_rows(paths["targets"], TARGETS)
    assert not parsed.errors and len(parsed.rows) == 12
    store = open_store(f"sqlite:///{tmp_path / 'twin.sqlite'}")
    for name in ("sites", "reservations", "tariffs", "bills"):
        result = import_csv(store, paths[name], SCHEMAS[name])
        assert result.rejected == 0 and not result.errors, (name, result.errors[:3])
        assert result.inserted == sum(1 for _ in csv.DictReader(paths[name].open())), name
    again = import_csv(store, paths["bills"], SCHEMAS["bills"])
    assert again.inserted == 0  # idempotent
    for name in ("feeders", "substations", "maintenance"):
        assert import_csv(store, paths[name], SCHEMAS[name]).rejected == 0
    # conversions.csv: dated supply changes of sites that sites.csv lists as transfer
    converted = import_csv(store, paths["conversions"], SCHEMAS["sites"])
    assert converted.inserted == 0 and converted.updated >= 1 and not converted.errors
    from sqlalchemy import select

    from twin.models import Site
    with store.session() as s:
        supply = dict(s.execute(select(Site.site_id, Site.supply)).all())
    assert supply == {site.site_id: site.supply for site in fleet.sites}  # the fleet's, today


def test_bills_agree_with_the_meter_and_the_catalogue(fleet):
    anomalies = fleet.expected_anomalies("normal")
    over_x = set(anomalies["overcharging"].bill_ids)
    over_b = set(anomalies["overbilling"].bill_ids)
    assert over_x and over_b and not over_x & over_b
    start, end = fleet.bill_start.timestamp(), fleet.bill_end.timestamp()
    for bill in fleet.bills:
        site = fleet.site(bill.site_id)
        assert site.supply == "transfer"
        metered = Fleet.consumed_kwh(site, start, end)
        ratio = bill.billed_kwh / metered
        if bill.bill_id in over_b:
            assert ratio > 1.1
        else:
            assert 0.96 < ratio <= 1.0
        # the regulated cap, reading time-of-use hours either as UTC or as local time
        rows = [t for t in fleet.tariffs if (t.region, t.customer_class)
                == (site.region, site.customer_class) and t.effective_from <= fleet.bill_start]
        latest = max(t.effective_from for t in rows)
        price = {t.period: t.price_cny_per_kwh for t in rows if t.effective_from == latest}
        caps = []
        for shift in (0, 8):
            cost = kwh = 0.0
            for h in range(int((end - start) // 3600)):
                t = start + 3600 * h
                e = Fleet.consumed_kwh(site, t, t + 3600)
                period = tou_period(int((t / 3600 + shift) % 24)) if len(price) > 1 else "flat"
                cost, kwh = cost + e * price[period], kwh + e
            caps.append(cost / kwh)
        unit = bill.amount_cny / bill.billed_kwh
        if bill.bill_id in over_x:
            assert unit > max(caps) * 1.15
        else:
            assert unit <= min(caps)


def test_time_of_use_hours_cover_the_day_once():
    covered = sorted(h for spec in TOU_HOURS.values() for part in spec.split(";")
                     for h in range(*map(int, part.split("-"))))
    assert covered == list(range(24))


# -- the generator --------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_generated_payload_is_accepted(fleet, scenario):
    end = NOW.timestamp()
    backlog = _parse_all(readings(fleet, end - 2 * 3600, end, 300, scenario, chunk_s=3600))
    live = _parse_all(readings(fleet, end - 960, end, 60, scenario))
    for got in (backlog, live):
        assert set(got) == {"tower", "power", "interference"}
    assert any(r.prb_dbm and len(r.prb_dbm) == 273 for r in backlog["interference"])
    powered = {s.site_id for s in fleet.publishing}
    assert {r.site_id for r in live["tower"]} <= powered
    assert {r.site_id for r in live["interference"]} <= {s.site_id for s in fleet.sites if s.on_air}


def test_a_live_message_is_one_reading_and_a_backlog_an_array(fleet):
    end = NOW.timestamp()
    live = list(readings(fleet, end - 60, end, 60, "normal"))
    tower = [p for t, p in live if t.endswith("/tower")]
    assert tower and all(isinstance(orjson.loads(p), dict) for p in tower)
    backlog = list(readings(fleet, end - 3600, end, 60, "normal", chunk_s=3600))
    tower = [orjson.loads(p) for t, p in backlog if t.endswith("/tower")]
    assert all(isinstance(doc, list) and len(doc) == 60 for doc in tower)
    assert len(tower) == len(fleet.publishing)


def test_long_backlogs_are_split_into_messages_the_collector_accepts(fleet):
    end = NOW.timestamp()
    site = next(s for s in fleet.sites if s.on_air and s.kind == "macro" and s.cells[0].prbs)
    msgs = list(readings(fleet, end - 2 * 86400, end, 10, "normal", chunk_s=2 * 86400,
                         site_ids=[site.site_id]))
    got = _parse_all(msgs)
    assert len(got["tower"]) == 2 * 8640 and len(got["interference"]) == 2 * 96 * 3
    assert all(len(p) <= 256 * 1024 for _t, p in msgs)
    assert len([t for t, _p in msgs if t.endswith("/tower")]) > 1


def test_readings_are_deterministic_and_aligned(fleet):
    end = NOW.timestamp() + 17
    one = list(readings(fleet, end - 1800, end, 60, "demo", chunk_s=600))
    two = list(readings(fleet, end - 1800, end, 60, "demo", chunk_s=600))
    assert one == two
    for r in _parse_all(one)["tower"]:
        assert r.ts.timestamp() % 60 == 0


def test_energy_rises_with_power_and_restarts_at_a_meter_swap(fleet):
    swapped = next(s for s in fleet.sites if s.meter_swap_ts is not None)
    start, end = fleet.bill_start.timestamp(), fleet.bill_end.timestamp()
    sample = {swapped.site_id, *(s.site_id for s in fleet.publishing[:5])}
    power = sorted(_parse_all(readings(fleet, start, end, 900, "normal", chunk_s=86400,
                                       site_ids=sample), now=end)["power"], key=lambda r: r.ts)
    mine = [r for r in power if r.site_id == swapped.site_id]
    drops = [(a, b) for a, b in itertools.pairwise(mine) if b.energy_kwh < a.energy_kwh]
    assert len(drops) == 1 and drops[0][1].energy_kwh < 10
    increments = sum(max(0.0, b.energy_kwh - a.energy_kwh) for a, b in itertools.pairwise(mine))
    bill = next(b for b in fleet.bills if b.site_id == swapped.site_id)
    # the sum of positive increments recovers the month's energy to within one period
    assert bill.metered_kwh * 0.995 < increments <= bill.metered_kwh
    for site_id in {r.site_id for r in power}:
        series = [r for r in power if r.site_id == site_id]
        site = fleet.site(site_id)
        assert all(r.power_kw is not None and 0 < r.power_kw < site.peak_kw * 1.1 for r in series)


def test_the_demo_scenario_plants_what_expected_anomalies_names(fleet):
    end = NOW.timestamp()
    start = end - 12 * 3600
    t0 = onset(fleet, start, end)
    assert t0 == end - 6 * 3600
    got = _parse_all(readings(fleet, start, end, 900, "demo", chunk_s=3 * 3600))
    expected = fleet.expected_anomalies("demo")
    after = lambda r: r.ts.timestamp() >= t0  # noqa: E731

    by_cell = defaultdict(list)
    for r in got["interference"]:
        by_cell[r.cell_id].append(r)
    jammed = set(expected["interference_wideband"].cell_ids)
    assert len(expected["interference_wideband"].site_ids) >= 3
    quiet_cells = [c for c in by_cell if c not in jammed
                   and c not in expected["interference_narrowband"].cell_ids]
    for cell, series in by_cell.items():
        before = [r.ul_interference_dbm for r in series if not after(r)]
        during = [r.ul_interference_dbm for r in series if after(r)]
        assert max(before) < -105, cell
        if cell in jammed:
            assert min(during) > -105 and min(during) - max(before) > 5, cell
            flat = [r.prb_dbm for r in series if after(r) and r.prb_dbm]
            assert flat and all(max(p) - min(p) < 10 for p in flat)  # wideband: all PRBs rise
    for cell in quiet_cells[:50]:
        assert max(r.ul_interference_dbm for r in by_cell[cell]) < -105
    (narrow,) = expected["interference_narrowband"].cell_ids
    vectors = [r.prb_dbm for r in by_cell[narrow] if after(r) and r.prb_dbm]
    assert vectors and all(max(p) - sorted(p)[len(p) // 2] > 15 for p in vectors)
    assert min(r.ul_interference_dbm for r in by_cell[narrow] if after(r)) > -105

    (failing,) = expected["mains_failure"].site_ids
    tower = sorted((r for r in got["tower"] if r.site_id == failing), key=lambda r: r.ts)
    assert all(r.mains_ok for r in tower if not after(r))
    on_battery = [r for r in tower if after(r)]
    assert on_battery and all(not r.mains_ok and r.on_battery for r in on_battery)
    socs = [r.battery_soc_pct for r in on_battery]
    assert socs == sorted(socs, reverse=True) and socs[0] - socs[-1] > 50

    (silent,) = expected["site_offline"].site_ids
    for stream in ("tower", "power", "interference"):
        mine = [r for r in got[stream] if r.site_id == silent]
        assert mine and not any(after(r) for r in mine)

    exceeded = expected["reservation_exceeded"].site_ids
    reserved = {r.site_id: r.reserved_kw for r in fleet.reservations}
    for site_id in exceeded:
        peak = max(r.power_kw for r in got["power"] if r.site_id == site_id)
        assert peak > reserved[site_id] * 1.2
    for site_id in expected["reservation_missing"].site_ids:
        assert fleet.site(site_id).state == "under_construction" and site_id not in reserved


def test_an_outage_drains_batteries_and_darkens_some_sites(fleet):
    end = NOW.timestamp()
    got = _parse_all(readings(fleet, end - 12 * 3600, end, 900, "outage", chunk_s=3 * 3600))
    expected = fleet.expected_anomalies("outage")
    hit = set(expected["mains_failure"].site_ids)
    reservations = {r.site_id: r.substation for r in fleet.reservations}
    assert len({reservations[s] for s in hit}) == 1 and len(hit) >= 3
    last_seen = defaultdict(float)
    for r in got["tower"]:
        last_seen[r.site_id] = max(last_seen[r.site_id], r.ts.timestamp())
    dark = set(expected["site_offline"].site_ids)
    assert dark and dark <= hit
    for site_id in dark:
        assert last_seen[site_id] < end - 1800
    for site_id in hit - dark:
        assert last_seen[site_id] >= end - 900


def test_types_of_readings_match_their_topics(fleet):
    end = NOW.timestamp()
    got = _parse_all(readings(fleet, end - 900, end, 60, "normal"))
    assert all(isinstance(r, TowerReading) for r in got["tower"])
    assert all(isinstance(r, PowerReading) and r.meter_id == f"M-{r.site_id}" for r in got["power"])
    assert all(isinstance(r, InterferenceReading) and r.cell_id.startswith(r.site_id)
               for r in got["interference"])
    sizes = [len(c.messages) for c in chunks(fleet, end - 900, end, 60, "normal")]
    assert len(sizes) == 15


def test_malformed_messages_are_each_rejected_for_their_stated_reason(fleet):
    bad = malformed(fleet, NOW)
    assert len({reason for _t, _p, reason in bad}) >= 9
    for topic, payload, reason in bad:
        parsed = parse_message(topic, payload, NOW)
        assert not parsed.ok and parsed.rejection.reason == reason, (topic, payload)


def test_unknown_scenario_is_refused(fleet):
    with pytest.raises(ValueError, match="unknown scenario"):
        fleet.plan("meteor")


# -- the command ----------------------------------------------------------------------------

def _simulate(env: dict[str, str], *argv: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "sitetwin", "simulate", "--json", "--quiet", *argv],
                         env=env, cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_simulate_without_a_window_is_a_user_error(capsys):
    from sitetwin.cli import main

    assert main(["simulate", "--sites", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--duration" in err


def test_simulate_can_just_write_the_registry(tmp_path, capsys):
    from sitetwin.cli import main

    assert main(["simulate", "--sites", "40", "--seed", "3", "--backfill", "1h", "--no-publish",
                 "--write-registry", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == 40 and "publisher" not in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bills.csv", "conversions.csv", "feeders.csv", "maintenance.csv", "reservations.csv", "sites.csv",
        "substations.csv", "targets.csv", "tariffs.csv"]


@pytest.mark.integration
def test_simulate_end_to_end_into_a_running_collector(tmp_path, mosquitto, influxdb, influx_db):
    env = {
        **os.environ,
        "SITETWIN_MQTT__SERVERS": json.dumps([mosquitto.url]),
        "SITETWIN_MQTT__CLIENT_ID": f"c-{influx_db}",
        "SITETWIN_MQTT__SHARED_GROUP": f"g-{influx_db}",
        "SITETWIN_INFLUXDB__URL": influxdb.url,
        "SITETWIN_INFLUXDB__DATABASE": influx_db,
        "SITETWIN_COLLECTOR__BATCH_AGE": "0.2",
        "SITETWIN_SERVICES__STATE_DIR": str(tmp_path / "state"),
        "SITETWIN_SPOOL__FSYNC": "false",
        "SITETWIN_LOG_LEVEL": "INFO",
        "SITETWIN_COLLECTOR__METRICS_INTERVAL": "1s",
        "SITETWIN_COLLECTOR__WORKERS": "1",  # one collector: its counters are the whole count
    }
    log = tmp_path / "collector.log"
    # a message published before the shared subscription exists goes to nobody
    collector = collector_process(env, log_path=log, wait_subscribed=True)
    try:
        # History (2 h on a 5 min grid, as backlog arrays), then 2 s live at 300x: 10 minutes at 60 s.
        summary = _simulate(env, "--sites", "20", "--backfill", "2h", "--history-period", "5m",
                            "--duration", "2s", "--speed", "300", "--scenario", "demo",
                            "--seed", "5", "--malformed", "2",
                            "--write-registry", str(tmp_path / "registry"))
        p = summary["publisher"]
        bad = sum(summary["malformed"].values())
        assert p["published"] == p["acked"] == summary["messages"] + bad > bad
        assert (tmp_path / "registry" / "bills.csv").exists()
        assert summary["expected"]["site_offline"]["site_ids"]
        want = summary["readings"]

        def landed() -> dict[str, int]:
            return {
                "tower": count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower"),
                "power": count(influxdb, influx_db, "SELECT count(energy_kwh) FROM power"),
                "interference": count(influxdb, influx_db,
                                      "SELECT count(ul_interference_dbm) FROM interference"),
            }

        wait_for(lambda: landed() == want, timeout=120, message=f"{want} points in InfluxDB")
        assert count(influxdb, influx_db, "SELECT count(prb_000) FROM interference_prb") > 0
        # the hostile messages are rejected, counted, and nothing else is
        wait_for(lambda: count(influxdb, influx_db, "SELECT max(rejected_msgs) FROM sitetwin_pipeline")
                 == bad, timeout=30, message=f"{bad} rejected messages counted")
    finally:
        collector.terminate()
        collector.wait(timeout=30)


def test_doors_open_only_during_the_booked_visits(fleet, tmp_path):
    """An honest fleet raises no intrusion: every open door in the telemetry falls inside a
    visit of its site in ``maintenance.csv``, and doors do open (the test is not vacuous)."""
    from datetime import timedelta

    path = fleet.write_csvs(tmp_path)["maintenance"]
    parsed = read_rows(path, SCHEMAS["maintenance"])
    assert parsed.rows and not parsed.errors
    booked = defaultdict(list)
    for _, r in parsed.rows:
        booked[r["site_id"]].append((r["start"], r["end"]))
    sites = [s.site_id for s in fleet.publishing[:30]]
    opened = 0
    for topic, payload in readings(fleet, NOW - timedelta(days=8), NOW, period_s=300, site_ids=sites):
        if not topic.endswith("/tower"):
            continue
        doc = orjson.loads(payload)
        if doc["door_open"]:
            opened += 1
            ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00"))
            site = topic.split("/")[1]
            assert any(a <= ts < b for a, b in booked[site]), (site, ts)
    assert opened > 0
