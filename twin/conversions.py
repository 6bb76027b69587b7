"""Supply conversions (转供电改直供电): sites moved from transfer to direct supply, per county and month.

The plan tracks how many sites each county takes off resold ("transfer") power each
month.  A conversion is a supply change to ``direct`` whose previous row for the site
was ``transfer`` (``twin.history``); it is counted in the local month of its
``effective_from``.  A site's first row is never a conversion (nothing before it is
known), and a change back to transfer is not counted.  Pure: frames in, frames out.
"""

from __future__ import annotations

from datetime import tzinfo

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.timeutil import get_zone
from twin.history import load_supply_changes
from twin.models import Site

__all__ = ["DETAIL_COLUMNS", "SUMMARY_COLUMNS", "conversions_frames", "conversions_report"]

SUMMARY_COLUMNS = ["county", "month", "conversion_count"]
DETAIL_COLUMNS = ["county", "month", "site_id", "name", "effective_from", "from_supply", "to_supply"]


def conversions_frames(changes: pd.DataFrame, sites: pd.DataFrame, year: int,
                       zone: str | tzinfo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, detail) for ``year`` (local).

    ``changes``: site_id, effective_from (UTC), supply; ``sites``: site_id, county, name.
    The summary has every county with a site and every month (``YYYY-MM``), zero
    included, then a ``TOTAL`` row per month; the detail one row per conversion.
    """
    tz = get_zone(zone) if isinstance(zone, str) else zone
    months = [f"{year}-{m:02d}" for m in range(1, 13)]
    detail = pd.DataFrame(columns=DETAIL_COLUMNS)
    if len(changes):
        ordered = changes.sort_values(["site_id", "effective_from"], kind="stable")
        before = ordered.groupby("site_id")["supply"].shift(1)
        conv = ordered[((before == "transfer") & (ordered["supply"] == "direct")).to_numpy()].copy()
        local = pd.to_datetime(conv["effective_from"], utc=True).dt.tz_convert(tz)
        conv["month"] = local.dt.strftime("%Y-%m")
        conv = conv[(local.dt.year == year).to_numpy()]
        if len(conv):
            info = sites.set_index("site_id")
            detail = pd.DataFrame({
                "county": conv["site_id"].map(info["county"]).to_numpy(),
                "month": conv["month"].to_numpy(),
                "site_id": conv["site_id"].to_numpy(),
                "name": conv["site_id"].map(info["name"]).to_numpy(),
                "effective_from": pd.to_datetime(conv["effective_from"], utc=True).to_numpy(),
                "from_supply": "transfer", "to_supply": "direct",
            }).sort_values(["county", "month", "site_id"], kind="stable").reset_index(drop=True)
            detail["effective_from"] = pd.to_datetime(detail["effective_from"], utc=True)
    counties = sorted(set(sites["county"].dropna())) if len(sites) else []
    grid = pd.MultiIndex.from_product([counties, months], names=["county", "month"])
    counts = detail.groupby(["county", "month"]).size() if len(detail) else pd.Series(dtype=int)
    summary = counts.reindex(grid, fill_value=0).rename("conversion_count").reset_index()
    total = summary.groupby("month", as_index=False)["conversion_count"].sum().assign(county="TOTAL")
    summary = pd.concat([summary, total], ignore_index=True).reindex(columns=SUMMARY_COLUMNS)
    summary["conversion_count"] = summary["conversion_count"].astype(int)
    return summary, detail.reindex(columns=DETAIL_COLUMNS)


def conversions_report(session: Session, year: int, zone: str | tzinfo
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load the supply history and the sites, and build ``conversions_frames``."""
    sites = pd.DataFrame(session.execute(select(Site.site_id, Site.county, Site.name)).all(),
                         columns=["site_id", "county", "name"])
    return conversions_frames(load_supply_changes(session), sites, year, zone)
