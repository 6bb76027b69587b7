"""Every dashboard query against the simulator's ``demo`` scenario, flagged by the real rules.

The fleet's CSVs are imported into a SQLite registry; the simulator's
readings are parsed and serialised as the collector does and written to
InfluxDB; the twin's ``LiveState`` follows the last 8 hours and writes
``site_state`` every hour; the collector's own ``PipelineMetrics`` writes
``sitetwin_pipeline``; the rule engine runs at the end and writes ``flags``
through its InfluxDB sink.  Each dashboard is then queried with the demo
values that its audience would pick (the site with the anomaly it is about)
and with "All", over the last 8 hours at ``$__interval`` = 1m.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from connectors.influx import InfluxWriter
from connectors.lineprotocol import encode
from connectors.metrics import PipelineMetrics
from connectors.reading import parse_message
from exports.site_state import site_state_lines
from rules.engine import Engine
from simulator.fleet import Fleet
from simulator.telemetry import chunks, onset, readings
from sitetwin.config import load_settings
from tests.dashboards.checks import all_queries, check_query, records, schema, substitute
from twin.imports import import_csv
from twin.live import LiveState
from twin.store import open_store

pytestmark = pytest.mark.integration

# As in tests/rules/test_scenarios.py: 20:00 local, away from the cells' daily interference peak.
NOW = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)
LIVE_H = 8
START, END = NOW - timedelta(hours=LIVE_H), NOW + timedelta(minutes=1)


def _write(writer: InfluxWriter, batch: list) -> None:
    if batch:
        assert not writer.write(encode(batch)).rejected


def _play(fleet: Fleet, writer: InfluxWriter, store, live: LiveState) -> None:
    """A month of hourly history (bills need it), then the last hours at 5 minutes, hour by
    hour, flushing the live state and writing ``site_state`` after each hour."""
    history_start = fleet.bill_start - timedelta(hours=2)
    keep_interference = (NOW - timedelta(days=4)).timestamp()
    common = {"onset_ts": onset(fleet, history_start, NOW), "run_end_ts": NOW.timestamp()}
    for chunk in chunks(fleet, history_start, START, 3600, "demo", chunk_s=3600 * 24, **common):
        batch: list = []
        for topic, payload in chunk.messages:
            if topic.endswith("/interference") and chunk.until < keep_interference:
                continue  # the rules' baselines need 4 days; parsing a month costs seconds
            parsed = parse_message(topic, payload, NOW)
            assert parsed.ok, parsed.rejection
            batch += parsed.readings
        _write(writer, batch)
    metrics = PipelineMetrics(collector="sitetwin-collector-1")
    for hour in range(LIVE_H):
        begin = START + timedelta(hours=hour)
        batch = []
        for topic, payload in readings(fleet, begin, begin + timedelta(hours=1), 300, "demo",
                                       chunk_s=3600, **common):
            parsed = parse_message(topic, payload, NOW)
            assert parsed.ok, parsed.rejection
            batch += parsed.readings
            metrics.received_msgs += 1
        _write(writer, batch)
        metrics.received_points += len(batch)
        metrics.written_points += len(batch)
        metrics.batch_done(0.02)
        live.observe_batch(batch)
        live.flush(store)
        end = begin + timedelta(hours=1)
        writer.write(site_state_lines(store, end, online_window_s=live.online_window_s))
        lines = [metrics.point(spool_bytes=0, spool_batches=0,
                               now=(begin + timedelta(minutes=m)).timestamp())
                 for m in range(0, 60, 5)]
        writer.write("\n".join(lines).encode())


@pytest.fixture(scope="module")
def scenario(influxdb, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenario")
    db = f"scn_{uuid.uuid4().hex[:10]}"
    influxdb.query(f'CREATE DATABASE "{db}"')
    url = f"sqlite:///{root / 'twin.sqlite'}"
    settings = load_settings(None, influxdb={"url": influxdb.url, "database": db},
                             twin={"url": url, "reporting_period": "5m"},
                             services={"state_dir": str(root / "state")})
    fleet = Fleet.build(16, seed=7, now=NOW)  # the smallest fleet with every anomaly planted
    store = open_store(url)
    writer = InfluxWriter(influxdb.url, database=db)
    try:
        paths = fleet.write_csvs(root / "csv")
        for name in ("sites", "reservations", "tariffs", "bills"):
            import_csv(store, paths[name], name)
        _play(fleet, writer, store, LiveState(online_window_s=settings.twin.online_window_s))
        outcomes = Engine(store, rules=settings.rules, influxdb=settings.influxdb).run(NOW)
        assert [o.error for o in outcomes if o.status != "ok"] == []
    finally:
        writer.close()
        store.close()
    yield fleet, db
    influxdb.query(f'DROP DATABASE "{db}"')


def _values(fleet: Fleet, uid: str) -> dict[str, str]:
    """What each dashboard's user would pick: the site (and cell) with the anomaly it shows."""
    anomalies = fleet.expected_anomalies("demo")
    cell_id = anomalies["interference_narrowband"].cell_ids[0]
    site = next(s for s in fleet.sites if any(c.cell_id == cell_id for c in s.cells))
    band = next(c.band for c in site.cells if c.cell_id == cell_id)
    site_id = {
        "sitetwin-noc": anomalies["mains_failure"].site_ids[0],
        "sitetwin-power": anomalies["reservation_exceeded"].site_ids[0],
        "sitetwin-overcharging": anomalies["overcharging"].site_ids[0],
    }.get(uid, site.site_id)
    county = next(s.county for s in fleet.sites if s.site_id == site_id)
    return {"county": county, "site": site_id, "cell": cell_id, "band": band}


def _all_sites(fleet: Fleet) -> dict[str, list[str]]:
    """What Grafana sends for "All" sites (the variable has no allValue): every site."""
    return {"site": [s.site_id for s in fleet.sites]}


QUERIES = all_queries()
# The simulator's cells are FR1 (273 PRBs at 100 MHz / 30 kHz); PRBs 273-274 exist only in
# FR2, and test_queries.py proves the collector writes them when a device sends 275.
FR2_PRBS = frozenset({"prb_273", "prb_274"})
# Written once a flag is resolved or dismissed; a single rule run resolves none.
MAY_BE_ABSENT = FR2_PRBS | {"ended_ms"}


@pytest.mark.parametrize("all_values", [False, True], ids=["demo-values", "all"])
def test_every_query_returns_rows_on_the_demo_scenario(influxdb, scenario, all_values):
    fleet, db = scenario
    written = schema(influxdb, db)
    failures = []
    for uid, where, query in QUERIES:
        q = substitute(query, _values(fleet, uid), START, END, interval="1m",
                       all_values=all_values, all_lists=_all_sites(fleet))
        try:
            check_query(influxdb, db, written, f"{uid}: {where}", q, may_be_absent=MAY_BE_ABSENT)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    assert failures == []


def test_the_planted_anomalies_show_on_the_dashboards(influxdb, scenario):
    fleet, db = scenario
    anomalies = fleet.expected_anomalies("demo")
    panels = {(uid, where): q for uid, where, q in QUERIES}

    def rows(uid, where):
        q = substitute(panels[(uid, where)], _values(fleet, uid), START, END, interval="1m",
                       all_values=True, all_lists=_all_sites(fleet))
        return records(influxdb, db, q)

    on_battery = {r["site_id"] for r in rows("sitetwin-noc", "Sites on battery now [A]")}
    assert on_battery == set(anomalies["mains_failure"].site_ids)
    flagged = {(r["kind"], r["site_id"]) for r in rows("sitetwin-noc", "Open flags [A]")}
    assert {("overcharging", s) for s in anomalies["overcharging"].site_ids} <= flagged
    assert {("reservation_exceeded", s) for s in anomalies["reservation_exceeded"].site_ids} \
        <= flagged
    incidents = {r["site_id"] for r in rows("sitetwin-interference",
                                            "Interference incidents [B]")}
    assert set(anomalies["interference_narrowband"].site_ids) <= incidents
    suppliers = {r["supplier_id"] for r in rows("sitetwin-overcharging",
                                                "Excess charged per supplier [A]")}
    assert suppliers == {b.supplier_id for b in fleet.bills
                         if b.bill_id in anomalies["overcharging"].bill_ids
                         or b.bill_id in anomalies["overbilling"].bill_ids}
