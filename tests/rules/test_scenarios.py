"""The simulator's scenarios through the real pipeline pieces: readings parsed and written to
InfluxDB, the fleet's CSVs imported into the registry, the rules run at the end of the run.
Every planted anomaly is flagged with the right kind and site (and cell), nothing else is; a
normal run has no telemetry flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.influx import InfluxWriter
from connectors.lineprotocol import encode
from connectors.reading import parse_message
from rules.engine import Engine
from simulator.fleet import Fleet
from simulator.telemetry import onset, readings
from sitetwin.config import load_settings
from twin.imports import import_csv

pytestmark = pytest.mark.integration

# 12:00 UTC is 20:00 local, away from the simulated cells' daily interference peak (14:00 local):
# the simulator's quiet cells (floor -114 .. -110.5 dBm, +-1.5 dB a day) cross the default
# -110 dBm warning level around that peak, which the rule rightly flags.
NOW = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)
TELEMETRY_KINDS = {"interference", "mains_failure", "site_offline"}


def _play(fleet: Fleet, scenario: str, writer: InfluxWriter, *, bills: bool) -> None:
    """Hourly history (from before the bill month when ``bills``, else 4 days), then 8 hours
    live at 5 minutes; interference and tower kept for the last 4 days (the baselines)."""
    start = fleet.bill_start - timedelta(hours=2) if bills else NOW - timedelta(days=4)
    live = NOW - timedelta(hours=8)
    keep = (NOW - timedelta(days=4)).timestamp()
    common = {"onset_ts": onset(fleet, start, NOW), "run_end_ts": NOW.timestamp()}
    batch = []
    for begin, end, period in ((start, live, 3600), (live, NOW, 300)):
        for topic, payload in readings(fleet, begin, end, period, scenario, chunk_s=period * 24, **common):
            parsed = parse_message(topic, payload, NOW)
            assert parsed.ok, parsed.rejection
            batch.extend(r for r in parsed.readings if parsed.stream == "power" or r.ts_ns / 1e9 >= keep)
            if len(batch) >= 5000:
                assert not writer.write(encode(batch)).rejected
                batch = []
    assert not writer.write(encode(batch)).rejected


def _evaluate(influxdb, influx_db, tmp_path, scenario: str, *, bills: bool = True
              ) -> tuple[Fleet, list[dict]]:
    from twin.store import open_store

    fleet = Fleet.build(30, seed=7, now=NOW)
    writer = InfluxWriter(influxdb.url, database=influx_db)
    _play(fleet, scenario, writer, bills=bills)
    writer.close()
    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    store = open_store(url)
    paths = fleet.write_csvs(tmp_path / "csv")
    for name in ("sites", "reservations", "tariffs", "bills"):
        import_csv(store, paths[name], name)
    settings = load_settings(None, influxdb={"url": influxdb.url, "database": influx_db}, twin={"url": url},
                             services={"state_dir": str(tmp_path / "state")})
    assert settings.rules.query_concurrency > 1  # the default fetches rules and statements at once
    engine = Engine(store, rules=settings.rules, influxdb=settings.influxdb)
    try:
        outcomes = engine.run(NOW)
        assert [o.error for o in outcomes if o.status != "ok"] == []
        flags = engine.flags.list()
        # One statement and one rule at a time finds the same (and so changes no flag).
        one = Engine(store, rules=settings.rules.model_copy(update={"query_concurrency": 1}),
                     influxdb=settings.influxdb)
        again = one.run(NOW)
        assert [(o.rule, o.status, o.findings) for o in again] == [
            (o.rule, o.status, o.findings) for o in outcomes]
        assert sum(o.opened + o.resolved for o in again) == 0
        assert one.data.concurrency == 1
    finally:
        store.close()
    return fleet, flags


def _expected(fleet: Fleet, scenario: str) -> set[tuple[str, str]]:
    return {(a.kind, s) for a in fleet.expected_anomalies(scenario).values() if a.kind != "none"
            for s in a.site_ids}


def test_demo_scenario_every_anomaly_flagged_and_nothing_else(influxdb, influx_db, tmp_path):
    fleet, flags = _evaluate(influxdb, influx_db, tmp_path, "demo")
    expected = _expected(fleet, "demo")
    got = {(f["kind"], f["site_id"]) for f in flags if f["kind"] != "interference"}
    assert got == {e for e in expected if e[0] != "interference"}
    # Interference: the jammer is one incident listing its cells; the narrowband cell is its own.
    anomalies = fleet.expected_anomalies("demo")
    flagged_cells = {c["cell_id"] for f in flags if f["kind"] == "interference" for c in f["evidence"]["cells"]}
    planted = set(anomalies["interference_wideband"].cell_ids) | set(anomalies["interference_narrowband"].cell_ids)
    assert flagged_cells == planted
    jam = [f for f in flags if f["kind"] == "interference" and f["evidence"]["incident"]]
    assert len(jam) == 1 and jam[0]["evidence"]["classification"] == "wideband"
    est = jam[0]["evidence"]["source_estimate"]
    true_lat, true_lon = fleet.plan("demo").jammer_at
    assert abs(est["lat"] - true_lat) < 0.02 and abs(est["lon"] - true_lon) < 0.02
    (narrow,) = [f for f in flags if f["cell_id"] in anomalies["interference_narrowband"].cell_ids]
    assert narrow["evidence"]["classification"] == "narrowband"
    # Bills: exactly the planted bill ids (a meter swap is not over-billing).
    for kind in ("overcharging", "overbilling"):
        assert {f["bill_id"] for f in flags if f["kind"] == kind} == set(anomalies[kind].bill_ids)


def test_normal_scenario_has_no_telemetry_flags(influxdb, influx_db, tmp_path):
    # Four days of telemetry only: the bills (checked above) mostly cannot be judged, and a bill
    # that cannot be judged is not flagged; flat-tariff overcharging needs no meter data.
    fleet, flags = _evaluate(influxdb, influx_db, tmp_path, "normal", bills=False)
    expected = _expected(fleet, "normal")
    got = {(f["kind"], f["site_id"]) for f in flags}
    assert not [f for f in flags if f["kind"] in TELEMETRY_KINDS]
    assert got <= expected
    assert {e for e in got if e[0].startswith("reservation")} == {
        e for e in expected if e[0].startswith("reservation")}
