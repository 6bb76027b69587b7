"""The build-progress report: per county, sites by stage against the year's target.

What the counties report to the city's industry bureau half-yearly and
yearly.  States are taken from the lifecycle history as of the end of the
period (a half-year or the year, local time; or now, or ``--as-of``), so a
past period's report does not change when sites move on.  Supply counts
(direct vs transfer, 转改直) use the supply in force then (``twin.history``).

Targets are of one of two kinds, and the report says which: ``annual`` - sites to
put on air during the year, so progress is the sites first on air since 1 January
(local) up to the report's time; ``cumulative`` - sites on air by the end of the
year, all years counted, so progress is the sites on air at the report's time.  A
half-year report measures the same year target (year to date) and adds the sites
first on air within the half (``on_air_in_period``).  Pure: frames in, frame out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.states import State
from core.timeutil import get_zone
from twin.history import in_force, load_supply_changes
from twin.lifecycle import UNDATED_IMPORT_NOTE
from twin.models import LifecycleEvent, Site

__all__ = ["COLUMNS", "TARGET_KINDS", "period_bounds", "progress_frame", "progress_report"]

# The columns of contract version 1 first, in their order; the half-year ones after them.
COLUMNS = [
    "county", "year", "target_sites", "planned_in_year", "in_planning", "under_construction",
    "blocked", "on_air", "on_air_in_year", "progress_pct", "direct_sites", "transfer_sites",
    "direct_share_pct", "as_of", "period", "target_kind", "on_air_in_period",
]
_SUMMED = ["planned_in_year", "in_planning", "under_construction", "blocked", "on_air",
           "on_air_in_year", "on_air_in_period", "direct_sites", "transfer_sites"]
TARGET_KINDS = ("annual", "cumulative")
_PLANNING = {State.PLANNED, State.SITE_SECURED, State.APPROVED}
_BUILDING = {State.UNDER_CONSTRUCTION, State.POWER_CONNECTED}


def period_bounds(year: int, half: int | None, zone: str | tzinfo) -> tuple[datetime, datetime]:
    """UTC bounds ``[start, end)`` of a local year or half-year (``half`` 1 or 2)."""
    tz = get_zone(zone) if isinstance(zone, str) else zone
    months = {None: (1, 13), 1: (1, 7), 2: (7, 13)}[half]
    start = datetime(year, months[0], 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz) if months[1] == 13 else datetime(year, 7, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def progress_frame(sites: pd.DataFrame, events: pd.DataFrame, targets: dict[str, int], year: int,
                   as_of: datetime, *, year_start: datetime | None = None,
                   period_start: datetime | None = None, period: str | None = None,
                   target_kind: str = "annual") -> pd.DataFrame:
    """One row per county plus a ``TOTAL`` row.

    ``sites``: site_id, county, supply (in force at ``as_of``), planned_year; ``events``:
    site_id, to_state, at, dated (only events at or before ``as_of``, any order).  An
    undated event (an import that did not say since when) sets the state but is no
    on-air date.  ``year_start`` (default 1 January UTC) and ``period_start`` (default
    the year's) bound the sites counted as first on air in the year and in the period;
    ``target_kind`` says what ``progress_pct`` compares with the target (module doc).
    """
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"target kind must be one of {', '.join(TARGET_KINDS)}, not {target_kind!r}")
    start = year_start or datetime(year, 1, 1, tzinfo=UTC)
    p_start = period_start or start
    period = period or str(year)
    if len(events):
        ev = events.sort_values(["at"], kind="stable")
        state = ev.groupby("site_id")["to_state"].last()
        dated = ev.get("dated", True)
        on_air_at = ev[(ev["to_state"] == State.ON_AIR) & dated].groupby("site_id")["at"].min()
    else:
        state = pd.Series(dtype=object)
        on_air_at = pd.Series(dtype="datetime64[ns, UTC]")
    s = sites.set_index("site_id")
    s = s.assign(state=state.reindex(s.index))
    s["first_on_air"] = on_air_at.reindex(s.index)
    existing = s[s["state"].notna()]
    rows = []
    counties = sorted(set(existing["county"]) | set(targets)
                      | set(s.loc[s["planned_year"] == year, "county"]))
    for county in counties:
        c = existing[existing["county"] == county]
        active = c[c["state"] != State.DECOMMISSIONED]
        first = c["first_on_air"]
        on_air_in_year = int(((first >= start) & (first <= as_of)).sum())
        on_air = int((c["state"] == State.ON_AIR).sum())
        done = on_air_in_year if target_kind == "annual" else on_air
        target = targets.get(county)
        direct = int((active["supply"] == "direct").sum())
        transfer = int((active["supply"] == "transfer").sum())
        rows.append({
            "county": county, "year": year, "period": period, "target_kind": target_kind,
            "target_sites": target,
            "planned_in_year": int(((s["county"] == county) & (s["planned_year"] == year)).sum()),
            "in_planning": int(c["state"].isin(_PLANNING).sum()),
            "under_construction": int(c["state"].isin(_BUILDING).sum()),
            "blocked": int((c["state"] == State.BLOCKED).sum()),
            "on_air": on_air,
            "on_air_in_year": on_air_in_year,
            "on_air_in_period": int(((first >= p_start) & (first <= as_of)).sum()),
            "progress_pct": round(100.0 * done / target, 1) if target else None,
            "direct_sites": direct, "transfer_sites": transfer,
            "direct_share_pct": round(100.0 * direct / (direct + transfer), 1)
            if direct + transfer else None,
            "as_of": as_of,
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if len(frame):
        total = {col: frame[col].sum() for col in _SUMMED}
        target_total = sum(t for t in targets.values() if t is not None) if targets else None
        done_total = total["on_air_in_year"] if target_kind == "annual" else total["on_air"]
        total.update({"county": "TOTAL", "year": year, "period": period, "target_kind": target_kind,
                      "target_sites": target_total,
                      "progress_pct": round(100.0 * done_total / target_total, 1)
                      if target_total else None,
                      "direct_share_pct": round(100.0 * total["direct_sites"]
                                                / (total["direct_sites"] + total["transfer_sites"]), 1)
                      if total["direct_sites"] + total["transfer_sites"] else None,
                      "as_of": as_of})
        frame = pd.concat([frame, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
    frame["target_sites"] = frame["target_sites"].astype("Int64")
    return frame


def progress_report(session: Session, year: int, targets: dict[str, int], now: datetime, *,
                    zone: str | tzinfo = "UTC", half: int | None = None,
                    as_of: datetime | None = None, target_kind: str = "annual") -> pd.DataFrame:
    """Load the registry and build ``progress_frame`` for a local year or half-year.

    The report is as of the end of the period, or ``now`` if that is earlier, or
    ``as_of`` if given (which must fall within the year; a time after the period's end
    is taken as its end).
    """
    year_start, year_end = period_bounds(year, None, zone)
    start, end = period_bounds(year, half, zone)
    last = end - timedelta(microseconds=1)
    if as_of is not None:
        if not year_start <= as_of < year_end:
            raise ValueError(f"--as-of {as_of.isoformat()} is not within {year}")
        if as_of < start:
            raise ValueError(f"--as-of {as_of.isoformat()} is before half {half} of {year}")
        at = min(as_of, last)
    else:
        at = min(now, last)
    sites = pd.DataFrame(session.execute(select(Site.site_id, Site.county, Site.supply,
                                                Site.planned_year)).all(),
                         columns=["site_id", "county", "supply", "planned_year"])
    supply = in_force(load_supply_changes(session), at, assume_first=True)
    if len(supply) and len(sites):
        then = sites["site_id"].map(dict(zip(supply["site_id"], supply["supply"], strict=True)))
        sites["supply"] = then.where(then.notna(), sites["supply"])
    events = pd.DataFrame(session.execute(
        select(LifecycleEvent.site_id, LifecycleEvent.to_state, LifecycleEvent.at,
               LifecycleEvent.verb, LifecycleEvent.note)
        .where(LifecycleEvent.at <= at)
        .order_by(LifecycleEvent.at, LifecycleEvent.id)).all(),
        columns=["site_id", "to_state", "at", "verb", "note"])
    if len(events):
        events["at"] = pd.to_datetime(events["at"], utc=True)
        events["dated"] = ~((events["verb"] == "import") & (events["note"] == UNDATED_IMPORT_NOTE))
    period = f"{year}-H{half}" if half else str(year)
    return progress_frame(sites, events, targets, year, at, year_start=year_start,
                          period_start=start, period=period, target_kind=target_kind)
