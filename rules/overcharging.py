"""Transfer-power bills: unit price above the regulated cap, billed kWh above metered kWh.

Both rules read one frame, ``energy_hourly`` (the last cumulative ``energy_kwh``
of each meter per hour, aggregated in InfluxDB), and the registry's bills,
tariffs and sites.  Metered energy is the sum of the positive hour-to-hour
increments per meter, so a meter that resets or is swapped (its counter goes
down) loses at most the energy of the hour of the reset instead of producing
a huge negative or positive jump.

The cap of a bill is the regulated catalogue price of the site's region and
customer class over the bill period.  For a time-of-use tariff it is the
site's own metered energy mix: each hour's energy priced at the period
(sharp/peak/flat/valley) and tariff row in force in that hour.  An allowed
share for losses (default 0 %, at most ``max_loss_share``) raises the cap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from rules.finding import Finding, Severity
from rules.rule import Facts, Frames, Rule, Thresholds
from sitetwin.config import Duration

__all__ = [
    "OVERBILLING",
    "OVERCHARGING",
    "BillThresholds",
    "evaluate_overbilling",
    "evaluate_overcharging",
    "hourly_increments",
    "parse_hours",
]

HOUR = pd.Timedelta(hours=1)


class BillThresholds(Thresholds):
    """Bills whose period ended within ``window`` before now are (re)checked every ``interval``."""

    interval: Duration = 3600.0
    window: Duration = 62 * 86400.0
    tolerance: float = Field(default=0.01, ge=0)
    loss_share: float = Field(default=0.0, ge=0)
    max_loss_share: float = Field(default=0.10, ge=0, le=1)
    overbilling_tolerance: float = Field(default=0.05, ge=0)
    min_coverage: float = Field(default=0.8, gt=0, le=1)
    warning_excess_cny: float = Field(default=100.0, ge=0)
    critical_excess_cny: float = Field(default=1000.0, ge=0)
    tariff_timezone: str = "UTC"

    @model_validator(mode="after")
    def _loss_share_capped(self) -> BillThresholds:
        if self.loss_share > self.max_loss_share:
            raise ValueError(f"loss_share {self.loss_share} exceeds max_loss_share {self.max_loss_share}")
        return self


def parse_hours(spec: Any) -> frozenset[int]:
    """``"8-11;18-21"`` -> hours {8, 9, 10, 18, 19, 20}; ``"22-6"`` wraps midnight; empty = all."""
    if spec is None or (isinstance(spec, float) and np.isnan(spec)) or not str(spec).strip():
        return frozenset(range(24))
    hours: set[int] = set()
    for part in str(spec).replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = (int(x) for x in part.split("-", 1))
            if not (0 <= a <= 24 and 0 <= b <= 24):
                raise ValueError(f"hour range {part!r} outside 0-24")
            h = a
            while h % 24 != b % 24:
                hours.add(h % 24)
                h += 1
            if a == b:
                hours.update(range(24))
        else:
            h = int(part)
            if not 0 <= h < 24:
                raise ValueError(f"hour {h} outside 0-23")
            hours.add(h)
    return frozenset(hours)


def _severity(excess_cny: float, t: BillThresholds) -> Severity:
    if excess_cny >= t.critical_excess_cny:
        return "critical"
    if excess_cny >= t.warning_excess_cny:
        return "warning"
    return "info"


def hourly_increments(energy: pd.DataFrame) -> pd.DataFrame:
    """Per site, meter and hour: the positive increase of the cumulative counter since the
    previous hour with data (``kwh``), and whether the counter went down (``reset``)."""
    if energy.empty:
        return pd.DataFrame({"site_id": [], "meter_id": [], "time": [], "kwh": [], "reset": []})
    df = energy[["time", "site_id", "meter_id", "energy_kwh"]].dropna(subset=["energy_kwh"])
    df = df.sort_values(["site_id", "meter_id", "time"], kind="stable")
    diff = df.groupby(["site_id", "meter_id"], sort=False)["energy_kwh"].diff()
    out = df[["site_id", "meter_id", "time"]].copy()
    out["kwh"] = diff.clip(lower=0).fillna(0.0)
    out["reset"] = diff < 0
    return out.reset_index(drop=True)


def _as_ts(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _bills_in_window(facts: Facts, now: datetime, t: BillThresholds) -> pd.DataFrame:
    bills = facts.bills
    if bills.empty:
        return bills
    end = bills["period_end"].map(_as_ts)
    keep = (end <= _as_ts(now)) & (end > _as_ts(now) - pd.Timedelta(seconds=t.window))
    return bills[keep.to_numpy()]


def _site_energy(increments: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {site: g for site, g in increments.groupby("site_id", sort=False)} if len(increments) else {}


def _bill_energy(site_inc: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp
                 ) -> tuple[pd.DataFrame, float]:
    """Increments inside [start, end) and the share of the period the counter data spans."""
    if site_inc is None or site_inc.empty:
        return site_inc.iloc[0:0] if site_inc is not None else pd.DataFrame(
            {"meter_id": [], "time": [], "kwh": [], "reset": []}), 0.0
    seen = site_inc[(site_inc["time"] >= start - HOUR) & (site_inc["time"] < end)]
    inside = seen[seen["time"] >= start]
    if seen.empty:
        return inside, 0.0
    span = seen["time"].max() + HOUR - max(seen["time"].min(), start - HOUR)
    coverage = min(1.0, span / (end - start + HOUR))
    return inside, float(coverage)


def _tariff_prices(tariffs: pd.DataFrame, times: pd.DatetimeIndex, tz: str
                   ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Price and period name of each hour, and the tariff rows used."""
    prices = np.full(len(times), np.nan)
    periods = np.full(len(times), "", dtype=object)
    used: dict[int, dict[str, Any]] = {}
    if tariffs.empty or len(times) == 0:
        return prices, periods, []
    local_hours = times.tz_convert(tz).hour.to_numpy()
    t_ns = times.as_unit("ns").asi8
    rows = tariffs.assign(period=tariffs["period"].fillna("flat").replace("", "flat"))
    # Time-of-use periods first, then the flat row fills any hour they leave.
    order = sorted(rows["period"].unique(), key=lambda p: p == "flat")
    for period in order:
        group = rows[rows["period"] == period].copy()
        group["_from"] = group["effective_from"].map(lambda v: _as_ts(v).value)
        group = group.sort_values("_from")
        idx = np.searchsorted(group["_from"].to_numpy(), t_ns, side="right") - 1
        if period == "flat":
            mask = np.ones((len(group), 24), dtype=bool)
        else:
            mask = np.array([[h in parse_hours(spec) for h in range(24)] for spec in group["hours"]],
                            dtype=bool).reshape(len(group), 24)
        member = (idx >= 0) & (periods == "")
        member[member] = mask[idx[member], local_hours[member]]
        if not member.any():
            continue
        group_prices = group["price_cny_per_kwh"].astype(float).to_numpy()
        prices[member] = group_prices[idx[member]]
        periods[member] = period
        for j in np.unique(idx[member]):
            used[int(group.index[j])] = group.iloc[j]
    rows_used = [
        {"period": str(r["period"]), "hours": "" if pd.isna(r["hours"]) else str(r["hours"]),
         "effective_from": _as_ts(r["effective_from"]).isoformat(),
         "price_cny_per_kwh": float(r["price_cny_per_kwh"])}
        for _, r in sorted(used.items())
    ]
    return prices, periods, rows_used


def _site_lookup(facts: Facts) -> dict[str, dict[str, Any]]:
    if facts.sites.empty:
        return {}
    return facts.sites.set_index("site_id").to_dict("index")


def evaluate_overcharging(frames: Frames, facts: Facts, now: datetime, t: BillThresholds
                          ) -> list[Finding]:
    """One finding per bill whose unit price exceeds the cap by more than the tolerance."""
    bills = _bills_in_window(facts, now, t)
    if bills.empty:
        return []
    energy = _site_energy(hourly_increments(frames.get("energy_hourly", pd.DataFrame())))
    sites = _site_lookup(facts)
    out: list[Finding] = []
    for bill in bills.itertuples(index=False):
        billed = float(bill.billed_kwh)
        if billed <= 0:
            continue
        site = sites.get(bill.site_id)
        if site is None:
            continue
        tariffs = facts.tariffs[(facts.tariffs["region"] == site.get("region"))
                                & (facts.tariffs["customer_class"] == site.get("customer_class"))]
        if tariffs.empty:
            continue
        start, end = _as_ts(bill.period_start), _as_ts(bill.period_end)
        hours = pd.date_range(start.floor("h"), end, freq="h", inclusive="left")
        prices, periods, rows_used = _tariff_prices(tariffs, hours, t.tariff_timezone)
        inside, _coverage = _bill_energy(energy.get(bill.site_id), start, end)
        per_hour = inside.groupby("time")["kwh"].sum() if len(inside) else pd.Series(dtype=float)
        weights = per_hour.reindex(hours, fill_value=0.0).to_numpy()
        priced = ~np.isnan(prices)
        if not priced.any():
            continue
        tou = any(p not in ("flat", "") for p in periods)
        metered = float(weights[priced].sum())
        if metered > 0:
            cap = float((weights[priced] * prices[priced]).sum() / metered)
            basis = "metered energy mix" if tou else "metered-energy-weighted catalogue price"
        elif tou:
            cap = float(np.nanmax(prices))
            basis = "highest period price (no metered energy in the bill period)"
        else:
            cap = float(np.nanmean(prices))
            basis = "time-weighted catalogue price"
        allowed = cap * (1 + t.loss_share)
        price = float(bill.amount_cny) / billed
        if price <= allowed * (1 + t.tolerance):
            continue
        excess = (price - allowed) * billed
        mix: dict[str, float] = {}
        for period in sorted({p for p in periods if p}):
            mix[period] = round(float(weights[periods == period].sum()), 3)
        out.append(Finding(
            kind="overcharging", rule="overcharging", site_id=bill.site_id,
            severity=_severity(excess, t),
            window_start=start.to_pydatetime(), window_end=end.to_pydatetime(),
            summary=(f"bill {bill.bill_id} from {bill.supplier_id}: {price:.4f} CNY/kWh against a cap "
                     f"of {allowed:.4f}; excess {excess:.2f} CNY"),
            evidence={
                "bill_id": bill.bill_id, "supplier_id": bill.supplier_id,
                "supplier_name": _text(getattr(bill, "supplier_name", None)),
                "unit_price_cny_per_kwh": round(price, 6), "cap_cny_per_kwh": round(cap, 6),
                "loss_share": t.loss_share, "allowed_cny_per_kwh": round(allowed, 6),
                "tolerance": t.tolerance, "billed_kwh": billed, "amount_cny": float(bill.amount_cny),
                "excess_cny": round(excess, 2), "cap_basis": basis, "time_of_use": tou,
                "metered_kwh": round(metered, 3), "energy_mix_kwh": mix, "tariff_rows": rows_used,
                "region": site.get("region"), "customer_class": site.get("customer_class"),
            },
            bill_id=bill.bill_id, supplier_id=bill.supplier_id,
        ))
    return out


def evaluate_overbilling(frames: Frames, facts: Facts, now: datetime, t: BillThresholds
                         ) -> list[Finding]:
    """One finding per bill whose billed kWh exceed the metered kWh by more than the tolerance."""
    bills = _bills_in_window(facts, now, t)
    if bills.empty:
        return []
    energy = _site_energy(hourly_increments(frames.get("energy_hourly", pd.DataFrame())))
    out: list[Finding] = []
    for bill in bills.itertuples(index=False):
        billed = float(bill.billed_kwh)
        start, end = _as_ts(bill.period_start), _as_ts(bill.period_end)
        inside, coverage = _bill_energy(energy.get(bill.site_id), start, end)
        if coverage < t.min_coverage:
            continue  # too little meter data to judge; never flag on a gap
        metered = float(inside["kwh"].sum())
        if billed <= metered * (1 + t.overbilling_tolerance):
            continue
        price = float(bill.amount_cny) / billed if billed > 0 else 0.0
        excess_kwh = billed - metered
        excess = excess_kwh * price
        per_meter = {str(m): round(float(v), 3) for m, v in inside.groupby("meter_id")["kwh"].sum().items()}
        out.append(Finding(
            kind="overbilling", rule="overbilling", site_id=bill.site_id,
            severity=_severity(excess, t),
            window_start=start.to_pydatetime(), window_end=end.to_pydatetime(),
            summary=(f"bill {bill.bill_id} from {bill.supplier_id}: {billed:.1f} kWh billed, "
                     f"{metered:.1f} kWh metered; excess {excess:.2f} CNY"),
            evidence={
                "bill_id": bill.bill_id, "supplier_id": bill.supplier_id,
                "supplier_name": _text(getattr(bill, "supplier_name", None)),
                "billed_kwh": billed, "metered_kwh": round(metered, 3), "metered_kwh_by_meter": per_meter,
                "meter_resets": int(inside["reset"].sum()), "coverage": round(coverage, 4),
                "tolerance": t.overbilling_tolerance, "excess_kwh": round(excess_kwh, 3),
                "unit_price_cny_per_kwh": round(price, 6), "amount_cny": float(bill.amount_cny),
                "excess_cny": round(excess, 2),
            },
            bill_id=bill.bill_id, supplier_id=bill.supplier_id,
        ))
    return out


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


OVERCHARGING = Rule(
    name="overcharging", kinds=("overcharging",), thresholds=BillThresholds,
    evaluate=evaluate_overcharging, needs=("energy_hourly",), scoped_by_window=True,
    description="bill unit price above the regulated cap (ToU cap from the metered energy mix)",
)
OVERBILLING = Rule(
    name="overbilling", kinds=("overbilling",), thresholds=BillThresholds,
    evaluate=evaluate_overbilling, needs=("energy_hourly",), scoped_by_window=True,
    description="billed kWh above the metered energy of the bill period",
)

