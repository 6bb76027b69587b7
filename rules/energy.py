"""Interval energy from cumulative meter readings: the counter at the interval's boundaries.

A cumulative ``energy_kwh`` reading at T closes the interval before it (CONTRACTS.md), so
the energy of ``[a, b)`` is the counter's increase from ``a`` to ``b``, the counter
interpolated linearly between the readings around each boundary.  Whatever the meter's
reporting phase (on the hour, at :07, every 15 minutes, irregular), no energy is credited
to a later interval.  The previous reckoning (last reading per ``GROUP BY time(1h)``
bucket, differenced) priced every kWh of an on-the-hour meter one hour late: with the
demo's evening peak and time-of-use tariff the cap came out a few percent low and fair
bills were flagged: ``sitetwin demo --sites 150`` flagged 3 fair bills (``info``) with the
old reckoning and none with this one (its check now fails on any flag nothing planted).

How a meter's readings are read (docs/evidence.md explains it for the regulator):

- Consecutive readings of one meter form a *segment*.  A segment is **normal** when the
  counter did not go down and the readings are at most ``max_gap`` apart; its increase is
  spread linearly over its time.
- A **gap** (readings more than ``max_gap`` apart) or a **reset** (the counter went down:
  a meter swap or a rollover) is treated alike: when, and for a reset how much, was drawn
  between the two readings is not known.  It counts 0 kWh, every interval it overlaps is
  *not measured* and its time is *unmetered*; after a reset energy counts from the new
  counter value.  (A gap's total is known, but splitting it across the hours - or across
  a bill's end - would be a guess; the over-billing rule allows for unmetered time
  instead, at the bill's highest measured hourly rate.)
- A meter is taken as present from its first to its last reading (a swapped-out meter
  stops, its successor starts); time no meter of the site spans is unmetered too and not
  measured.  A site's interval energy is the sum over its meters.

So for each interval: ``kwh`` (the increase of its normal segments), ``measured`` (meters
span all of it and no gap or reset overlaps it) and ``unmetered_s`` (seconds whose energy
is in no count: spanned by no meter, or inside a gap or a reset).  Only normal segments
carry energy, and they are at most ``max_gap`` long, so the readings from ``max_gap``
before a bill period to ``max_gap`` after it (``WindowData.energy_readings``) decide
everything about it: a reading further out can only open or close a gap, which counts
nothing either way.

Raw readings, not per-bucket aggregates: InfluxDB 1.6 returns the real time of a point only
for ``top``/``bottom`` under ``GROUP BY time``, and those pick the earliest of equal values
(a meter standing still), so the last reading before a boundary is not available from
aggregates.  Measured on 1 000 meters x 20 days of 15-minute readings (2-core machine,
loaded): ``last`` per hour 3.7 s, raw readings 5.5-6.7 s, first/last/min/max per hour 9.1 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["HOUR_NS", "IntervalEnergy", "bill_intervals", "interval_energy"]

HOUR_NS = 3_600_000_000_000
_NS = 1e9


@dataclass(frozen=True)
class IntervalEnergy:
    """Per interval: counted kWh, measured or not, and unmetered seconds (see the module)."""

    kwh: np.ndarray
    measured: np.ndarray
    unmetered_s: np.ndarray


def _ns(values: object) -> np.ndarray:
    """UTC instants as int64 nanoseconds (a Series of aware datetimes is converted without
    going through Timestamp objects)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return pd.to_datetime(series, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


def bill_intervals(starts: object, ends: object, tz: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The local clock hours of each period ``[start, end)``, clipped to it.

    Returns ``(period index, interval start ns, interval end ns)``, grouped by period in
    order.  Boundaries are the period's start and end and every local clock hour in
    between (for a zone a whole number of hours from UTC: the UTC hours); a period that
    does not start on the hour begins with the part-hour up to the next one.
    """
    start = _ns(starts)
    end = _ns(ends)
    n = len(start)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    # The clock hours of the zone sit at UTC hours plus the zone's offset modulo one hour.
    offset_s = pd.to_datetime(pd.Series(start), utc=True).dt.tz_convert(tz).map(
        lambda ts: ts.utcoffset().total_seconds()).to_numpy(dtype=float)
    rem = (np.mod(offset_s, 3600.0) * _NS).astype(np.int64)
    first = np.floor_divide(start - rem, HOUR_NS) * HOUR_NS + rem + HOUR_NS  # next boundary > start
    inner = np.where(end > first, -np.floor_divide(-(end - first), HOUR_NS), 0)  # boundaries in (start, end)
    count = np.where(end > start, inner + 1, 0).astype(np.int64)
    period = np.repeat(np.arange(n), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    f = np.repeat(first, count)
    a = np.where(k == 0, np.repeat(start, count), f + (k - 1) * HOUR_NS)
    b = np.minimum(f + k * HOUR_NS, np.repeat(end, count))
    return period, a, b


def _expand(owner: np.ndarray, first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row, item) for each row and each of the ``count[owner]`` items from ``first[owner]``."""
    rep = count[owner]
    row = np.repeat(np.arange(len(owner)), rep)
    within = np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep)
    return row, np.repeat(first[owner], rep) + within


def interval_energy(readings: pd.DataFrame | None, site_ids: object, starts_ns: np.ndarray,
                    ends_ns: np.ndarray, *, max_gap_s: float) -> IntervalEnergy:
    """Energy of each interval ``[starts_ns[i], ends_ns[i])`` at site ``site_ids[i]``.

    ``readings``: ``time``, ``site_id``, ``meter_id``, ``energy_kwh`` (cumulative), any
    order.  Vectorised across meters; see the module docstring for gaps, resets and
    coverage.
    """
    sites = np.asarray(site_ids, dtype=object)
    a = np.asarray(starts_ns, dtype=np.int64)
    b = np.asarray(ends_ns, dtype=np.int64)
    n = len(a)
    duration = (b - a).astype(float)
    if readings is None or readings.empty or n == 0:
        return IntervalEnergy(np.zeros(n), np.zeros(n, dtype=bool), duration / _NS)
    site_index = pd.Index(pd.unique(sites))
    r = readings[["time", "site_id", "meter_id", "energy_kwh"]].dropna(subset=["energy_kwh"])
    r_site = site_index.get_indexer(r["site_id"].to_numpy(dtype=object))
    keep = r_site >= 0
    r, r_site = r[keep], r_site[keep]
    if r.empty:
        return IntervalEnergy(np.zeros(n), np.zeros(n, dtype=bool), duration / _NS)
    t = _ns(r["time"])
    v = r["energy_kwh"].to_numpy(dtype=float)
    meter_codes, _ = pd.factorize(r["meter_id"].astype(str).to_numpy(dtype=object))
    combined = r_site.astype(np.int64) * np.int64(meter_codes.max() + 1) + meter_codes
    order = np.lexsort((t, combined))
    t, v, combined = t[order], v[order], combined[order]
    dup = np.zeros(len(t), dtype=bool)
    dup[:-1] = (combined[1:] == combined[:-1]) & (t[1:] == t[:-1])  # one reading per meter and time
    if dup.any():
        t, v, combined = t[~dup], v[~dup], combined[~dup]
    meter, starts_at = np.unique(combined, return_index=True)
    m_of = np.repeat(np.arange(len(meter)), np.diff(np.append(starts_at, len(t))))
    m_site = (meter // np.int64(meter_codes.max() + 1)).astype(np.int64)
    m_first = starts_at
    m_last = np.append(starts_at[1:], len(t)) - 1

    # Segments j -> j+1 of one meter, and the cumulative functions at each reading.
    same = np.zeros(len(t), dtype=bool)
    same[:-1] = m_of[1:] == m_of[:-1]
    dt = np.where(same, np.diff(t, append=t[-1]), 0)
    dv = np.where(same, np.diff(v, append=v[-1]), 0.0)
    reset = same & (dv < 0)
    gap = same & ~reset & (dt > max_gap_s * _NS)
    bad = reset | gap
    seg_kwh = np.where(bad, 0.0, dv)
    seg_bad_s = np.where(bad, dt / _NS, 0.0)
    cum_kwh = np.concatenate([[0.0], np.cumsum(seg_kwh)[:-1]])
    cum_bad = np.concatenate([[0.0], np.cumsum(seg_bad_s)[:-1]])

    # Every interval with every meter of its site.
    i_site = site_index.get_indexer(sites)
    per_site = np.bincount(m_site, minlength=len(site_index))
    first_meter = np.cumsum(per_site) - per_site
    row, m = _expand(i_site, first_meter, per_site)
    t0 = t.min()
    width = float(t.max() - t0) / _NS + 1.0
    x = m_of * width + (t - t0) / _NS  # increasing: meters in order, time within

    def at(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cumulative kWh and gap-or-reset seconds of meter ``m`` at ``q`` (clamped to its span)."""
        qc = np.clip(q, t[m_first[m]], t[m_last[m]])
        j = np.searchsorted(x, m * width + (qc - t0) / _NS, side="right") - 1
        j = np.clip(j, m_first[m], m_last[m])
        # j is the reading at or before qc (float positions; the weight is exact in ns)
        j = np.where((t[j] > qc) & (j > m_first[m]), j - 1, j)
        span = dt[j]
        w = np.where(span > 0, np.clip((qc - t[j]) / np.where(span > 0, span, 1), 0.0, 1.0), 0.0)
        return cum_kwh[j] + w * seg_kwh[j], cum_bad[j] + w * seg_bad_s[j]

    k1, bad1 = at(b[row])
    k0, bad0 = at(a[row])
    kwh = np.bincount(row, k1 - k0, minlength=n)
    bad_s = np.bincount(row, bad1 - bad0, minlength=n)

    # Time the site's meters span: the union of their [first, last] reading spans.
    spans = pd.DataFrame({"site": m_site, "s": t[m_first], "e": t[m_last]}).sort_values(["site", "s"])
    prev_end = spans.groupby("site")["e"].cummax().groupby(spans["site"]).shift()
    new = prev_end.isna().to_numpy() | (spans["s"].to_numpy() > prev_end.fillna(0).to_numpy())
    merged = spans.assign(g=np.cumsum(new)).groupby("g").agg(site=("site", "first"), s=("s", "min"),
                                                               e=("e", "max"))
    u_site = merged["site"].to_numpy(dtype=np.int64)
    per_site_u = np.bincount(u_site, minlength=len(site_index))
    row_u, u = _expand(i_site, np.cumsum(per_site_u) - per_site_u, per_site_u)
    overlap = np.maximum(0, np.minimum(b[row_u], merged["e"].to_numpy()[u])
                         - np.maximum(a[row_u], merged["s"].to_numpy()[u]))
    covered = np.bincount(row_u, overlap.astype(float), minlength=n)
    uncovered_s = np.maximum(duration - covered, 0.0) / _NS
    measured = (uncovered_s <= 0) & (bad_s <= 1e-9) & (duration > 0)
    return IntervalEnergy(kwh=kwh, measured=measured, unmetered_s=uncovered_s + np.maximum(bad_s, 0.0))
