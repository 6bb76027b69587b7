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

from core.settings import Duration
from core.tariff import parse_hours  # one parser for import and rule (re-exported)
from rules.finding import Finding, Severity, iso_utc
from rules.rule import Facts, Frames, Rule, Thresholds

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


def hourly_increments(energy: pd.DataFrame) -> pd.DataFrame:
    """Per site, meter and hour: the positive increase of the cumulative counter since the
    previous hour with data (``kwh``), and whether the counter went down (``reset``)."""
    if energy is None or energy.empty:
        return pd.DataFrame({"site_id": pd.Series(dtype=object), "meter_id": pd.Series(dtype=object),
                             "time": pd.Series(dtype="datetime64[ns, UTC]"), "kwh": pd.Series(dtype=float),
                             "reset": pd.Series(dtype=bool)})
    df = energy[["time", "site_id", "meter_id", "energy_kwh"]].dropna(subset=["energy_kwh"])
    df = df.assign(time=pd.to_datetime(df["time"], utc=True).dt.as_unit("ns"))
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
    end = pd.to_datetime(bills["period_end"], utc=True)
    keep = (end <= _as_ts(now)) & (end > _as_ts(now) - pd.Timedelta(seconds=t.window))
    return bills[keep.to_numpy()].reset_index(drop=True)


def _bill_hours(bills: pd.DataFrame, increments: pd.DataFrame) -> pd.DataFrame:
    """One row per bill and hour, from the hour before its period to its end: ``bill``
    (position), ``time``, ``inside`` (within the period) and ``kwh``, the site's metered
    increase in that hour (NaN where the meters sent nothing)."""
    start = pd.to_datetime(bills["period_start"], utc=True).dt.floor("h").dt.as_unit("ns")
    end = pd.to_datetime(bills["period_end"], utc=True).dt.as_unit("ns")
    hours = np.ceil((end - start) / HOUR).to_numpy(dtype=float)
    n = np.maximum(np.nan_to_num(hours), 0).astype(np.int64) + 1
    bill = np.repeat(np.arange(len(bills)), n)
    offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    time = np.repeat(start.dt.tz_localize(None).to_numpy(), n) + (offset - 1) * np.timedelta64(1, "h")
    h = pd.DataFrame({"bill": bill, "site_id": np.repeat(bills["site_id"].to_numpy(), n),
                      "time": pd.DatetimeIndex(time).tz_localize("UTC").as_unit("ns"), "inside": offset > 0})
    h["kwh"] = _site_hour_kwh(h, bills, n, increments)
    return h


def _site_hour_kwh(h: pd.DataFrame, bills: pd.DataFrame, n: np.ndarray, increments: pd.DataFrame
                   ) -> np.ndarray:
    """The sites' metered kWh in each bill-hour of ``h`` (summed over meters; NaN where none).

    A left join of ``h`` on (site, hour), done on one integer key per (site, hour): a join
    on the string and time columns cost more than the rest of the rule at 10k sites.
    """
    out = np.full(len(h), np.nan)
    if not len(increments) or not len(h):
        return out
    sites = pd.Index(pd.unique(bills["site_id"].to_numpy()))
    t_inc = increments["time"].astype("int64").to_numpy()
    code_inc = sites.get_indexer(increments["site_id"].to_numpy())
    keep = (code_inc >= 0) & (t_inc % HOUR.value == 0)  # only whole hours can meet a bill-hour
    if not keep.any():
        return out
    hour_bits = np.int64(1 << 32)
    key_inc = code_inc[keep].astype(np.int64) * hour_bits + t_inc[keep] // HOUR.value
    per_key = pd.Series(increments["kwh"].to_numpy(dtype=float)[keep]).groupby(key_inc, sort=False).sum()
    code_h = np.repeat(sites.get_indexer(bills["site_id"].to_numpy()).astype(np.int64), n)
    key_h = code_h * hour_bits + h["time"].astype("int64").to_numpy() // HOUR.value
    pos = per_key.index.get_indexer(key_h)
    found = pos >= 0
    out[found] = per_key.to_numpy()[pos[found]]
    return out


def _coverage(h: pd.DataFrame, bills: pd.DataFrame) -> np.ndarray:
    """Per bill, the share of its period (from the hour before) that the meter data spans."""
    nb = len(bills)
    b = h["bill"].to_numpy()
    has = ~np.isnan(h["kwh"].to_numpy(dtype=float))
    t_ns = h["time"].astype("int64").to_numpy()
    first = pd.Series(t_ns[has]).groupby(b[has]).min().reindex(range(nb)).to_numpy(dtype=float)
    last = pd.Series(t_ns[has]).groupby(b[has]).max().reindex(range(nb)).to_numpy(dtype=float)
    start = pd.to_datetime(bills["period_start"], utc=True).dt.floor("h").dt.as_unit("ns").astype("int64")
    end = pd.to_datetime(bills["period_end"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    hour_ns = HOUR.value
    lead = start.to_numpy() - hour_ns
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.minimum(1.0, (last + hour_ns - np.maximum(first, lead)) / (end - lead))
    return np.nan_to_num(coverage)


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


def _hour_prices(h: pd.DataFrame, bills: pd.DataFrame, facts: Facts, tz: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tariff price, period and row of every bill-hour, from the site's region and class."""
    prices = np.full(len(h), np.nan)
    periods = np.full(len(h), "", dtype=object)
    row_ids = np.full(len(h), -1, dtype=np.int64)
    if facts.sites.empty or facts.tariffs.empty or h.empty:
        return prices, periods, row_ids
    site_rc = facts.sites.drop_duplicates("site_id").set_index("site_id")
    region = bills["site_id"].map(site_rc["region"]).to_numpy()
    klass = bills["site_id"].map(site_rc["customer_class"]).to_numpy()
    bill = h["bill"].to_numpy()
    t_ns = h["time"].astype("int64").to_numpy()
    local_hours = h["time"].dt.tz_convert(tz).dt.hour.to_numpy()
    for (r, c), group in facts.tariffs.groupby(["region", "customer_class"], sort=False):
        sel = np.flatnonzero(((region == r) & (klass == c))[bill])
        if len(sel) == 0:
            continue
        p, per, rid = _tariff_prices(group, t_ns[sel], local_hours[sel])
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
    h = _bill_hours(bills, hourly_increments(frames.get("energy_hourly")))
    prices, periods, row_ids = _hour_prices(h, bills, facts, t.tariff_timezone)
    nb = len(bills)
    b = h["bill"].to_numpy()
    w = np.nan_to_num(h["kwh"].to_numpy(dtype=float))
    priced = h["inside"].to_numpy() & ~np.isnan(prices)
    is_tou = priced & (periods != "flat")
    metered = np.bincount(b[priced], w[priced], nb)
    cost = np.bincount(b[priced], (w * np.nan_to_num(prices))[priced], nb)
    n_priced = np.bincount(b[priced], minlength=nb)
    mean_price = np.bincount(b[priced], prices[priced], nb) / np.maximum(n_priced, 1)
    max_price = pd.Series(prices[priced]).groupby(b[priced]).max().reindex(range(nb)).to_numpy()
    tou = np.bincount(b[is_tou], minlength=nb) > 0
    billed = bills["billed_kwh"].astype(float).to_numpy()
    amount = bills["amount_cny"].astype(float).to_numpy()
    coverage = _coverage(h, bills)
    # A time-of-use mix from a part of the period is biased (a night is all valley): without
    # enough meter data the cap is the highest period price, so nothing is flagged on a guess.
    use_mix = (metered > 0) & (~tou | (coverage >= t.min_coverage))
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = np.where(use_mix, cost / metered, np.where(tou, max_price, mean_price))
        price = np.where(billed > 0, amount / billed, np.nan)
    allowed = cap * (1 + t.loss_share)
    hit = (n_priced > 0) & (billed > 0) & (price > allowed * (1 + t.tolerance))
    out: list[Finding] = []
    bounds = np.searchsorted(b, np.arange(nb + 1))  # bill-hours are grouped by bill, in order
    flagged = np.flatnonzero(hit)
    if len(flagged) == 0:
        return out
    site_rc = facts.sites.drop_duplicates("site_id").set_index("site_id")[
        ["region", "customer_class"]].to_dict("index")
    tariff_rows = {int(label): _tariff_row(facts.tariffs, int(label)) for label in facts.tariffs.index}
    records = bills.iloc[flagged].to_dict("records")
    for i, bill in zip(flagged, records, strict=True):
        span = np.arange(bounds[i], bounds[i + 1])
        rows = span[priced[span]]
        mix: dict[str, float] = {}
        for period in sorted(set(periods[rows])):
            mix[period] = round(float(w[rows][periods[rows] == period].sum()), 3)
        used = [tariff_rows[int(label)] for label in np.unique(row_ids[rows])]
        if use_mix[i]:
            basis = "metered energy mix" if tou[i] else "metered-energy-weighted catalogue price"
        else:
            basis = (f"highest period price (meter data covers {coverage[i]:.0%} of the period)"
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
                "metered_kwh": round(float(metered[i]), 3), "coverage": round(float(coverage[i]), 4),
                "energy_mix_kwh": mix, "tariff_rows": used,
                "region": site["region"], "customer_class": site["customer_class"],
            }))
    return out


def evaluate_overbilling(frames: Frames, facts: Facts, now: datetime, t: BillThresholds
                         ) -> list[Finding]:
    """One finding per bill whose billed kWh exceed the metered kWh by more than the tolerance."""
    bills = _bills_in_window(facts, now, t)
    if bills.empty:
        return []
    increments = hourly_increments(frames.get("energy_hourly"))
    h = _bill_hours(bills, increments)
    nb = len(bills)
    b = h["bill"].to_numpy()
    kwh = h["kwh"].to_numpy(dtype=float)
    inside = h["inside"].to_numpy()
    metered = np.bincount(b[inside], np.nan_to_num(kwh)[inside], nb)
    coverage = _coverage(h, bills)
    start = pd.to_datetime(bills["period_start"], utc=True).dt.floor("h").dt.as_unit("ns")
    billed = bills["billed_kwh"].astype(float).to_numpy()
    amount = bills["amount_cny"].astype(float).to_numpy()
    # Too little meter data to judge: never flag on a gap.
    hit = (coverage >= t.min_coverage) & (billed > metered * (1 + t.overbilling_tolerance))
    out: list[Finding] = []
    by_site = {site: g for site, g in increments.groupby("site_id", sort=False)} if hit.any() else {}
    flagged = np.flatnonzero(hit)
    for i, bill in zip(flagged, bills.iloc[flagged].to_dict("records"), strict=True):
        price = amount[i] / billed[i] if billed[i] > 0 else 0.0
        excess_kwh = float(billed[i] - metered[i])
        excess = excess_kwh * price
        mine = by_site.get(bill["site_id"], increments.iloc[0:0])
        mine = mine[(mine["time"] >= start.iloc[i])
                    & (mine["time"] < _as_ts(bill["period_end"]))]
        per_meter = {str(m): round(float(v), 3) for m, v in mine.groupby("meter_id")["kwh"].sum().items()}
        out.append(_bill_finding(
            "overbilling", bill, excess, t,
            f"{billed[i]:.1f} kWh billed, {metered[i]:.1f} kWh metered; excess {excess:.2f} CNY",
            {
                "billed_kwh": float(billed[i]), "metered_kwh": round(float(metered[i]), 3),
                "metered_kwh_by_meter": per_meter, "meter_resets": int(mine["reset"].sum()),
                "coverage": round(float(coverage[i]), 4), "tolerance": t.overbilling_tolerance,
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
    evaluate=evaluate_overcharging, needs=("energy_hourly",), scoped_by_window=True,
    description="bill unit price above the regulated cap (ToU cap from the metered energy mix)",
)
OVERBILLING = Rule(
    name="overbilling", kinds=("overbilling",), thresholds=BillThresholds,
    evaluate=evaluate_overbilling, needs=("energy_hourly",), scoped_by_window=True,
    description="billed kWh above the metered energy of the bill period",
)

