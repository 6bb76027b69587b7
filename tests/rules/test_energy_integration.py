"""The interval-energy and fair-bill properties end to end: readings in a real InfluxDB, sites, tariffs and
bills in the registry (SQLite and PostgreSQL), the rules' own fetch (``WindowData``) and
evaluation, against the brute-force reckoning of the same readings."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import delete

from connectors.influx import InfluxReader, InfluxWriter
from connectors.lineprotocol import line
from rules.data import WindowData, load_facts
from rules.overcharging import OVERCHARGING, BillThresholds, evaluate_overbilling, evaluate_overcharging
from tests.rules.energy_reference import NS, clock_hours, hour_prices, reference_cap, reference_overbilling
from tests.rules.test_energy import TOU, fair_meters, scenarios

pytestmark = pytest.mark.integration


def _registry(store) -> None:
    from datetime import UTC, datetime

    from twin.models import Site, Tariff

    with store.session() as s:
        s.add(Site(site_id="S1", name="S1", lat=30.2, lon=120.1, county="Xihu", kind="macro", supply="transfer",
                   region="urban", customer_class="commercial", state="on_air"))
        for period, (hours, price) in TOU.items():
            s.add(Tariff(region="urban", customer_class="commercial", period=period, hours=hours,
                         effective_from=datetime(2026, 1, 1, tzinfo=UTC), price_cny_per_kwh=price))


def test_interval_energy_through_influxdb_and_the_registry(influxdb, twin_url):
    from twin.models import Bill
    from twin.store import open_store

    store = open_store(twin_url)
    _registry(store)
    examples = []

    @settings(max_examples=12, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
    @given(scenarios())
    def check(sc):
        db = f"t_{uuid.uuid4().hex[:12]}"
        influxdb.query(f'CREATE DATABASE "{db}"')
        try:
            writer = InfluxWriter(influxdb.url, database=db)
            body = "\n".join(line("power", {"site_id": r.site_id, "meter_id": r.meter_id},
                                  {"energy_kwh": r.kwh}, r.t_ns) for r in sc["all_readings"])
            assert not writer.write(body.encode()).rejected
            writer.close()
            tz, gap = sc["tz"], sc["max_gap_s"]
            cap, coverage, metered = reference_cap(sc["readings"], "S1", sc["start"], sc["end"], tz,
                                                   hour_prices(TOU), gap)
            m_ref, cov_ref, unmetered_h, allowance = reference_overbilling(sc["readings"], "S1", sc["start"],
                                                                           sc["end"], tz, gap)
            with store.session() as s:
                s.execute(delete(Bill))
                # far above any cap and ten times the metered kWh: flagged wherever the data allows
                s.add(Bill(bill_id="B1", site_id="S1", supplier_id="LL1", supplier_name="Landlord",
                           period_start=sc["start"], period_end=sc["end"], billed_kwh=10 * metered + 100,
                           amount_cny=100 * (10 * metered + 100)))
            facts = load_facts(store)
            t = BillThresholds(tariff_timezone=tz, max_reading_gap=gap)
            now = sc["end"] + timedelta(days=2)
            reader = InfluxReader(influxdb.url, db)
            data = WindowData(reader, concurrency=1)
            try:
                frames = data.fetch(OVERCHARGING, facts, now, t)
            finally:
                data.close()
                reader.close()
            assert len(frames["energy_readings"]) == sum(r.site_id == "S1" for r in sc["readings"])
            (oc,) = evaluate_overcharging(frames, facts, now, t)
            assert oc.evidence["coverage"] == pytest.approx(round(coverage, 4), abs=1e-9)
            assert oc.evidence["metered_kwh"] == pytest.approx(round(metered, 3), abs=1.5e-3)
            if coverage >= t.min_coverage and not math.isnan(cap):
                assert oc.evidence["cap_cny_per_kwh"] == pytest.approx(cap, abs=1e-6)
            else:
                assert oc.evidence["cap_cny_per_kwh"] == 1.26
            ob = evaluate_overbilling(frames, facts, now, t)
            if cov_ref >= t.min_coverage:
                (x,) = ob
                assert x.evidence["metered_kwh"] == pytest.approx(round(m_ref, 3), abs=1.5e-3)
                assert x.evidence["unmetered_hours"] == pytest.approx(round(unmetered_h, 3), abs=1.5e-3)
                assert x.evidence["unmetered_allowance_kwh"] == pytest.approx(allowance, abs=2e-3)
            else:
                assert ob == []
            examples.append(coverage)
        finally:
            influxdb.query(f'DROP DATABASE "{db}"')

    try:
        check()
    finally:
        store.close()
    assert len(examples) >= 12


def test_a_fair_bill_is_never_flagged_through_influxdb_and_the_registry(influxdb, twin_url):
    """The fair-bill property end to end: at its own true mix's cap never flagged, 2 % above flagged."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from twin.models import Bill
    from twin.store import open_store

    store = open_store(twin_url)
    _registry(store)
    checked = []

    @settings(max_examples=8, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
    @given(fair_meters())
    def check(sc):
        prices = hour_prices(TOU)
        zone = ZoneInfo(sc["tz"])
        cost = kwh = 0.0
        for a, b in clock_hours(sc["start"], sc["end"], sc["tz"]):
            e = sc["consumed"](a / NS, b / NS)
            cost += e * prices[datetime.fromtimestamp(a / NS, zone).hour]
            kwh += e
        cap, billed = cost / kwh, round(kwh, 1)
        db = f"t_{uuid.uuid4().hex[:12]}"
        influxdb.query(f'CREATE DATABASE "{db}"')
        try:
            writer = InfluxWriter(influxdb.url, database=db)
            body = "\n".join(line("power", {"site_id": r.site_id, "meter_id": r.meter_id},
                                  {"energy_kwh": r.kwh}, r.t_ns) for r in sc["readings"])
            assert not writer.write(body.encode()).rejected
            writer.close()
            with store.session() as s:
                s.execute(delete(Bill))
                for bill_id, factor in (("B-FAIR", 1.0), ("B-HIGH", 1.02)):
                    s.add(Bill(bill_id=bill_id, site_id="S1", supplier_id="LL1", supplier_name="Landlord",
                               period_start=sc["start"], period_end=sc["end"], billed_kwh=billed,
                               amount_cny=billed * cap * factor))
            facts = load_facts(store)
            t = BillThresholds(tariff_timezone=sc["tz"])
            now = sc["end"] + timedelta(days=2)
            reader = InfluxReader(influxdb.url, db)
            data = WindowData(reader, concurrency=1)
            try:
                frames = data.fetch(OVERCHARGING, facts, now, t)
            finally:
                data.close()
                reader.close()
            flagged = {x.bill_id for x in evaluate_overcharging(frames, facts, now, t)}
            assert flagged == {"B-HIGH"}, (sc["period"], sc["phase"])
            assert evaluate_overbilling(frames, facts, now, t) == []
            checked.append(sc["phase"])
        finally:
            influxdb.query(f'DROP DATABASE "{db}"')

    try:
        check()
    finally:
        store.close()
    assert len(checked) >= 8
