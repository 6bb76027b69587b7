"""Report tables: overcharging per supplier and bill (the regulator's), reservations per site,
feeder and substation (the grid company's).  Pure functions from flags/facts to frames;
``twin.export.write_table`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from rules.reservations import site_peaks
from rules.rule import Facts

__all__ = ["month_bounds", "overcharging_table", "reservations_table"]

_BILL_KINDS = ("overcharging", "overbilling")
_EVIDENCE = ("supplier_name", "billed_kwh", "amount_cny", "metered_kwh", "unit_price_cny_per_kwh",
             "cap_cny_per_kwh", "allowed_cny_per_kwh", "excess_kwh", "excess_cny", "cap_basis",
             "energy_mix_kwh", "tariff_rows", "coverage", "meter_resets")


def month_bounds(period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``"2026-11"`` -> [2026-11-01, 2026-12-01) in UTC; ValueError otherwise."""
    if len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit():
        raise ValueError(f"period must be YYYY-MM, not {period!r}")
    start = pd.Timestamp(f"{period}-01", tz="UTC")
    return start, start + pd.offsets.MonthBegin(1)


def overcharging_table(flags: Sequence[dict[str, Any]], period: str) -> pd.DataFrame:
    """One row per flagged bill starting in ``period``, then totals per supplier and kind.

    Dismissed flags are listed (with their status) but left out of the totals.
    """
    start, end = month_bounds(period)
    rows = []
    for f in flags:
        if f["kind"] not in _BILL_KINDS:
            continue
        ws = pd.Timestamp(f["window_start"])
        if not (start <= ws < end):
            continue
        ev = f.get("evidence") or {}
        rows.append({"row": "bill", "supplier_id": f.get("supplier_id"), "bill_id": f.get("bill_id"),
                     "site_id": f["site_id"], "kind": f["kind"], "flag_id": f["id"], "status": f["status"],
                     "severity": f["severity"], "period_start": ws, "period_end": pd.Timestamp(f["window_end"]),
                     **{k: ev.get(k) for k in _EVIDENCE}, "summary": f["summary"]})
    columns = ["row", "supplier_id", "bill_id", "site_id", "kind", "flag_id", "status", "severity",
               "period_start", "period_end", *_EVIDENCE, "bills", "summary"]
    if not rows:
        return pd.DataFrame(columns=columns)
    bills = pd.DataFrame(rows).sort_values(["supplier_id", "bill_id", "kind"], kind="stable")
    counted = bills[bills["status"] != "dismissed"]
    totals = (counted.groupby(["supplier_id", "kind"], as_index=False)
              .agg(excess_cny=("excess_cny", "sum"), bills=("bill_id", "nunique"),
                   supplier_name=("supplier_name", "first")))
    totals["row"] = "supplier_total"
    grand = (counted.groupby("kind", as_index=False)
             .agg(excess_cny=("excess_cny", "sum"), bills=("bill_id", "nunique")))
    grand["row"] = "total"
    out = pd.concat([bills, totals, grand], ignore_index=True)
    out["excess_cny"] = out["excess_cny"].astype(float).round(2)
    return out.reindex(columns=columns)


def reservations_table(facts: Facts, peaks_frame: pd.DataFrame | None, window_start: datetime,
                       window_end: datetime) -> pd.DataFrame:
    """Per site, then per feeder and per substation: reserved vs declared vs actual peak, headroom.

    Sites under construction or later without a reservation are listed with empty capacity.
    """
    peaks = site_peaks(peaks_frame)
    res = facts.reservations.drop_duplicates("site_id", keep="last").set_index("site_id") \
        if not facts.reservations.empty else pd.DataFrame()
    state = dict(zip(facts.sites["site_id"], facts.sites["state"], strict=True)) if not facts.sites.empty else {}
    rows = []
    for sid in sorted(set(res.index) | {s for s, st in state.items()
                                         if st in ("under_construction", "power_connected", "on_air",
                                                   "relocating")}):
        r = res.loc[sid] if sid in res.index else None
        peak = peaks.get(sid)
        reserved = float(r["reserved_kw"]) if r is not None else None
        peak_kw = peak[0] if peak else None
        rows.append({
            "level": "site", "site_id": sid, "feeder": r["feeder"] if r is not None else None,
            "substation": r["substation"] if r is not None else None, "state": state.get(sid),
            "status": r["status"] if r is not None else "missing",
            "declared_kw": float(r["declared_kw"]) if r is not None else None, "reserved_kw": reserved,
            "peak_kw": round(peak_kw, 3) if peak_kw is not None else None,
            "peak_at": peak[1] if peak else None, "sites": 1,
        })
    columns = ["level", "site_id", "feeder", "substation", "state", "status", "declared_kw", "reserved_kw",
               "peak_kw", "peak_at", "headroom_kw", "utilisation_pct", "sites", "window_start", "window_end"]
    if not rows:
        return pd.DataFrame(columns=columns)
    sites = pd.DataFrame(rows)
    with_res = sites[sites["reserved_kw"].notna()]
    groups = []
    for level in ("feeder", "substation"):
        g = (with_res.groupby(level, as_index=False)
             .agg(declared_kw=("declared_kw", "sum"), reserved_kw=("reserved_kw", "sum"),
                  peak_kw=("peak_kw", lambda s: s.fillna(0).sum()), sites=("site_id", "count")))
        g["level"] = level
        if level == "feeder":
            g["substation"] = g["feeder"].map(with_res.groupby("feeder")["substation"].first())
        groups.append(g)
    out = pd.concat([sites, *groups], ignore_index=True)
    out["headroom_kw"] = (out["reserved_kw"] - out["peak_kw"]).round(3)
    out["utilisation_pct"] = (100 * out["peak_kw"] / out["reserved_kw"]).round(1)
    out["window_start"] = pd.Timestamp(window_start)
    out["window_end"] = pd.Timestamp(window_end)
    return out.reindex(columns=columns)
