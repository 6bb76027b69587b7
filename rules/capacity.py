"""The grid company's capacity report: per site, per feeder and per substation.

Per site: reserved and declared kW against the site's own peak (the maximum of its
15-minute mean power, summed over its meters).  Per feeder and per substation the peak
is **coincident**: the maximum over 15-minute buckets of the sum of the member sites'
power, which is what the line and the transformer carry - sites peak at different hours
(a macro site in the evening, an office's indoor cell at noon), so the sum of each
site's own peak overstates it.  Both are given (``coincident_peak_kw`` and
``sum_site_peaks_kw``)
so the difference shows.  Headroom is the rating (``feeders.csv``, ``substations.csv``)
minus the coincident peak; without a rating it is unknown, never guessed from the
reservations.  Pure: frames in, frames out (``rules.data.WindowData.coincident_peaks``
fetches the coincident peaks, ``load_ratings`` the ratings).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from rules.reservations import NEEDS_RESERVATION, site_peaks
from rules.rule import Facts

__all__ = ["FEEDER_COLUMNS", "LEVELS", "SITE_COLUMNS", "SUBSTATION_COLUMNS", "capacity_sheets",
           "members"]

LEVELS = ("site", "feeder", "substation")
SITE_COLUMNS = ["site_id", "name", "county", "lat", "lon", "feeder", "substation", "state", "status",
                "declared_kw", "reserved_kw", "peak_kw", "peak_at", "headroom_kw", "utilisation_pct",
                "window_start", "window_end"]
_GROUP_TAIL = ["rated_kw", "sites", "declared_kw", "reserved_kw", "reserved_pct", "coincident_peak_kw", "peak_at",
               "sum_site_peaks_kw", "headroom_kw", "utilisation_pct", "window_start", "window_end"]
FEEDER_COLUMNS = ["feeder", "substation", *_GROUP_TAIL]
SUBSTATION_COLUMNS = ["substation", "feeders", *_GROUP_TAIL]


def members(facts: Facts) -> pd.DataFrame:
    """site_id, feeder, substation: each site's place in the grid, by its reservation."""
    res = facts.reservations
    if res.empty:
        return pd.DataFrame({"site_id": [], "feeder": [], "substation": []})
    res = res.drop_duplicates("site_id", keep="last")
    res = res[res["feeder"].notna() & res["substation"].notna()]
    return res[["site_id", "feeder", "substation"]].reset_index(drop=True)


def _pct(part: pd.Series, whole: pd.Series) -> pd.Series:
    whole = pd.to_numeric(whole, errors="coerce")
    return (100 * pd.to_numeric(part, errors="coerce") / whole.where(whole > 0)).round(1)


def _site_sheet(facts: Facts, peaks: dict, start: datetime, end: datetime) -> pd.DataFrame:
    res = (facts.reservations.drop_duplicates("site_id", keep="last").set_index("site_id")
           if not facts.reservations.empty else pd.DataFrame())
    sites = facts.sites.drop_duplicates("site_id", keep="last").set_index("site_id") \
        if not facts.sites.empty else pd.DataFrame()
    state = sites["state"] if "state" in sites else pd.Series(dtype=object)
    wanted = sorted(set(res.index) | set(state[state.isin(NEEDS_RESERVATION)].index))
    rows = []
    for sid in wanted:
        r = res.loc[sid] if sid in res.index else None
        s = sites.loc[sid] if sid in sites.index else None
        peak = peaks.get(sid)
        rows.append({
            "site_id": sid,
            "name": s.get("name") if s is not None else None,
            "county": s.get("county") if s is not None else None,
            "lat": s.get("lat") if s is not None else None,
            "lon": s.get("lon") if s is not None else None,
            "feeder": r["feeder"] if r is not None else None,
            "substation": r["substation"] if r is not None else None,
            "state": s.get("state") if s is not None else None,
            "status": r["status"] if r is not None else "missing",
            "declared_kw": float(r["declared_kw"]) if r is not None else None,
            "reserved_kw": float(r["reserved_kw"]) if r is not None else None,
            "peak_kw": round(peak[0], 3) if peak else None,
            "peak_at": peak[1] if peak else None,
        })
    frame = pd.DataFrame(rows, columns=SITE_COLUMNS)
    for col in ("declared_kw", "reserved_kw", "peak_kw", "lat", "lon"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["headroom_kw"] = (frame["reserved_kw"] - frame["peak_kw"]).round(3)
    frame["utilisation_pct"] = _pct(frame["peak_kw"], frame["reserved_kw"])
    frame["peak_at"] = pd.to_datetime(frame["peak_at"], utc=True)
    frame["window_start"] = pd.Timestamp(start)
    frame["window_end"] = pd.Timestamp(end)
    return frame


def _group_sheet(level: str, site_sheet: pd.DataFrame, coincident: pd.DataFrame | None,
                 ratings: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    columns = FEEDER_COLUMNS if level == "feeder" else SUBSTATION_COLUMNS
    with_res = site_sheet[site_sheet["reserved_kw"].notna() & site_sheet[level].notna()]
    agg = {"sites": ("site_id", "count"), "declared_kw": ("declared_kw", "sum"),
           "reserved_kw": ("reserved_kw", "sum"),
           "sum_site_peaks_kw": ("peak_kw", lambda s: s.fillna(0).sum())}
    if level == "feeder":
        agg["substation"] = ("substation", "first")
    else:
        agg["feeders"] = ("feeder", "nunique")
    g = with_res.groupby(level).agg(**agg) if len(with_res) else pd.DataFrame(columns=list(agg))
    rated = ratings.set_index(level) if len(ratings) else pd.DataFrame(columns=["rated_kw"])
    # Rated feeders or substations without a reserved site are listed too (all headroom).
    index = sorted(set(g.index) | set(rated.index))
    out = g.reindex(index)
    out.index.name = level
    out["rated_kw"] = pd.to_numeric(rated["rated_kw"].reindex(index), errors="coerce")
    if level == "feeder" and "substation" in rated:
        out["substation"] = out["substation"].where(out["substation"].notna(),
                                                    rated["substation"].reindex(index))
    if level == "substation":
        out["feeders"] = out["feeders"].fillna(0).astype(int)
    out["sites"] = out["sites"].fillna(0).astype(int)
    peaks = (coincident.set_index("group") if coincident is not None and len(coincident)
             else pd.DataFrame(columns=["peak_kw", "time"]))
    out["coincident_peak_kw"] = pd.to_numeric(peaks["peak_kw"].reindex(index), errors="coerce").round(3)
    out["peak_at"] = pd.to_datetime(peaks["time"].reindex(index), utc=True)
    out["sum_site_peaks_kw"] = pd.to_numeric(out["sum_site_peaks_kw"], errors="coerce").round(3)
    out["headroom_kw"] = (out["rated_kw"] - out["coincident_peak_kw"]).round(3)
    out["utilisation_pct"] = _pct(out["coincident_peak_kw"], out["rated_kw"])
    out["reserved_pct"] = _pct(out["reserved_kw"], out["rated_kw"])
    out["window_start"] = pd.Timestamp(start)
    out["window_end"] = pd.Timestamp(end)
    return out.reset_index().reindex(columns=columns)


def capacity_sheets(facts: Facts, site_peaks_frame: pd.DataFrame | None,
                    feeder_peaks: pd.DataFrame | None, substation_peaks: pd.DataFrame | None,
                    feeders: pd.DataFrame, substations: pd.DataFrame, window_start: datetime,
                    window_end: datetime) -> dict[str, pd.DataFrame]:
    """``{"site": ..., "feeder": ..., "substation": ...}``, one frame per level.

    ``site_peaks_frame``: site_id, peak_kw, time (``WindowData.power_peak``);
    ``feeder_peaks`` / ``substation_peaks``: group, peak_kw, time (coincident,
    ``WindowData.coincident_peaks``); ``feeders``: feeder, substation, rated_kw;
    ``substations``: substation, rated_kw.  Sites that need a reservation and have none
    are listed with status ``missing``.
    """
    site = _site_sheet(facts, site_peaks(site_peaks_frame), window_start, window_end)
    return {
        "site": site,
        "feeder": _group_sheet("feeder", site, feeder_peaks, feeders, window_start, window_end),
        "substation": _group_sheet("substation", site, substation_peaks, substations,
                                   window_start, window_end),
    }
