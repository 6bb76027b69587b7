"""Interval energy and the time-of-use cap against a brute-force reckoning of the same readings.

Random load curves, reporting phases and periods (on the hour, :07, every 15 minutes,
irregular), gaps, resets and meter swaps; three zones (one with a half-hour offset, so
the local clock hours are not UTC hours).  ``tests/rules/test_energy_integration.py``
runs the same property through InfluxDB and both registry backends.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.energy import bill_intervals, interval_energy
from rules.overcharging import BillThresholds, evaluate_overbilling, evaluate_overcharging
from tests.rules.energy_reference import (
    NS,
    Reading,
    clock_hours,
    hour_prices,
    meter_readings,
    readings_frame,
    reference_cap,
    reference_energy,
    smooth_load,
)
from tests.rules.helpers import facts, sites

ZONES = ("Asia/Shanghai", "UTC", "Asia/Kolkata")
TOU = {"sharp": ("19-21", 1.26), "peak": ("8-11;13-19", 1.05), "flat": ("7-8;11-13;21-23", 0.68),
       "valley": ("0-7;23-24", 0.32)}


def tou_tariffs(region: str = "SH", klass: str = "commercial") -> pd.DataFrame:
    return pd.DataFrame([{"region": region, "customer_class": klass, "period": period, "hours": hours,
                          "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": price}
                         for period, (hours, price) in TOU.items()])


def bill_row(site: str, start: datetime, end: datetime, billed_kwh: float, amount_cny: float,
             bill_id: str = "B1") -> dict:
    return {"bill_id": bill_id, "site_id": site, "supplier_id": "LL1", "supplier_name": "Landlord One",
            "meter_id": None, "period_start": pd.Timestamp(start), "period_end": pd.Timestamp(end),
            "billed_kwh": billed_kwh, "amount_cny": amount_cny}


@st.composite
def scenarios(draw) -> dict:
    """A bill period in a zone, and one site's readings: random load, reporting, gaps, resets."""
    tz = draw(st.sampled_from(ZONES))
    days = draw(st.integers(1, 2))
    start = datetime(2026, 11, 1, tzinfo=ZoneInfo(tz)).astimezone(UTC)
    start += timedelta(minutes=draw(st.sampled_from([0, 0, 0, 20])))
    end = start + timedelta(days=days)
    t0, t1 = start.timestamp() - 4 * 3600, end.timestamp() + 4 * 3600
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # the fine detail; structure below
    # Load: piecewise-constant power on blocks of 5 minutes to 2 hours.
    steps = rng.integers(300, 7200, size=int((t1 - t0) / 300) + 2)
    edges = np.concatenate([[t0], t0 + np.cumsum(steps)])
    edges = edges[: np.searchsorted(edges, t1) + 1]
    levels = rng.uniform(0.0, draw(st.sampled_from([0.0, 5.0, 40.0])), size=len(edges) - 1)
    cum = np.concatenate([[0.0], np.cumsum(np.diff(edges) * levels / 3600.0)])

    def energy(x: float) -> float:
        return float(np.interp(x, edges, cum))

    kind = draw(st.sampled_from(["hourly", "15min", "irregular"]))
    if kind == "irregular":
        gaps_s = rng.integers(60, 5400, size=int((t1 - t0) / 60) + 2)
        times = (t0 + draw(st.integers(0, 3600)) + np.concatenate([[0], np.cumsum(gaps_s)])).tolist()
        times = [x for x in times if x < t1]
    else:
        period = 3600 if kind == "hourly" else 900
        phase = draw(st.sampled_from([0, 7 * 60, 30 * 60, 59 * 60])) % period
        times = list(np.arange(t0 - t0 % period + phase, t1, period, dtype=float))
    for _ in range(draw(st.integers(0, 2))):  # gaps: no readings for a while
        g0 = draw(st.floats(t0, t1))
        g1 = g0 + draw(st.integers(600, 6 * 3600))
        times = [x for x in times if not g0 <= x < g1]
    resets = [draw(st.floats(t0, t1)) for _ in range(draw(st.integers(0, 2)))]
    swap = draw(st.one_of(st.none(), st.floats(start.timestamp(), end.timestamp())))
    if swap is None:
        rs = meter_readings("S1", energy, times, resets, restart_kwh=draw(st.floats(0, 5)))
    else:  # M1 taken out at the swap, M2 reads from 0 after it (a few minutes later)
        later = swap + draw(st.integers(0, 1800))
        rs = (meter_readings("S1", energy, [x for x in times if x <= swap], resets)
              + meter_readings("S1", energy, [x for x in times if x >= later], [later], meter_id="M2"))
    other = meter_readings("S2", lambda x: 5.0 * x / 3600.0, times, [])  # another site, never mixed in
    gap = float(draw(st.sampled_from([3600, 7200])))
    lo, hi = (start.timestamp() - gap) * NS, (end.timestamp() + gap) * NS
    window = [r for r in rs + other if lo <= r.t_ns <= hi]  # what the rule's query returns
    return {"tz": tz, "start": start, "end": end, "readings": window, "max_gap_s": gap,
            "all_readings": rs + other}


def _property_settings(n: int):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.large_base_example])


@_property_settings(120)
@given(scenarios())
def test_interval_energy_equals_the_brute_force_reckoning(sc):
    _period, a, b = bill_intervals([sc["start"]], [sc["end"]], sc["tz"])
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == clock_hours(sc["start"], sc["end"], sc["tz"])
    e = interval_energy(readings_frame(sc["readings"]), ["S1"] * len(a), a, b, max_gap_s=sc["max_gap_s"])
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        kwh, measured, unmetered = reference_energy(sc["readings"], "S1", x, y, sc["max_gap_s"])
        assert e.kwh[i] == pytest.approx(kwh, rel=1e-9, abs=1e-6), i
        assert bool(e.measured[i]) == measured, i
        assert e.unmetered_s[i] == pytest.approx(unmetered, abs=1e-3), i


@_property_settings(80)
@given(scenarios())
def test_time_of_use_cap_equals_the_brute_force_reckoning(sc):
    t = BillThresholds(tariff_timezone=sc["tz"], max_reading_gap=sc["max_gap_s"])
    cap, coverage, metered = reference_cap(sc["readings"], "S1", sc["start"], sc["end"], sc["tz"],
                                           hour_prices(TOU), sc["max_gap_s"])
    # A bill far above any cap is always flagged: its evidence carries the cap.
    f = facts(sites=sites({"site_id": "S1"}), tariffs=tou_tariffs(),
              bills=pd.DataFrame([bill_row("S1", sc["start"], sc["end"], 100.0, 1000.0)]))
    (x,) = evaluate_overcharging({"energy_readings": readings_frame(sc["readings"])}, f,
                                 sc["end"] + timedelta(days=1), t)
    ev = x.evidence
    assert ev["coverage"] == pytest.approx(round(coverage, 4), abs=1e-9)
    assert ev["metered_kwh"] == pytest.approx(round(metered, 3), abs=1.5e-3)
    if coverage >= t.min_coverage and not math.isnan(cap):
        assert ev["cap_basis"] == "metered energy mix"
        assert ev["cap_cny_per_kwh"] == pytest.approx(cap, abs=1e-6)
    else:
        assert ev["cap_basis"].startswith("highest period price") and ev["cap_cny_per_kwh"] == 1.26


@st.composite
def fair_meters(draw) -> dict:
    """A smooth daily load (like the simulator's) and a meter reporting at any phase and period."""
    tz = draw(st.sampled_from(("Asia/Shanghai", "UTC")))
    offset = 8.0 if tz == "Asia/Shanghai" else 0.0
    energy, consumed = smooth_load(base_kw=draw(st.floats(2.0, 15.0)), swing=draw(st.floats(0.0, 0.35)),
                                   peak_local_hour=draw(st.floats(0.0, 24.0)), utc_offset_h=offset)
    start = datetime(2026, 11, 1, tzinfo=ZoneInfo(tz)).astimezone(UTC)
    end = start + timedelta(days=draw(st.integers(3, 10)))
    period = draw(st.sampled_from([60, 300, 900, 1800, 3600]))
    phase = draw(st.integers(0, period - 1))
    t0 = start.timestamp() - 3 * 3600
    times = list(np.arange(t0 - t0 % period + phase, end.timestamp() + 3 * 3600, period, dtype=float))
    return {"tz": tz, "start": start, "end": end, "consumed": consumed,
            "readings": meter_readings("S1", energy, times, []), "period": period, "phase": phase}


@_property_settings(60)
@given(fair_meters())
def test_a_fair_bill_is_never_flagged_whatever_the_reporting_phase(sc):
    """Priced exactly at the cap of its own true energy mix: never flagged; 2 % above: flagged."""
    prices = hour_prices(TOU)
    zone = ZoneInfo(sc["tz"])
    cost = kwh = 0.0
    for a, b in clock_hours(sc["start"], sc["end"], sc["tz"]):
        e = sc["consumed"](a / NS, b / NS)
        cost += e * prices[datetime.fromtimestamp(a / NS, zone).hour]
        kwh += e
    true_cap = cost / kwh
    t = BillThresholds(tariff_timezone=sc["tz"])
    frames = {"energy_readings": readings_frame(sc["readings"])}
    now = sc["end"] + timedelta(days=1)
    for factor, flagged in ((1.0, False), (1.02, True)):
        f = facts(sites=sites({"site_id": "S1"}), tariffs=tou_tariffs(),
                  bills=pd.DataFrame([bill_row("S1", sc["start"], sc["end"], round(kwh, 1),
                                               round(kwh, 1) * true_cap * factor)]))
        found = evaluate_overcharging(frames, f, now, t)
        assert bool(found) == flagged, (factor, sc["period"], sc["phase"], found and found[0].evidence)
        # The bill's kWh are the meter's: never over-billing.
        assert evaluate_overbilling(frames, f, now, t) == []


def test_readings_on_the_hour_price_each_kwh_in_its_own_hour():
    """The issue's case: the reading at T closes [T-1h, T), whose energy is priced at T-1h's price."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # 1 kWh in every hour but 10 kWh in 18:00-19:00 UTC (peak, 1.05; 19:00 is sharp, 1.26).
    per_hour = [10.0 if h == 18 else 1.0 for h in range(24)]
    values = np.concatenate([[500.0], 500.0 + np.cumsum(per_hour)])
    rs = [Reading("S1", "M1", int((start + timedelta(hours=k)).timestamp()) * NS, float(v))
          for k, v in enumerate(values)]
    f = facts(sites=sites({"site_id": "S1"}), tariffs=tou_tariffs(),
              bills=pd.DataFrame([bill_row("S1", start, start + timedelta(days=1), 33.0, 330.0)]))
    (x,) = evaluate_overcharging({"energy_readings": readings_frame(rs)}, f, start + timedelta(days=2),
                                 BillThresholds(tariff_timezone="UTC"))
    # Credited to the hour after (the old reckoning), the 10 kWh would have been sharp.
    assert x.evidence["energy_mix_kwh"] == {"peak": 18.0, "sharp": 2.0, "flat": 5.0, "valley": 8.0}
    expected = sum(k * prices for k, prices in zip(per_hour, hour_prices(TOU), strict=True)) / 33.0
    assert x.evidence["cap_cny_per_kwh"] == pytest.approx(expected, abs=1e-6)
    assert x.evidence["coverage"] == 1.0 and x.evidence["metered_kwh"] == 33.0


class _Recorder:
    """A reader that records the statements it is asked and answers nothing."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def raw(self, q: str) -> list[dict]:
        self.statements.append(q)
        return [{"statement_id": 0}]


def test_the_readings_window_is_the_periods_widened_by_the_gap_and_never_past_now():
    from rules.data import WindowData

    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    f = facts(sites=sites({"site_id": "S1"}), bills=pd.DataFrame([bill_row("S1", start, end, 1.0, 1.0)]))
    t = BillThresholds(max_reading_gap="3h")
    reader = _Recorder()
    WindowData(reader, concurrency=1).energy_readings(f, end + timedelta(days=2), t, {})
    (q,) = reader.statements
    assert "time >= '2026-10-31T21:00:00.000000Z' AND time <= '2026-11-02T03:00:00.000000Z'" in q
    assert '"site_id" =~ /^(S1)$/' in q and 'GROUP BY "site_id", "meter_id"' in q
    # A backfill step an hour after the period: nothing later than its ``now`` is read.
    WindowData(reader, concurrency=1).energy_readings(f, end + timedelta(hours=1), t, {})
    assert "time <= '2026-11-02T01:00:00.000000Z'" in reader.statements[-1]


def test_one_statement_per_bill_period_and_shared_readings_once():
    from rules.data import WindowData

    class Answer(_Recorder):
        def raw(self, q: str) -> list[dict]:
            self.statements.append(q)
            return [{"statement_id": 0, "series": [{"name": "power", "tags": {"site_id": "S1", "meter_id": "M1"},
                                                     "columns": ["time", "energy_kwh"],
                                                     "values": [[1793491200000000000, 5.0]]}]}]

    oct_, nov, dec = (datetime(2026, m, 1, tzinfo=UTC) for m in (10, 11, 12))
    f = facts(sites=sites({"site_id": "S1"}, {"site_id": "S2"}),
              bills=pd.DataFrame([bill_row("S1", oct_, nov, 1.0, 1.0, "B1"), bill_row("S1", nov, dec, 1.0, 1.0, "B2"),
                                  bill_row("S2", nov, dec, 1.0, 1.0, "B3")]))
    reader = Answer()
    frame = WindowData(reader, concurrency=1).energy_readings(f, dec + timedelta(days=3), BillThresholds(), {})
    october, november = sorted(reader.statements)
    assert "'2026-09-30T22:00:00.000000Z'" in october and '/^(S1)$/' in october
    assert "'2026-10-31T22:00:00.000000Z'" in november and '/^(S1|S2)$/' in november
    assert len(frame) == 1  # the same reading, answered for both periods, kept once
