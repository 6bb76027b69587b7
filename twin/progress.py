"""The build-progress report: per county, sites by stage against the annual target.

What the counties report to the city's industry bureau half-yearly and
yearly.  States are taken from the lifecycle history as of the end of the
year (or now, for the current year), so a past year's report does not change
when sites move on.  Supply counts (direct vs transfer, 转改直) use the sites'
current supply mode, which has no history.  Pure: frames in, frame out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from twin.lifecycle import UNDATED_IMPORT_NOTE
from twin.models import LifecycleEvent, Site

__all__ = ["COLUMNS", "progress_frame", "progress_report"]

COLUMNS = [
    "county", "year", "target_sites", "planned_in_year", "in_planning", "under_construction",
    "blocked", "on_air", "on_air_in_year", "progress_pct", "direct_sites", "transfer_sites",
    "direct_share_pct", "as_of",
]
_PLANNING = {"planned", "site_secured", "approved"}
_BUILDING = {"under_construction", "power_connected"}


def progress_frame(sites: pd.DataFrame, events: pd.DataFrame, targets: dict[str, int], year: int,
                   as_of: datetime) -> pd.DataFrame:
    """One row per county plus a ``TOTAL`` row.

    ``sites``: site_id, county, supply, planned_year; ``events``: site_id, to_state,
    at, dated (only events at or before ``as_of``, any order).  An undated event (an
    import that did not say since when) sets the state but is no on-air date.
    """
    start = datetime(year, 1, 1, tzinfo=UTC)
    if len(events):
        ev = events.sort_values(["at"], kind="stable")
        state = ev.groupby("site_id")["to_state"].last()
        dated = ev["dated"] if "dated" in ev else True
        on_air_at = ev[(ev["to_state"] == "on_air") & dated].groupby("site_id")["at"].min()
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
        active = c[c["state"] != "decommissioned"]
        first = c["first_on_air"]
        on_air_in_year = int(((first >= start) & (first <= as_of)).sum())
        target = targets.get(county)
        direct = int((active["supply"] == "direct").sum())
        transfer = int((active["supply"] == "transfer").sum())
        rows.append({
            "county": county, "year": year, "target_sites": target,
            "planned_in_year": int(((s["county"] == county) & (s["planned_year"] == year)).sum()),
            "in_planning": int(c["state"].isin(_PLANNING).sum()),
            "under_construction": int(c["state"].isin(_BUILDING).sum()),
            "blocked": int((c["state"] == "blocked").sum()),
            "on_air": int((c["state"] == "on_air").sum()),
            "on_air_in_year": on_air_in_year,
            "progress_pct": round(100.0 * on_air_in_year / target, 1) if target else None,
            "direct_sites": direct, "transfer_sites": transfer,
            "direct_share_pct": round(100.0 * direct / (direct + transfer), 1)
            if direct + transfer else None,
            "as_of": as_of,
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if len(frame):
        total = {col: frame[col].sum() for col in COLUMNS[3:12]}
        target_total = sum(t for t in targets.values() if t is not None) if targets else None
        total.update({"county": "TOTAL", "year": year, "target_sites": target_total,
                      "progress_pct": round(100.0 * total["on_air_in_year"] / target_total, 1)
                      if target_total else None,
                      "direct_share_pct": round(100.0 * total["direct_sites"]
                                                / (total["direct_sites"] + total["transfer_sites"]), 1)
                      if total["direct_sites"] + total["transfer_sites"] else None,
                      "as_of": as_of})
        frame = pd.concat([frame, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
    frame["target_sites"] = frame["target_sites"].astype("Int64")
    return frame


def progress_report(session: Session, year: int, targets: dict[str, int],
                    now: datetime) -> pd.DataFrame:
    """Load the registry and build ``progress_frame`` as of the end of ``year`` (or ``now``)."""
    as_of = min(now, datetime(year + 1, 1, 1, tzinfo=UTC) - timedelta(microseconds=1))
    sites = pd.DataFrame(session.execute(select(Site.site_id, Site.county, Site.supply,
                                                Site.planned_year)).all(),
                         columns=["site_id", "county", "supply", "planned_year"])
    events = pd.DataFrame(session.execute(
        select(LifecycleEvent.site_id, LifecycleEvent.to_state, LifecycleEvent.at,
               LifecycleEvent.verb, LifecycleEvent.note)
        .where(LifecycleEvent.at <= as_of)
        .order_by(LifecycleEvent.at, LifecycleEvent.id)).all(),
        columns=["site_id", "to_state", "at", "verb", "note"])
    if len(events):
        events["at"] = pd.to_datetime(events["at"], utc=True)
        events["dated"] = ~((events["verb"] == "import") & (events["note"] == UNDATED_IMPORT_NOTE))
    return progress_frame(sites, events, targets, year, as_of)
