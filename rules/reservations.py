"""Grid capacity reserved per site against the load it actually draws.

Peak demand is the maximum, over the window, of the site's 15-minute mean
``power_kw`` (summed over its meters), aggregated in InfluxDB (frame
``power_peak``: site_id, peak_kw, time of the peak).  Exceeded: peak above
``reserved_kw``.  Underused: on air for ``underused_after_days`` and the peak
below ``underused_share`` of the reservation.  Missing: a site under
construction or further along with no reservation at all.  A site imported as
on air with no date (``on_air_since`` unknown) counts as long on air.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from core.settings import Duration
from core.states import State
from core.timeutil import utc_timestamp
from rules.finding import Finding, Severity, iso_utc
from rules.rule import Facts, Frames, Remembered, Rule, Thresholds

__all__ = ["RESERVATIONS", "ReservationThresholds", "evaluate_reservations", "peak_candidates", "site_peaks"]

NEEDS_RESERVATION = (State.UNDER_CONSTRUCTION, State.POWER_CONNECTED, State.ON_AIR, State.RELOCATING)


class ReservationThresholds(Thresholds):
    """Peak over ``window``; exceeded by more than ``critical_over`` (share) is critical."""

    interval: Duration = 3600.0
    window: Duration = 7 * 86400.0
    exceed_tolerance: float = Field(default=0.0, ge=0)
    critical_over: float = Field(default=0.2, ge=0)
    underused_after_days: float = Field(default=30.0, ge=0)
    underused_share: float = Field(default=0.3, gt=0, le=1)


def site_peaks(frame: pd.DataFrame | None) -> dict[str, tuple[float, pd.Timestamp | None]]:
    """site_id -> (peak_kw, time of the peak) from the ``power_peak`` frame."""
    if frame is None or frame.empty:
        return {}
    out = {}
    for row in frame.dropna(subset=["peak_kw"]).itertuples(index=False):
        out[row.site_id] = (float(row.peak_kw), getattr(row, "time", None))
    return out


def _ts(value: Any) -> pd.Timestamp | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return utc_timestamp(value)


def _established(site: Any, now: datetime, t: ReservationThresholds) -> bool:
    # An on-air site whose on-air date is unknown (imported as on air) is an established one.
    on_air = _ts(getattr(site, "on_air_since", None))
    return on_air is None or pd.Timestamp(now) - on_air >= pd.Timedelta(days=t.underused_after_days)


# Bounds come from other arithmetic than the peak (a sum over points, not over buckets):
# a margin keeps a site whose peak sits exactly on a threshold among the candidates.
_BOUND_MARGIN = 1e-6


def peak_candidates(bounds: pd.DataFrame | None, facts: Facts, now: datetime, t: ReservationThresholds
                    ) -> set[str]:
    """The sites whose findings depend on their exact peak, from cheap bounds on it.

    ``bounds``: site_id, meter_id, max_kw and low_kw, an upper and a lower bound on the
    meter's peak of 15-minute means over the window (``WindowData.power_bounds``).  A site
    with one meter and a reservation whose ``max_kw`` is within it and whose ``low_kw`` is
    above the underused share cannot be flagged.  Every other site
    with readings is a candidate: no reservation (its evidence shows the peak), several
    meters (the coincident sum has no cheap bound), or a bound across a threshold.
    """
    if bounds is None or bounds.empty:
        return set()
    meters = bounds.groupby("site_id")["meter_id"].nunique()
    out = set(meters[meters > 1].index)
    reserved: dict[str, float] = {}
    if not facts.reservations.empty:
        res = facts.reservations.drop_duplicates("site_id", keep="last")
        reserved = dict(zip(res["site_id"], res["reserved_kw"].astype(float), strict=True))
    single = bounds[~bounds["site_id"].isin(out)].set_index("site_id")
    sites = facts.sites.drop_duplicates("site_id", keep="last").set_index("site_id", drop=False)
    for sid, max_kw, low_kw in zip(single.index, single["max_kw"], single["low_kw"], strict=True):
        if sid not in reserved:
            out.add(sid)
            continue
        reserved_kw = reserved[sid]
        if max_kw > reserved_kw * (1 + t.exceed_tolerance) * (1 - _BOUND_MARGIN):
            out.add(sid)
        elif sid in sites.index and low_kw < reserved_kw * t.underused_share * (1 + _BOUND_MARGIN):
            site = sites.loc[sid]
            if site["state"] == State.ON_AIR and _established(site, now, t):
                out.add(sid)
    return out


# A backfill hands its steps the same facts until a change takes effect, and at 10 000
# sites the table as dicts cost ~40 ms a step.
_RESERVED: Remembered[tuple[pd.DataFrame, np.ndarray]] = Remembered()


def _reserved(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Each site's reservation (its last row), indexed by site_id, and ``reserved_kw`` as
    numbers (NaN where it is not one)."""

    def compute() -> tuple[pd.DataFrame, np.ndarray]:
        table = (frame.drop_duplicates("site_id", keep="last").set_index("site_id") if not frame.empty
                 else pd.DataFrame({"reserved_kw": []}, index=pd.Index([], dtype=object, name="site_id")))
        kw = pd.to_numeric(pd.Series(table["reserved_kw"].to_numpy(dtype=object), dtype=object),
                           errors="coerce").to_numpy(dtype=float)
        return table, kw

    return _RESERVED.get((frame,), None, compute)


def evaluate_reservations(frames: Frames, facts: Facts, now: datetime, t: ReservationThresholds
                          ) -> list[Finding]:
    """Exceeded, underused and missing reservations."""
    start = now - timedelta(seconds=t.window)
    frame = frames.get("power_peak")
    table, table_kw = _reserved(facts.reservations)
    out: list[Finding] = []
    sites = facts.sites
    # The loop below decides; one vector pass first leaves out the sites it would pass
    # over - reserved, with a peak inside [underused share, tolerance] of the reservation
    # (a margin keeps the edges in) or with no peak - so it walks ~600 of 10 000 sites.
    ids = sites["site_id"].to_numpy(dtype=object)
    at = table.index.get_indexer(ids)
    has = at >= 0
    kw = np.append(table_kw, np.nan)[at]  # -1 (none) takes the NaN at the end
    rows = None
    where = np.full(len(ids), -1)
    if frame is not None and not frame.empty:
        rows = frame.dropna(subset=["peak_kw"]).drop_duplicates("site_id", keep="last")
        where = pd.Index(rows["site_id"]).get_indexer(ids)
    peak = np.append(rows["peak_kw"].to_numpy(dtype=float) if rows is not None else [], np.nan)[where]
    with np.errstate(invalid="ignore"):
        quiet = has & (np.isnan(peak) | ((peak <= kw * (1 + t.exceed_tolerance) * (1 - 1e-9))
                                          & (peak >= kw * t.underused_share * (1 + 1e-9))))
    quiet &= kw >= 0  # NaN or negative: the loop decides
    walk = ~quiet
    peaks = {} if rows is None else site_peaks(rows.iloc[np.unique(where[walk & (where >= 0)])])
    reserved = table.iloc[np.unique(at[walk & has])].to_dict("index")
    sites = sites[walk]
    for site in sites.itertuples(index=False):
        sid = site.site_id
        res = reserved.get(sid)
        if res is None:
            if site.state in NEEDS_RESERVATION:
                out.append(Finding(
                    kind="reservation_missing", rule="reservations", site_id=sid, severity="warning",
                    window_start=start, window_end=now,
                    summary=f"site {sid} is {site.state} with no grid capacity reserved",
                    evidence={"state": site.state, "peak_kw": peaks.get(sid, (None,))[0]}))
            continue
        reserved_kw = float(res["reserved_kw"])
        if sid not in peaks:
            continue
        peak_kw, peak_at = peaks[sid]
        evidence = {"peak_kw": round(peak_kw, 3), "peak_at": iso_utc(peak_at) if peak_at is not None else None,
                    "reserved_kw": reserved_kw, "declared_kw": _num(res.get("declared_kw")),
                    "feeder": res.get("feeder"), "substation": res.get("substation"),
                    "status": res.get("status"), "window_days": round(t.window / 86400, 2)}
        if reserved_kw > 0:
            evidence["utilisation"] = round(peak_kw / reserved_kw, 4)
        if peak_kw > reserved_kw * (1 + t.exceed_tolerance):
            over = peak_kw - reserved_kw
            severity: Severity = "critical" if peak_kw > reserved_kw * (1 + t.critical_over) else "warning"
            out.append(Finding(
                kind="reservation_exceeded", rule="reservations", site_id=sid, severity=severity,
                window_start=start, window_end=now,
                summary=f"site {sid}: peak {peak_kw:.1f} kW over the {reserved_kw:.1f} kW reserved (+{over:.1f} kW)",
                evidence={**evidence, "over_kw": round(over, 3)}))
            continue
        on_air = _ts(getattr(site, "on_air_since", None))
        if site.state == State.ON_AIR and _established(site, now, t) and peak_kw < reserved_kw * t.underused_share:
            since = f"after {(pd.Timestamp(now) - on_air).days} days on air" if on_air is not None else "on air"
            out.append(Finding(
                kind="reservation_underused", rule="reservations", site_id=sid, severity="info",
                window_start=start, window_end=now,
                summary=(f"site {sid}: peak {peak_kw:.1f} kW is under {t.underused_share:.0%} of the "
                         f"{reserved_kw:.1f} kW reserved {since}"),
                evidence={**evidence, "on_air_since": iso_utc(on_air) if on_air is not None else None,
                          "unused_kw": round(reserved_kw - peak_kw, 3)}))
    return out


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


RESERVATIONS = Rule(
    name="reservations", kinds=("reservation_exceeded", "reservation_underused", "reservation_missing"),
    thresholds=ReservationThresholds, evaluate=evaluate_reservations, needs=("power_peak",),
    description="peak demand against the reserved grid capacity; unused and missing reservations",
    one_pass=True,
)
