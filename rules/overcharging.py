"""Transfer-power bills: unit price above the regulated cap, billed kWh above metered kWh.

Both rules read one frame, ``energy_readings`` (each meter's cumulative ``energy_kwh``
readings from ``max_reading_gap`` before the bill periods to as long after them), and
the registry's bills, tariffs and sites.  A bill period is cut into local clock hours
and each hour's energy is the counter's increase between the hour's boundaries
(``rules.energy``: interpolated between readings, never credited to a later hour; gaps
and resets make an hour *not measured*).  ``coverage`` is the share of the period whose
hours are measured.

The cap of a bill is the regulated catalogue price of the site's region and
customer class over the bill period.  For a time-of-use tariff it is the
site's own metered energy mix: each measured hour's energy priced at the period
(sharp/peak/flat/valley) and tariff row in force in that local hour.  An allowed
share for losses (default 0 %, at most ``max_loss_share``) raises the cap.
docs/evidence.md explains every number of the evidence, with a worked example
that ``tests/rules/test_evidence_doc.py`` recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from core.settings import Duration
from core.tariff import parse_hours  # one parser for import and rule (re-exported)
from core.timeutil import utc_timestamp
from rules.energy import HOUR_NS, IntervalEnergy, bill_intervals, interval_energy
from rules.finding import Finding, Severity, iso_utc
from rules.rule import Facts, Frames, Rule, Thresholds

__all__ = [
    "OVERBILLING",
    "OVERCHARGING",
    "BillThresholds",
    "evaluate_overbilling",
    "evaluate_overcharging",
    "parse_hours",
]

class BillThresholds(Thresholds):
    """Bills whose period ended within ``window`` before now are (re)checked every ``interval``."""

    interval: Duration = 6 * 3600.0
    window: Duration = 62 * 86400.0
    tolerance: float = Field(default=0.01, ge=0)
    loss_share: float = Field(default=0.0, ge=0)
    max_loss_share: float = Field(default=0.10, ge=0, le=1)
    overbilling_tolerance: float = Field(default=0.05, ge=0)
    min_coverage: float = Field(default=0.8, gt=0, le=1)
    warning_excess_cny: float = Field(default=100.0, ge=0)
    critical_excess_cny: float = Field(default=1000.0, ge=0)
    tariff_timezone: str = "Asia/Shanghai"
    # Readings further apart than this leave the hours between them not measured.  At least
    # an hour: a meter reporting hourly must not lose every hour to one missed reading.
    max_reading_gap: Duration = Field(default=2 * 3600.0, ge=3600.0)

    @model_validator(mode="after")
    def _loss_share_capped(self) -> BillThresholds:
        try:
            pd.Timestamp(0, tz=self.tariff_timezone)
        except Exception:  # noqa: BLE001 - any unknown zone name
            raise ValueError(f"unknown time zone {self.tariff_timezone!r}") from None
        if self.loss_share > self.max_loss_share:
            raise ValueError(f"loss_share {self.loss_share} exceeds max_loss_share {self.max_loss_share}")
        return self


def _severity(excess_cny: float, t: BillThresholds) -> Severity:
    if excess_cny >= t.critical_excess_cny:
        return "critical"
    if excess_cny >= t.warning_excess_cny:
        return "warning"
    return "info"


def _as_ts(value: Any) -> pd.Timestamp:
    return utc_timestamp(value)


def _bills_in_window(facts: Facts, now: datetime, t: BillThresholds) -> pd.DataFrame:
    bills = facts.bills
    if bills.empty:
        return bills
    end = pd.to_datetime(bills["period_end"], utc=True)
    keep = (end <= _as_ts(now)) & (end > _as_ts(now) - pd.Timedelta(seconds=t.window))
    return bills[keep.to_numpy()].reset_index(drop=True)


@dataclass(frozen=True)
class _Metering:
    """The bills' intervals (local clock hours of each period) and what the meters say of them."""

    bill: np.ndarray          # bill position of each interval, grouped by bill in order
    start_ns: np.ndarray
    end_ns: np.ndarray
    energy: IntervalEnergy
    metered_kwh: np.ndarray   # per bill: counted kWh over the period
    coverage: np.ndarray      # per bill: share of the period whose intervals are measured
    unmetered_h: np.ndarray   # per bill: hours whose energy is in no counter

    @property
    def hours(self) -> np.ndarray:
        return (self.end_ns - self.start_ns) / HOUR_NS


def _metering(bills: pd.DataFrame, readings: pd.DataFrame | None, t: BillThresholds) -> _Metering:
    bill, a, b = bill_intervals(bills["period_start"], bills["period_end"], t.tariff_timezone)
    energy = interval_energy(readings, bills["site_id"].to_numpy(dtype=object)[bill], a, b,
                             max_gap_s=t.max_reading_gap)
    nb = len(bills)
    span = (b - a).astype(float)
    period = np.bincount(bill, span, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.nan_to_num(np.bincount(bill, np.where(energy.measured, span, 0.0), nb) / period)
    return _Metering(bill=bill, start_ns=a, end_ns=b, energy=energy,
                     metered_kwh=np.bincount(bill, energy.kwh, nb), coverage=coverage,
                     unmetered_h=np.bincount(bill, energy.unmetered_s, nb) / 3600.0)


def _tariff_prices(tariffs: pd.DataFrame, t_ns: np.ndarray, local_hours: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Price, period name and tariff row (index label, -1 for none) of each hour."""
    prices = np.full(len(t_ns), np.nan)
    periods = np.full(len(t_ns), "", dtype=object)
    row_ids = np.full(len(t_ns), -1, dtype=np.int64)
    if tariffs.empty or len(t_ns) == 0:
        return prices, periods, row_ids
    rows = tariffs.assign(period=tariffs["period"].fillna("flat").replace("", "flat"))
    # Time-of-use periods first, then the flat row fills any hour they leave.  An hour that two
    # periods claim (a registry from before the import refused overlaps) takes the higher price:
    # the benefit of the doubt goes to the landlord, and the cap no longer depends on the order
    # the periods are read in (it was the alphabetical one).
    for period in sorted(rows["period"].unique(), key=lambda p: (p == "flat", p)):
        group = rows[rows["period"] == period].copy()
        group["_from"] = pd.to_datetime(group["effective_from"], utc=True).dt.as_unit("ns").astype("int64")
        group = group.sort_values("_from")
        idx = np.searchsorted(group["_from"].to_numpy(), t_ns, side="right") - 1
        if period == "flat":
            mask = np.ones((len(group), 24), dtype=bool)
        else:
            mask = np.array([[h in parse_hours(spec) for h in range(24)] for spec in group["hours"]],
                            dtype=bool).reshape(len(group), 24)
        member = idx >= 0
        member[member] = mask[idx[member], local_hours[member]]
        candidate = np.full(len(t_ns), np.nan)
        candidate[member] = group["price_cny_per_kwh"].astype(float).to_numpy()[idx[member]]
        free = periods == ""
        if period == "flat":
            member &= free
        else:
            with np.errstate(invalid="ignore"):
                member &= free | (candidate > prices)
        if not member.any():
            continue
        prices[member] = candidate[member]
        periods[member] = period
        row_ids[member] = group.index.to_numpy()[idx[member]]
    return prices, periods, row_ids


def _interval_prices(bill: np.ndarray, start_ns: np.ndarray, bills: pd.DataFrame, facts: Facts, tz: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tariff price, period and row of every interval, from the site's region and class and
    the local clock hour the interval starts in."""
    n = len(bill)
    prices = np.full(n, np.nan)
    periods = np.full(n, "", dtype=object)
    row_ids = np.full(n, -1, dtype=np.int64)
    if facts.sites.empty or facts.tariffs.empty or n == 0:
        return prices, periods, row_ids
    site_rc = facts.sites.drop_duplicates("site_id").set_index("site_id")
    region = bills["site_id"].map(site_rc["region"]).to_numpy()
    klass = bills["site_id"].map(site_rc["customer_class"]).to_numpy()
    local_hours = pd.DatetimeIndex(start_ns.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(tz).hour
    local_hours = np.asarray(local_hours)
    for (r, c), group in facts.tariffs.groupby(["region", "customer_class"], sort=False):
        sel = np.flatnonzero(((region == r) & (klass == c))[bill])
        if len(sel) == 0:
            continue
        p, per, rid = _tariff_prices(group, start_ns[sel], local_hours[sel])
        prices[sel], periods[sel], row_ids[sel] = p, per, rid
    return prices, periods, row_ids


def _tariff_row(tariffs: pd.DataFrame, label: int) -> dict[str, Any]:
    r = tariffs.loc[label]
    return {"period": str(r["period"] or "flat"), "hours": "" if pd.isna(r["hours"]) else str(r["hours"]),
            "effective_from": iso_utc(_as_ts(r["effective_from"])),
            "price_cny_per_kwh": float(r["price_cny_per_kwh"])}


def evaluate_overcharging(frames: Frames, facts: Facts, now: datetime, t: BillThresholds
                          ) -> list[Finding]:
    """One finding per bill whose unit price exceeds the cap by more than the tolerance."""
    bills = _bills_in_window(facts, now, t)
    if bills.empty:
        return []
    mt = _metering(bills, frames.get("energy_readings"), t)
    prices, periods, row_ids = _interval_prices(mt.bill, mt.start_ns, bills, facts, t.tariff_timezone)
    nb = len(bills)
    b = mt.bill
    w = mt.energy.kwh
    priced = ~np.isnan(prices)
    mixed = priced & mt.energy.measured  # the mix: measured intervals only (their timing is known)
    is_tou = priced & (periods != "flat")
    mix_kwh = np.bincount(b[mixed], w[mixed], nb)
    cost = np.bincount(b[mixed], (w * np.nan_to_num(prices))[mixed], nb)
    hours = mt.hours
    priced_h = np.bincount(b[priced], hours[priced], nb)
    mean_price = np.bincount(b[priced], (prices * hours)[priced], nb) / np.where(priced_h > 0, priced_h, 1)
    max_price = pd.Series(prices[priced]).groupby(b[priced]).max().reindex(range(nb)).to_numpy()
    tou = np.bincount(b[is_tou], minlength=nb) > 0
    billed = bills["billed_kwh"].astype(float).to_numpy()
    amount = bills["amount_cny"].astype(float).to_numpy()
    coverage = mt.coverage
    # A time-of-use mix from a part of the period is biased (a night is all valley): without
    # enough measured hours the cap is the highest period price, so nothing is flagged on a guess.
    use_mix = (mix_kwh > 0) & (~tou | (coverage >= t.min_coverage))
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = np.where(use_mix, cost / mix_kwh, np.where(tou, max_price, mean_price))
        price = np.where(billed > 0, amount / billed, np.nan)
    allowed = cap * (1 + t.loss_share)
    hit = (priced_h > 0) & (billed > 0) & (price > allowed * (1 + t.tolerance))
    out: list[Finding] = []
    bounds = np.searchsorted(b, np.arange(nb + 1))  # intervals are grouped by bill, in order
    flagged = np.flatnonzero(hit)
    if len(flagged) == 0:
        return out
    site_rc = facts.sites.drop_duplicates("site_id").set_index("site_id")[
        ["region", "customer_class"]].to_dict("index")
    tariff_rows = {int(label): _tariff_row(facts.tariffs, int(label)) for label in facts.tariffs.index}
    records = bills.iloc[flagged].to_dict("records")
    for i, bill in zip(flagged, records, strict=True):
        span = np.arange(bounds[i], bounds[i + 1])
        rows = span[mixed[span]]
        mix: dict[str, float] = {}
        for period in sorted(set(periods[rows])):
            mix[period] = round(float(w[rows][periods[rows] == period].sum()), 3)
        priced_rows = span[priced[span]]
        used = [tariff_rows[int(label)] for label in np.unique(row_ids[priced_rows])]
        if use_mix[i]:
            basis = "metered energy mix" if tou[i] else "metered-energy-weighted catalogue price"
        else:
            basis = (f"highest period price (measured hours cover {coverage[i]:.0%} of the period)"
                     if tou[i] else "time-weighted catalogue price")
        excess = float((price[i] - allowed[i]) * billed[i])
        site = site_rc[bill["site_id"]]
        out.append(_bill_finding(
            "overcharging", bill, excess, t,
            f"{price[i]:.4f} CNY/kWh against a cap of {allowed[i]:.4f}; excess {excess:.2f} CNY",
            {
                "unit_price_cny_per_kwh": round(float(price[i]), 6), "cap_cny_per_kwh": round(float(cap[i]), 6),
                "loss_share": t.loss_share, "allowed_cny_per_kwh": round(float(allowed[i]), 6),
                "tolerance": t.tolerance, "billed_kwh": float(billed[i]), "amount_cny": float(amount[i]),
                "excess_cny": round(excess, 2), "cap_basis": basis, "time_of_use": bool(tou[i]),
                "metered_kwh": round(float(mt.metered_kwh[i]), 3), "coverage": round(float(coverage[i]), 4),
                "energy_mix_kwh": mix, "tariff_rows": used,
                "region": site["region"], "customer_class": site["customer_class"],
            }))
    return out


def _per_meter(mine: pd.DataFrame | None, site_id: str, start_ns: np.ndarray, end_ns: np.ndarray,
               t: BillThresholds) -> tuple[dict[str, float], int]:
    """One bill's counted kWh per meter, and the resets (counter going down) within its period;
    ``mine``: the readings of its site."""
    if mine is None or mine.empty:
        return {}, 0
    mine = mine.dropna(subset=["energy_kwh"])
    by_meter: dict[str, float] = {}
    resets = 0
    lo, hi = start_ns.min(), end_ns.max()
    for meter, g in mine.groupby("meter_id", sort=True):
        e = interval_energy(g, np.full(len(start_ns), site_id, dtype=object), start_ns, end_ns,
                            max_gap_s=t.max_reading_gap)
        by_meter[str(meter)] = round(float(e.kwh.sum()), 3)
        g = g.assign(_t=pd.to_datetime(g["time"], utc=True).dt.as_unit("ns").astype("int64")).sort_values("_t")
        down = np.diff(g["energy_kwh"].to_numpy(dtype=float)) < 0
        t0, t1 = g["_t"].to_numpy()[:-1], g["_t"].to_numpy()[1:]
        resets += int((down & (t1 > lo) & (t0 < hi)).sum())
    return by_meter, resets


def evaluate_overbilling(frames: Frames, facts: Facts, now: datetime, t: BillThresholds
                         ) -> list[Finding]:
    """One finding per bill whose billed kWh exceed the metered kWh by more than the tolerance.

    Metered kWh are what the counters counted over the period.  Time whose energy is in no
    count (no meter reporting, a gap, a reset) is allowed for at the bill's highest
    measured hourly rate, so a bill is never flagged for energy the meters could not see.
    """
    bills = _bills_in_window(facts, now, t)
    if bills.empty:
        return []
    readings = frames.get("energy_readings")
    mt = _metering(bills, readings, t)
    nb = len(bills)
    b = mt.bill
    hours = mt.hours
    measured = mt.energy.measured & (hours > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(measured, mt.energy.kwh / np.where(hours > 0, hours, 1), 0.0)
    peak_rate = pd.Series(rate[measured]).groupby(b[measured]).max().reindex(range(nb)).fillna(0.0).to_numpy()
    allowance = mt.unmetered_h * peak_rate
    metered = mt.metered_kwh
    billed = bills["billed_kwh"].astype(float).to_numpy()
    amount = bills["amount_cny"].astype(float).to_numpy()
    coverage = mt.coverage
    # Too little meter data to judge: never flag on a gap.
    hit = (coverage >= t.min_coverage) & (billed > (metered + allowance) * (1 + t.overbilling_tolerance))
    out: list[Finding] = []
    bounds = np.searchsorted(b, np.arange(nb + 1))
    flagged = np.flatnonzero(hit)
    # The flagged bills' sites' readings, split by site in one pass (a month of readings of
    # 10 000 sites scanned once per flagged bill was most of the rule's time).
    by_site: dict[str, pd.DataFrame] = {}
    if len(flagged) and readings is not None and not readings.empty:
        wanted = readings["site_id"].isin(set(bills["site_id"].iloc[flagged])).to_numpy()
        by_site = {str(k): g for k, g in readings[wanted].groupby("site_id", sort=False)}
    for i, bill in zip(flagged, bills.iloc[flagged].to_dict("records"), strict=True):
        price = float(amount[i] / billed[i]) if billed[i] > 0 else 0.0
        excess_kwh = float(billed[i] - metered[i] - allowance[i])
        excess = excess_kwh * price
        span = slice(bounds[i], bounds[i + 1])
        per_meter, resets = _per_meter(by_site.get(str(bill["site_id"])), bill["site_id"],
                                       mt.start_ns[span], mt.end_ns[span], t)
        out.append(_bill_finding(
            "overbilling", bill, excess, t,
            f"{billed[i]:.1f} kWh billed, {metered[i]:.1f} kWh metered; excess {excess:.2f} CNY",
            {
                "billed_kwh": float(billed[i]), "metered_kwh": round(float(metered[i]), 3),
                "metered_kwh_by_meter": per_meter, "meter_resets": resets,
                "coverage": round(float(coverage[i]), 4), "unmetered_hours": round(float(mt.unmetered_h[i]), 3),
                "unmetered_allowance_kwh": round(float(allowance[i]), 3),
                "tolerance": t.overbilling_tolerance,
                "excess_kwh": round(excess_kwh, 3), "unit_price_cny_per_kwh": round(price, 6),
                "amount_cny": float(amount[i]), "excess_cny": round(excess, 2),
            }))
    return out


def _bill_finding(kind: str, bill: dict[str, Any], excess: float, t: BillThresholds, what: str,
                  evidence: dict[str, Any]) -> Finding:
    """A finding on one bill: its period as the window, its ids first in the evidence."""
    return Finding(
        kind=kind, rule=kind, site_id=bill["site_id"], severity=_severity(excess, t),
        window_start=_as_ts(bill["period_start"]).to_pydatetime(),
        window_end=_as_ts(bill["period_end"]).to_pydatetime(),
        summary=f"bill {bill['bill_id']} from {bill['supplier_id']}: {what}",
        evidence={"bill_id": bill["bill_id"], "supplier_id": bill["supplier_id"],
                  "supplier_name": _text(bill.get("supplier_name")), **evidence},
        bill_id=bill["bill_id"], supplier_id=bill["supplier_id"],
    )


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


OVERCHARGING = Rule(
    name="overcharging", kinds=("overcharging",), thresholds=BillThresholds,
    evaluate=evaluate_overcharging, needs=("energy_readings",), scoped_by_window=True,
    description="bill unit price above the regulated cap (ToU cap from the metered energy mix)",
)
OVERBILLING = Rule(
    name="overbilling", kinds=("overbilling",), thresholds=BillThresholds,
    evaluate=evaluate_overbilling, needs=("energy_readings",), scoped_by_window=True,
    description="billed kWh above the metered energy of the bill period",
)

