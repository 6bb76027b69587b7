"""Screened fetches: a rule asks InfluxDB exactly only for what it can flag, and finds the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from connectors.influx import InfluxReader, InfluxWriter
from connectors.lineprotocol import line
from rules.data import WindowData
from rules.interference import INTERFERENCE, InterferenceThresholds
from rules.reservations import RESERVATIONS, ReservationThresholds, peak_candidates
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 11, 20, 12, 1, tzinfo=UTC)
T = ReservationThresholds()


def _res(site: str, reserved_kw: float) -> dict:
    return {"site_id": site, "declared_kw": reserved_kw, "reserved_kw": reserved_kw,
            "feeder": "F1", "substation": "SUB1", "status": "energized"}


def test_peak_candidates_are_the_sites_a_bound_cannot_clear():
    s = sites(*({"site_id": x, "on_air_since": "2026-01-01T00:00:00Z"}
                for x in ("OVER", "SAFE", "IDLE", "EDGE", "NORES", "TWO")),
              {"site_id": "YOUNG", "on_air_since": "2026-11-15T00:00:00Z"})
    bounds = pd.DataFrame([
        {"site_id": "OVER", "meter_id": "M", "max_kw": 12.0, "low_kw": 6.0},
        {"site_id": "SAFE", "meter_id": "M", "max_kw": 8.0, "low_kw": 5.0},
        {"site_id": "IDLE", "meter_id": "M", "max_kw": 4.0, "low_kw": 2.0},
        {"site_id": "YOUNG", "meter_id": "M", "max_kw": 4.0, "low_kw": 2.0},
        {"site_id": "EDGE", "meter_id": "M", "max_kw": 10.0, "low_kw": 6.0},
        {"site_id": "NORES", "meter_id": "M", "max_kw": 1.0, "low_kw": 1.0},
        {"site_id": "TWO", "meter_id": "A", "max_kw": 4.0, "low_kw": 4.0},
        {"site_id": "TWO", "meter_id": "B", "max_kw": 4.0, "low_kw": 4.0},
    ])
    r = pd.DataFrame([_res(x, 10.0) for x in ("OVER", "SAFE", "IDLE", "YOUNG", "EDGE", "TWO")])
    got = peak_candidates(bounds, facts(sites=s, reservations=r), NOW, T)
    # EDGE's peak may equal its reservation exactly: kept, the exact peak decides.
    assert got == {"OVER", "IDLE", "EDGE", "NORES", "TWO"}
    assert peak_candidates(pd.DataFrame(), facts(sites=s, reservations=r), NOW, T) == set()


def _ns(t: datetime | pd.Timestamp) -> int:
    return int(pd.Timestamp(t).value)


def _write(url: str, db: str, lines: list[str]) -> None:
    writer = InfluxWriter(url, database=db)
    assert not writer.write("\n".join(lines).encode()).rejected
    writer.close()


def _same(a, b) -> None:
    key = lambda f: (f.kind, f.site_id, f.cell_id)  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))
    by = {key(f): f for f in b}
    for f in a:
        assert (f.evidence, f.severity, f.summary) == (by[key(f)].evidence, by[key(f)].severity,
                                                       by[key(f)].summary)


@pytest.mark.integration
def test_screened_peaks_give_the_findings_of_every_peak(influxdb, influx_db):
    """Exceeded (by a 15-min mean, not just a spike), underused, missing, two meters, quiet sites."""
    rng = np.random.default_rng(3)
    start = NOW - timedelta(days=2)
    quiet = [f"OK{i}" for i in range(8)]
    loads = {"OVER": 11.0, "SPIKE": 6.0, "IDLE": 2.0, "NORES": 5.0, "TWO": 4.0,
             **{x: 6.0 + 0.2 * i for i, x in enumerate(quiet)}}
    lines = []
    for k in range(2 * 96):
        t = start + timedelta(minutes=15 * k)
        for sid, kw in loads.items():
            for j in range(3):  # three readings per bucket: the bucket mean is not the max
                v = kw * (1 + 0.05 * rng.standard_normal()) + (8.0 if sid == "SPIKE" and k == 50 and j == 0 else 0)
                ts = t + timedelta(minutes=5 * j)
                lines.append(line("power", {"site_id": sid, "meter_id": f"M-{sid}"}, {"power_kw": round(float(v), 3)},
                                  _ns(ts)))
                if sid == "TWO":
                    lines.append(line("power", {"site_id": sid, "meter_id": "M-TWO-B"}, {"power_kw": 3.0},
                                      _ns(ts)))
    _write(influxdb.url, influx_db, lines)
    s = sites(*({"site_id": x, "on_air_since": "2026-01-01T00:00:00Z"} for x in loads))
    r = pd.DataFrame([_res("OVER", 10.0), _res("SPIKE", 10.0), _res("IDLE", 10.0), _res("TWO", 6.0),
                      *(_res(x, 10.0) for x in quiet)])
    f = facts(sites=s, reservations=r)
    reader = InfluxReader(influxdb.url, influx_db)
    screened = WindowData(reader).fetch(RESERVATIONS, f, NOW, T)
    every = {"power_peak": WindowData(reader).power_peak(f, NOW, T, {})}
    reader.close()
    assert set(screened["power_peak"]["site_id"]) < set(every["power_peak"]["site_id"])
    found = RESERVATIONS.evaluate(screened, f, NOW, T)
    _same(found, RESERVATIONS.evaluate(every, f, NOW, T))
    assert {(x.kind, x.site_id) for x in found} == {
        ("reservation_exceeded", "OVER"), ("reservation_exceeded", "TWO"),
        ("reservation_underused", "IDLE"), ("reservation_missing", "NORES")}


@pytest.mark.integration
def test_screened_baseline_gives_the_findings_of_the_full_baseline(influxdb, influx_db):
    """A jammed cell, a cell risen over its own baseline, quiet cells: same findings either way."""
    t = InterferenceThresholds()
    rng = np.random.default_rng(5)
    start = pd.Timestamp(NOW).floor("D") - pd.Timedelta(days=5)
    cells = {"A-1": ("A", -117.0), "A-2": ("A", -116.0), "B-1": ("B", -124.0), "C-1": ("C", -117.5)}
    lines = []
    for k in range(int((pd.Timestamp(NOW) - start) / pd.Timedelta(minutes=15)) + 1):
        ts = start + pd.Timedelta(minutes=15 * k)
        late = ts > pd.Timestamp(NOW) - pd.Timedelta(hours=1)
        for cid, (sid, floor) in cells.items():
            level = floor + 2.0 * np.cos(2 * np.pi * ts.hour / 24) + 0.3 * rng.standard_normal()
            level += (10.0 if cid == "A-1" else 8.0 if cid == "B-1" else 0.0) if late else 0.0
            lines.append(line("interference", {"site_id": sid, "cell_id": cid, "band": "n78"},
                              {"ul_interference_dbm": round(float(level), 1)}, _ns(ts)))
    _write(influxdb.url, influx_db, lines)
    s = sites({"site_id": "A", "lat": 30.0, "lon": 120.0}, {"site_id": "B", "lat": 31.0, "lon": 121.0},
              {"site_id": "C", "lat": 32.0, "lon": 122.0})
    f = facts(sites=s)
    reader = InfluxReader(influxdb.url, influx_db)
    screened = WindowData(reader).fetch(INTERFERENCE, f, NOW, t)
    data = WindowData(reader)
    every: dict[str, pd.DataFrame] = {}
    for name in INTERFERENCE.needs:
        every[name] = getattr(data, name)(f, NOW, t, every)
    reader.close()
    assert len(screened["interference_baseline"]) < len(every["interference_baseline"])
    found = INTERFERENCE.evaluate(screened, f, NOW, t)
    _same(found, INTERFERENCE.evaluate(every, f, NOW, t))
    assert {x.cell_id for x in found} == {"A-1", "B-1"}
