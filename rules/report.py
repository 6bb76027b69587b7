"""Report tables: overcharging per supplier and bill (the regulator's), reservations per site,
feeder and substation (the grid company's).  Pure functions from flags/facts to frames;
``exports.tables`` writes them.

The overcharging report is meant to be handed over: it names both parties (the
landlord's unified social credit code, address and contact; the site's name and
address), carries the review trail (decision, who, when, note), and explains how
the cap is made.  Its months are local months in ``[time] zone``: a bill for
October issued ``2026-10-01 .. 2026-11-01`` (local) starts in October, even
though 2026-10-01 00:00 in Shanghai is still 30 September in UTC.  A bill's
``period_end`` is exclusive.  Headers, sheet names and labels are English or
simplified Chinese (domain ``reports`` of ``core.i18n``); the English CSV keeps
the column keys (``billed_kwh``) so scripts can read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.i18n import gettext_for, normalise_lang
from core.states import FlagStatus
from core.timeutil import DEFAULT_ZONE, local_month

__all__ = [
    "BILL_COLUMNS",
    "CAP_COLUMNS",
    "CAP_STEPS",
    "EVIDENCE_COLUMNS",
    "PARTIAL_BASIS",
    "REVIEW_COLUMNS",
    "SHEETS",
    "TOTAL_COLUMNS",
    "VALUE_LABELS",
    "OverchargingReport",
    "month_bounds",
    "overcharging_report",
    "overcharging_table",
    "reservations_table",
]

_BILL_KINDS = ("overcharging", "overbilling")

# key -> English label (the msgid of its translation).  Units follow the keys' suffixes
# (exports.tables); ``_FORMATS`` names the units of keys that carry none.
BILL_COLUMNS: dict[str, str] = {
    "row": "Row",
    "flag_id": "Flag",
    "bill_id": "Bill",
    "kind": "Finding",
    "status": "Status",
    "severity": "Severity",
    "site_id": "Site",
    "site_name": "Site name",
    "site_address": "Site address",
    "supplier_id": "Supplier",
    "supplier_name": "Supplier name",
    "supplier_credit_code": "Unified social credit code",
    "supplier_address": "Supplier address",
    "supplier_contact": "Supplier contact",
    "region": "Tariff region",
    "customer_class": "Customer class",
    "period_start": "Period start",
    "period_end": "Period end (exclusive)",
    "billed_kwh": "Billed energy (kWh)",
    "metered_kwh": "Metered energy (kWh)",
    "amount_cny": "Amount billed (CNY)",
    "unit_price_cny_per_kwh": "Unit price (CNY/kWh)",
    "cap_cny_per_kwh": "Regulated cap (CNY/kWh)",
    "loss_share": "Allowed loss share",
    "allowed_cny_per_kwh": "Allowed price (CNY/kWh)",
    "excess_kwh": "Excess energy (kWh)",
    "excess_cny": "Excess amount (CNY)",
    "cap_basis": "Basis of the cap",
    "coverage": "Meter data coverage",
    "meter_resets": "Meter resets",
    "bills": "Bills",
    "review_decision": "Review decision",
    "reviewed_by": "Reviewed by",
    "reviewed_at": "Reviewed at",
    "review_note": "Review note",
    "summary": "Summary",
}
TOTAL_COLUMNS: dict[str, str] = {k: BILL_COLUMNS[k] for k in (
    "row", "supplier_id", "supplier_name", "supplier_credit_code", "supplier_address",
    "supplier_contact", "kind", "bills", "billed_kwh", "amount_cny", "excess_cny")}
EVIDENCE_COLUMNS: dict[str, str] = {
    "flag_id": "Flag", "bill_id": "Bill", "kind": "Finding", "item": "Item",
    "tou_period": "Time-of-use period", "hours": "Hours (local)",
    "effective_from": "Effective from", "price_cny_per_kwh": "Price (CNY/kWh)",
    "meter_id": "Meter", "energy_kwh": "Energy (kWh)", "energy_share": "Share of metered energy",
}
REVIEW_COLUMNS: dict[str, str] = {
    "flag_id": "Flag", "bill_id": "Bill", "kind": "Finding", "decision": "Review decision",
    "reviewed_by": "Reviewed by", "reviewed_at": "Reviewed at", "note": "Review note",
}
CAP_COLUMNS: dict[str, str] = {"step": "Step", "explanation": "How the cap is made"}
SHEETS = {"bills": "Flagged bills", "totals": "Totals per supplier",
          "evidence": "Evidence per bill", "reviews": "Review trail", "cap": "How the cap is made"}
_FORMATS = {"loss_share": "share", "coverage": "share", "flag_id": "int", "bills": "int",
            "meter_resets": "int", "step": "int"}

# Cell values that are labels (English source = the value itself, as stored).
VALUE_LABELS = (
    "bill", "supplier_total", "total",
    "overcharging", "overbilling",
    "open", "confirmed", "dismissed", "resolved",
    "info", "warning", "critical",
    "tariff row", "energy mix", "metered by meter",
    "flat", "peak", "valley", "sharp",
    "metered energy mix", "metered-energy-weighted catalogue price",
    "time-weighted catalogue price",
)
_LABELLED = ("row", "kind", "status", "severity", "review_decision", "decision", "item",
             "tou_period", "cap_basis")
_PARTIAL_BASIS = re.compile(r"^highest period price \(meter data covers (.+) of the period\)$")
PARTIAL_BASIS = "highest period price (meter data covers {coverage} of the period)"

CAP_STEPS = (
    ('The report lists the transfer-power bills flagged by the rules whose period starts in '
     '{period} (a local month in {zone}).'),
    ('Times are local time in {zone}. A period runs from its start up to, not including, its'
     ' end: 2026-10-01 00:00 .. 2026-11-01 00:00 is the whole of October.'),
    ("The cap is the regulated catalogue price (tariffs.csv) of the site's tariff region and"
     ' customer class, in force in each hour of the bill period.'),
    ("Flat tariff: each hour's price weighted by the site's metered energy in that hour."),
    ("Time-of-use tariff: each hour's metered energy is priced at the period (sharp, peak, "
     'flat, valley) in force at that local hour; the cap is the total cost divided by the '
     'metered energy (the energy mix, listed per bill in the evidence sheet).'),
    ('When the meters cover too little of the period for a fair mix, the cap of a '
     'time-of-use tariff is its highest period price, so that nothing is flagged on a guess.'),
    ('Allowed price = cap x (1 + allowed loss share). A bill is flagged as overcharging when'
     ' its unit price (amount / billed energy) exceeds the allowed price by more than the '
     'tolerance; excess amount = (unit price - allowed price) x billed energy.'),
    ('A bill is flagged as over-billing when its billed energy exceeds the metered energy by'
     ' more than the tolerance; excess amount = (billed - metered energy) x unit price.'),
    ('Totals leave out dismissed flags; the review trail lists every decision on a flag.'),
)


def month_bounds(period: str, zone: str = DEFAULT_ZONE) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``"2026-11"`` -> the UTC bounds ``[start, end)`` of that local month (ValueError if not)."""
    start, end = local_month(period, zone)
    return pd.Timestamp(start), pd.Timestamp(end)


def _translator(lang: str) -> Callable[[Any], Any]:
    _ = gettext_for(normalise_lang(lang), "reports")

    def label(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        m = _PARTIAL_BASIS.match(value)
        if m:
            return _(PARTIAL_BASIS).format(coverage=m.group(1))
        return _(value) if value in VALUE_LABELS else value
    return label


def _bill_rows(flags: Sequence[dict[str, Any]], start: pd.Timestamp, end: pd.Timestamp,
               parties: Mapping[str, Mapping[str, Any]],
               reviews: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for f in flags:
        if f["kind"] not in _BILL_KINDS:
            continue
        ws = pd.Timestamp(f["window_start"])
        ws = ws.tz_localize("UTC") if ws.tzinfo is None else ws
        if not (start <= ws < end):
            continue
        ev = f.get("evidence") or {}
        party = dict(parties.get(f.get("bill_id") or "", {}))
        last = (reviews.get(f["id"]) or [{}])[-1] or {}
        row = {k: ev.get(k) for k in BILL_COLUMNS}
        row.update({
            "row": "bill", "flag_id": f["id"], "bill_id": f.get("bill_id"), "kind": f["kind"],
            "status": f["status"], "severity": f["severity"], "site_id": f["site_id"],
            "supplier_id": f.get("supplier_id"),
            "supplier_name": party.get("supplier_name") or ev.get("supplier_name"),
            "site_name": party.get("site_name"), "site_address": party.get("site_address"),
            "supplier_credit_code": party.get("supplier_credit_code"),
            "supplier_address": party.get("supplier_address"),
            "supplier_contact": party.get("supplier_contact"),
            "period_start": ws, "period_end": pd.Timestamp(f["window_end"]),
            "review_decision": last.get("decision"), "reviewed_by": last.get("reviewed_by"),
            "reviewed_at": last.get("reviewed_at"), "review_note": last.get("note"),
            "summary": f["summary"], "bills": None,
        })
        rows.append(row)
    return sorted(rows, key=lambda r: (str(r["supplier_id"]), str(r["bill_id"]), r["kind"]))


def _totals(bills: pd.DataFrame) -> pd.DataFrame:
    counted = bills[bills["status"] != FlagStatus.DISMISSED]
    if counted.empty:
        return pd.DataFrame(columns=list(TOTAL_COLUMNS))
    firsts = {k: (k, "first") for k in ("supplier_name", "supplier_credit_code",
                                         "supplier_address", "supplier_contact")}
    sums = {k: (k, lambda s: s.astype(float).sum(min_count=1))
            for k in ("billed_kwh", "amount_cny", "excess_cny")}
    per = (counted.groupby(["supplier_id", "kind"], as_index=False)
           .agg(bills=("bill_id", "nunique"), **sums, **firsts))
    per["row"] = "supplier_total"
    grand = counted.groupby("kind", as_index=False).agg(bills=("bill_id", "nunique"), **sums)
    grand["row"] = "total"
    out = pd.concat([per, grand], ignore_index=True)
    out["excess_cny"] = out["excess_cny"].astype(float).round(2)
    out["bills"] = out["bills"].astype("Int64")
    return out.reindex(columns=list(TOTAL_COLUMNS))


def overcharging_table(flags: Sequence[dict[str, Any]], period: str, *, zone: str = DEFAULT_ZONE,
                       parties: Mapping[str, Mapping[str, Any]] | None = None,
                       reviews: Mapping[int, Sequence[Mapping[str, Any]]] | None = None
                       ) -> pd.DataFrame:
    """One row per flagged bill starting in the local month ``period``, then ``supplier_total``
    rows per supplier and kind and ``total`` rows per kind (the CSV report, keys as values).

    Dismissed flags are listed (with their status) but left out of the totals.
    """
    return overcharging_report(flags, period, zone=zone, parties=parties,
                               reviews=reviews).combined()


@dataclass(frozen=True, slots=True)
class OverchargingReport:
    """The overcharging report's tables (keys as columns, values as stored) and their labels."""

    bills: pd.DataFrame
    totals: pd.DataFrame
    evidence: pd.DataFrame
    reviews: pd.DataFrame
    cap: pd.DataFrame
    period: str
    zone: str

    def combined(self) -> pd.DataFrame:
        """Bills (``row = bill``) then the totals, in the columns of ``BILL_COLUMNS``."""
        if self.bills.empty:
            return pd.DataFrame(columns=list(BILL_COLUMNS))
        out = pd.concat([self.bills.assign(row="bill"), self.totals], ignore_index=True)
        out = out.reindex(columns=list(BILL_COLUMNS))
        out["flag_id"] = out["flag_id"].astype("Int64")
        out["bills"] = out["bills"].astype("Int64")
        return out

    def sheets(self, lang: str = "en") -> list[Any]:
        """The ``exports.tables.Sheet`` list in ``lang``: translated headers, names and labels."""
        from exports.tables import Sheet

        _ = gettext_for(normalise_lang(lang), "reports")
        label = _translator(lang)
        out = []
        for key, frame, columns in (("bills", self.bills, BILL_COLUMNS),
                                    ("totals", self.totals, TOTAL_COLUMNS),
                                    ("evidence", self.evidence, EVIDENCE_COLUMNS),
                                    ("reviews", self.reviews, REVIEW_COLUMNS),
                                    ("cap", self.cap, CAP_COLUMNS)):
            shown = frame.copy()
            for col in _LABELLED:
                if col in shown.columns:
                    shown[col] = shown[col].astype(object).map(label)
            if key == "cap":
                shown["explanation"] = [_(text).format(period=self.period, zone=self.zone)
                                        for text in frame["explanation"]]
            out.append(Sheet(_(SHEETS[key]), shown, {k: _(v) for k, v in columns.items()},
                             _FORMATS))
        return out

    def csv_sheet(self, lang: str = "en") -> Any:
        """The one table of the CSV report: bills then totals; English keeps the column keys."""
        from exports.tables import Sheet

        lang = normalise_lang(lang)
        _ = gettext_for(lang, "reports")
        label = _translator(lang)
        frame = self.combined()
        for col in _LABELLED:
            if col in frame.columns:
                frame[col] = frame[col].astype(object).map(label)
        labels = {} if lang == "en" else {k: _(v) for k, v in BILL_COLUMNS.items()}
        return Sheet(_(SHEETS["bills"]), frame, labels, _FORMATS)


def _evidence_rows(bills: pd.DataFrame, flags_by_id: Mapping[int, dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    rows = []
    for b in bills.to_dict("records"):
        ev = flags_by_id[b["flag_id"]].get("evidence") or {}
        base = {"flag_id": b["flag_id"], "bill_id": b["bill_id"], "kind": b["kind"]}
        for t in ev.get("tariff_rows") or []:
            rows.append({**base, "item": "tariff row", "tou_period": t.get("period"),
                         "hours": t.get("hours") or None,
                         "effective_from": pd.Timestamp(t["effective_from"])
                         if t.get("effective_from") else None,
                         "price_cny_per_kwh": t.get("price_cny_per_kwh")})
        mix = ev.get("energy_mix_kwh") or {}
        total = sum(float(v) for v in mix.values() if v is not None)
        for period, kwh in mix.items():
            rows.append({**base, "item": "energy mix", "tou_period": period, "energy_kwh": kwh,
                         "energy_share": (float(kwh) / total) if total > 0 and kwh is not None
                         else None})
        for meter, kwh in (ev.get("metered_kwh_by_meter") or {}).items():
            rows.append({**base, "item": "metered by meter", "meter_id": meter, "energy_kwh": kwh})
    return rows


def overcharging_report(flags: Sequence[dict[str, Any]], period: str, *,
                        zone: str = DEFAULT_ZONE,
                        parties: Mapping[str, Mapping[str, Any]] | None = None,
                        reviews: Mapping[int, Sequence[Mapping[str, Any]]] | None = None
                        ) -> OverchargingReport:
    """The overcharging report of the local month ``period``: flagged bills with both parties
    and the latest review, totals per supplier, evidence rows, the review trail, the method."""
    start, end = month_bounds(period, zone)
    reviews = reviews or {}
    rows = _bill_rows(flags, start, end, parties or {}, reviews)
    bills = pd.DataFrame(rows).reindex(columns=list(BILL_COLUMNS)) if rows \
        else pd.DataFrame(columns=list(BILL_COLUMNS))
    bills = bills.drop(columns=["bills"]).reindex(columns=[k for k in BILL_COLUMNS if k != "bills"])
    if rows:
        bills["flag_id"] = bills["flag_id"].astype("Int64")
    totals = _totals(bills) if rows else pd.DataFrame(columns=list(TOTAL_COLUMNS))
    by_id = {f["id"]: f for f in flags}
    evidence = pd.DataFrame(_evidence_rows(bills, by_id)).reindex(columns=list(EVIDENCE_COLUMNS))
    trail = [{"flag_id": b["flag_id"], "bill_id": b["bill_id"], "kind": b["kind"], **r}
             for b in bills.to_dict("records") for r in reviews.get(int(b["flag_id"]), [])]
    review_frame = pd.DataFrame(trail).reindex(columns=list(REVIEW_COLUMNS))
    cap = pd.DataFrame({"step": range(1, len(CAP_STEPS) + 1), "explanation": list(CAP_STEPS)})
    return OverchargingReport(bills.drop(columns=["row"]), totals, evidence, review_frame, cap,
                              period, zone)


_RESERVATION_COLUMNS = [
    "level", "site_id", "name", "county", "lat", "lon", "feeder", "substation", "feeders", "state",
    "status", "rated_kw", "sites", "declared_kw", "reserved_kw", "reserved_pct", "peak_kw",
    "coincident_peak_kw", "peak_at", "sum_site_peaks_kw", "headroom_kw", "utilisation_pct", "window_start",
    "window_end"]


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
