"""A brute-force reckoning of interval energy and the time-of-use cap, for the property tests.

Loops over every segment of every meter for every interval, straight from the
definitions in ``rules.energy`` (docs/evidence.md): nothing vectorised, nothing shared
with the rule code.  Also a generator of meter readings from a load curve (any reporting
phase and period, irregular times, gaps, resets) and the true energy of a load curve.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd

NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Reading:
    site_id: str
    meter_id: str
    t_ns: int
    kwh: float


def readings_frame(readings: list[Reading]) -> pd.DataFrame:
    return pd.DataFrame({"time": pd.to_datetime([r.t_ns for r in readings], unit="ns", utc=True),
                         "site_id": [r.site_id for r in readings], "meter_id": [r.meter_id for r in readings],
                         "energy_kwh": [r.kwh for r in readings]})


def clock_hours(start: datetime, end: datetime, tz: str) -> list[tuple[int, int]]:
    """``[start, end)`` cut at every local clock hour of ``tz``, as (start ns, end ns)."""
    zone = ZoneInfo(tz)
    out = []
    a = start
    while a < end:
        local = a.astimezone(zone)
        nxt = (local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).astimezone(start.tzinfo)
        b = min(nxt, end)
        out.append((_ns(a), _ns(b)))
        a = b
    return out


def _ns(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def reference_energy(readings: list[Reading], site_id: str, a: int, b: int, max_gap_s: float
                     ) -> tuple[float, bool, float]:
    """(kWh, measured, unmetered seconds) of ``[a, b)`` at ``site_id``, segment by segment."""
    meters: dict[str, list[Reading]] = {}
    for r in readings:
        if r.site_id == site_id:
            meters.setdefault(r.meter_id, []).append(r)
    kwh, bad, unmetered_ns = 0.0, False, 0
    spans = []
    for rs in meters.values():
        rs = sorted(rs, key=lambda r: r.t_ns)
        spans.append((rs[0].t_ns, rs[-1].t_ns))
        for r0, r1 in itertools.pairwise(rs):
            overlap = min(b, r1.t_ns) - max(a, r0.t_ns)
            if overlap <= 0:
                continue
            dt = r1.t_ns - r0.t_ns
            if r1.kwh < r0.kwh or dt > max_gap_s * NS:  # a reset or a gap: unknown, counts nothing
                bad = True
                unmetered_ns += overlap
                continue
            kwh += (r1.kwh - r0.kwh) * overlap / dt
    # the union of the meters' spans within [a, b)
    covered, reach = 0, a
    for s, e in sorted(spans):
        s, e = max(s, reach), min(e, b)
        if e > s:
            covered += e - s
            reach = e
    uncovered = (b - a) - covered
    return kwh, (uncovered == 0 and not bad and b > a), (unmetered_ns + uncovered) / NS


def hour_prices(tou: dict[str, tuple[str, float]]) -> list[float]:
    """Price of each local hour of the day from ``{period: (hours spec, price)}`` ([a, b) ranges)."""
    price = [math.nan] * 24
    for spec, p in tou.values():
        for part in spec.split(";"):
            lo, hi = (int(x) for x in part.split("-"))
            h = lo
            while h % 24 != hi % 24:
                price[h % 24] = p
                h += 1
    return price


def reference_cap(readings: list[Reading], site_id: str, start: datetime, end: datetime, tz: str,
                  prices: list[float], max_gap_s: float) -> tuple[float, float, float]:
    """(cap, coverage, metered kWh) of one bill: the measured hours' energy at their local hour's price."""
    zone = ZoneInfo(tz)
    cost = mix = metered = measured_ns = 0.0
    for a, b in clock_hours(start, end, tz):
        kwh, measured, _ = reference_energy(readings, site_id, a, b, max_gap_s)
        metered += kwh
        if measured:
            hour = datetime.fromtimestamp(a / NS, zone).hour
            cost += kwh * prices[hour]
            mix += kwh
            measured_ns += b - a
    total = (end - start).total_seconds() * NS
    return (cost / mix if mix > 0 else math.nan), measured_ns / total, metered


def meter_readings(site_id: str, energy: Callable[[float], float], times_s: list[float],
                   resets_s: list[float], restart_kwh: float = 0.0, meter_id: str = "M1",
                   start_kwh: float = 1000.0) -> list[Reading]:
    """Readings at ``times_s`` of a counter that integrates ``energy`` (kWh since some epoch,
    non-decreasing) and restarts at ``restart_kwh`` at each of ``resets_s``; 3 decimals."""
    out = []
    resets = sorted(resets_s)
    for t in sorted(times_s):
        done = [r for r in resets if r <= t]
        value = restart_kwh + energy(t) - energy(done[-1]) if done else start_kwh + energy(t)
        out.append(Reading(site_id, meter_id, round(float(t) * 1e6) * 1000, round(float(value), 3)))
    return out


def smooth_load(base_kw: float, swing: float, peak_local_hour: float, utc_offset_h: float
                ) -> tuple[Callable[[float], float], Callable[[float, float], float]]:
    """A daily load curve like the simulator's: (kWh since epoch at t, kWh over [t0, t1))."""
    w = 2 * math.pi / 86400.0

    def phase(t: float) -> float:
        return w * (t + (utc_offset_h - peak_local_hour) * 3600.0)

    def energy(t: float) -> float:
        return base_kw * (t + swing / w * math.sin(phase(t))) / 3600.0

    return energy, lambda t0, t1: energy(t1) - energy(t0)


def reference_overbilling(readings: list[Reading], site_id: str, start: datetime, end: datetime, tz: str,
                          max_gap_s: float) -> tuple[float, float, float, float]:
    """(metered kWh, coverage, unmetered hours, allowance kWh) of one bill: the allowance is the
    unmetered hours at the highest measured hourly rate."""
    metered = measured_ns = unmetered_s = 0.0
    peak = 0.0
    for a, b in clock_hours(start, end, tz):
        kwh, measured, unmetered = reference_energy(readings, site_id, a, b, max_gap_s)
        metered += kwh
        unmetered_s += unmetered
        if measured:
            measured_ns += b - a
            peak = max(peak, kwh / ((b - a) / NS / 3600.0))
    total = (end - start).total_seconds() * NS
    return metered, measured_ns / total, unmetered_s / 3600.0, unmetered_s / 3600.0 * peak
