"""The grid engineer's reservation ledger page: a map of the sites, then substations ->
feeders -> sites with reserved, declared, peak and headroom (``web.api.ledger.ledger_table``,
the CLI's reservations report).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, Request

from web.api.ledger import ledger_table
from web.auth import require
from web.render import render

router = APIRouter(include_in_schema=False)

def ledger_tree(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The report's rows as substations, each with its feeders, each with its sites."""
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    subs = {r["substation"]: {**r, "feeders": []} for r in rows if r["level"] == "substation"}
    feeders = {}
    for r in rows:
        if r["level"] == "feeder":
            feeders[r["feeder"]] = {**r, "sites": []}
            subs.setdefault(r["substation"], {"substation": r["substation"], "feeders": []}
                            )["feeders"].append(feeders[r["feeder"]])
    missing: dict[str, Any] = {"substation": None, "feeders": [{"feeder": None, "sites": []}]}
    for r in rows:
        if r["level"] == "site":
            if r["feeder"] in feeders:
                feeders[r["feeder"]]["sites"].append(r)
            else:
                missing["feeders"][0]["sites"].append(r)
    out = sorted(subs.values(), key=lambda s: str(s["substation"]))
    if missing["feeders"][0]["sites"]:
        out.append(missing)
    return out


MAP_W, MAP_H, MAP_PAD = 640.0, 420.0, 12.0
UNDERUSED_PCT = 30.0


def site_map(facts: Any, table: pd.DataFrame) -> list[dict[str, Any]]:
    """The ledger's sites as points of an SVG map (equirectangular, scaled by the mean
    latitude's cosine so a city keeps its shape), each classed by its reservation:
    ``over`` (peak above reserved), ``under`` (peak below 30 % of it), ``missing``
    (built without a reservation) or ``ok``."""
    import math

    sites = table[table["level"] == "site"]
    if sites.empty or facts.sites.empty:
        return []
    where = facts.sites.drop_duplicates("site_id").set_index("site_id")[["lat", "lon"]]
    sites = sites[sites["site_id"].isin(where.index)]
    if sites.empty:
        return []
    lat = where.loc[sites["site_id"], "lat"].to_numpy(dtype=float)
    lon = where.loc[sites["site_id"], "lon"].to_numpy(dtype=float)
    kx = math.cos(math.radians(float(lat.mean())))
    span = max((lon.max() - lon.min()) * kx, lat.max() - lat.min(), 1e-6)
    scale = min(MAP_W, MAP_H) - 2 * MAP_PAD
    out = []
    for (_, row), y_deg, x_deg in zip(sites.iterrows(), lat, lon, strict=True):
        headroom, use = row["headroom_kw"], row["utilisation_pct"]
        if row["status"] == "missing":
            kind = "missing"
        elif pd.notna(headroom) and headroom < 0:
            kind = "over"
        elif pd.notna(use) and use < UNDERUSED_PCT:
            kind = "under"
        else:
            kind = "ok"
        out.append({"site_id": row["site_id"], "kind": kind,
                    "x": round(MAP_PAD + (x_deg - lon.min()) * kx / span * scale, 1),
                    "y": round(MAP_PAD + (lat.max() - y_deg) / span * scale, 1),
                    "peak_kw": None if pd.isna(row["peak_kw"]) else float(row["peak_kw"]),
                    "reserved_kw": None if pd.isna(row["reserved_kw"]) else float(row["reserved_kw"])})
    return out


@router.get("/ledger")
def ledger(request: Request, _p=Depends(require("reservations.read"))):
    facts, table, window_s, until, error = ledger_table(request)
    return render(request, "ledger.html", {"tree": ledger_tree(table), "peaks_error": error,
                                           "points": site_map(facts, table),
                                           "map_w": MAP_W, "map_h": MAP_H,
                                           "window_start": until - timedelta(seconds=window_s),
                                           "until": until})
