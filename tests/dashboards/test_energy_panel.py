"""The site dashboard's energy panel places each interval's energy over that interval.

A meter reporting on the hour (and one every 15 minutes) with a known draw per hour, in a
real InfluxDB; the panel's own query with ``$__interval`` = 1h.  A cumulative reading at T
closes the hour before it, so the bar drawn before the point T (``barAlignment`` -1) must
hold the energy of [T - 1h, T).  The former query (``last``, bars centred) gave an
on-the-hour meter's hour [T - 1h, T) to the bar of [T, T + 1h).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from connectors.influx import InfluxWriter
from connectors.lineprotocol import line
from dashboards.site import DASHBOARD
from tests.dashboards.checks import records, substitute

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, tzinfo=UTC)
PER_HOUR = [3.0, 5.0, 11.0, 2.0, 7.0, 13.0, 4.0, 6.0]  # kWh drawn in hour k from START


def _counter(t: datetime) -> float:
    """The meter's counter at ``t``: steady draw within each hour."""
    hours = (t - START).total_seconds() / 3600
    k = int(hours)
    return 1000.0 + sum(PER_HOUR[:k]) + (hours - k) * (PER_HOUR[k] if k < len(PER_HOUR) else 0.0)


def test_each_bar_holds_the_energy_of_the_hour_it_spans(influxdb):
    panel = next(p for p in DASHBOARD.panels if getattr(p, "title", "") == "Energy per interval")
    assert panel.defaults["custom"]["barAlignment"] == -1  # the bar spans [T - interval, T]
    db = f"t_{uuid.uuid4().hex[:12]}"
    influxdb.query(f'CREATE DATABASE "{db}"')
    try:
        lines = []
        for meter, step in (("M-HOURLY", 60), ("M-15MIN", 15)):
            t = START
            while t <= START + timedelta(hours=len(PER_HOUR)):
                lines.append(line("power", {"site_id": "S1", "meter_id": meter},
                                  {"energy_kwh": round(_counter(t), 6)}, int(t.timestamp()) * 10**9))
                t += timedelta(minutes=step)
        writer = InfluxWriter(influxdb.url, database=db)
        assert not writer.write("\n".join(lines).encode()).rejected
        writer.close()
        q = substitute(panel.queries[0].influxql, {"county": "", "site": "S1"}, START,
                       START + timedelta(hours=len(PER_HOUR)), interval="1h", all_values=False)
        rows = records(influxdb, db, q)
        for meter in ("M-HOURLY", "M-15MIN"):
            got = {r["time"]: r["energy_kwh"] for r in rows if r["meter_id"] == meter}
            want = {(START + timedelta(hours=k + 1)).strftime("%Y-%m-%dT%H:%M:%SZ"): PER_HOUR[k]
                    for k in range(len(PER_HOUR))}
            assert got == pytest.approx(want), meter
    finally:
        influxdb.query(f'DROP DATABASE "{db}"')
