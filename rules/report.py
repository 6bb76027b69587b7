"""Report tables: overcharging per supplier and bill (the regulator's), reservations per site,
feeder and substation (the grid company's).  Pure functions from flags/facts to frames;
``twin.export.write_table`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


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


_RESERVATION_COLUMNS = [
    "level", "site_id", "name", "county", "lat", "lon", "feeder", "substation", "feeders", "state",
    "status", "rated_kw", "sites", "declared_kw", "reserved_kw", "reserved_pct", "peak_kw",
    "coincident_peak_kw", "peak_at", "sum_site_peaks_kw", "headroom_kw", "utilisation_pct", "window_start", "window_end"]


def reservations_table(sheets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The per-level sheets of ``rules.capacity.capacity_sheets`` as one table with a ``level``
    column (the CSV form of the report; the XLSX form has a sheet per level).

    Sites, then feeders, then substations.  A site has ``peak_kw``, a feeder or substation
    ``coincident_peak_kw``; its ``headroom_kw`` is rating minus that peak, a site's is
    reserved minus its peak.
    """
    parts = [frame.assign(level=level) for level, frame in sheets.items() if len(frame)]
    if not parts:
        return pd.DataFrame(columns=_RESERVATION_COLUMNS)
    return pd.concat(parts, ignore_index=True).reindex(columns=_RESERVATION_COLUMNS)
