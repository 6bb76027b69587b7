"""docs/evidence.md's worked example, recomputed with the rule code from the page's own tables.

The readings, tariff and bill are read from the page; every figure it prints for each hour
and in both flags' evidence must be what the rules compute, to the decimals printed.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from rules.energy import bill_intervals, interval_energy
from rules.overcharging import BillThresholds, evaluate_overbilling, evaluate_overcharging, parse_hours
from tests.rules.helpers import facts, sites
from tests.support import ROOT

DOC = (ROOT / "docs" / "evidence.md").read_text(encoding="utf-8")
ZONE = ZoneInfo("Asia/Shanghai")


def table(heading: str) -> list[list[str]]:
    """The body rows of the first table after ``### heading``."""
    lines = DOC.split(f"### {heading}\n", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    assert len(block) > 2
    return block[2:]  # after the header and its rule


def example() -> tuple[pd.DataFrame, object, pd.Timestamp]:
    rows = table("Readings")
    readings = pd.DataFrame({
        "time": [pd.Timestamp(datetime.strptime(t, "%Y-%m-%d %H:%M").replace(tzinfo=ZONE)).tz_convert("UTC")
                 for t, _ in rows],
        "site_id": "S-EX", "meter_id": "M-EX", "energy_kwh": [float(v) for _, v in rows]})
    tariffs = pd.DataFrame([{"region": "urban", "customer_class": "commercial", "period": p, "hours": h,
                             "effective_from": pd.Timestamp("2026-01-01", tz=ZONE), "price_cny_per_kwh": float(x)}
                            for p, h, x in table("Tariff")])
    ((bill_id, supplier, period, billed, amount),) = table("Bill")
    first, last = (datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=ZONE) for d in period.split(" to "))
    bills = pd.DataFrame([{"bill_id": bill_id, "site_id": "S-EX", "supplier_id": supplier, "supplier_name": None,
                           "meter_id": "M-EX", "period_start": pd.Timestamp(first).tz_convert("UTC"),
                           "period_end": pd.Timestamp(last).tz_convert("UTC"),
                           "billed_kwh": float(billed), "amount_cny": float(amount)}])
    f = facts(sites=sites({"site_id": "S-EX", "region": "urban", "customer_class": "commercial"}),
              tariffs=tariffs, bills=bills)
    return readings, f, pd.Timestamp(last) + timedelta(days=3)


def _check(shown: str, actual: object) -> None:
    if re.fullmatch(r"-?\d+(\.\d+)?", shown):
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        assert float(actual) == pytest.approx(float(shown), abs=0.5 * 10 ** -decimals), (shown, actual)
    else:
        assert str(actual) == shown


def _evidence_rows(heading: str, finding) -> int:
    checked = 0
    for field, shown in table(heading):
        if field == "severity":
            _check(shown, finding.severity)
        else:
            value = finding.evidence
            for key in field.strip("`").split("."):
                value = value[key]
            _check(shown, value)
        checked += 1
    return checked


def test_each_hour_of_the_worked_example():
    readings, f, _ = example()
    _, a, b = bill_intervals(f.bills["period_start"], f.bills["period_end"], "Asia/Shanghai")
    e = interval_energy(readings, ["S-EX"] * len(a), a, b, max_gap_s=BillThresholds().max_reading_gap)
    rows = table("Each hour")
    assert len(rows) == len(a) == 24
    periods = {p: parse_hours(h) for p, h, _ in table("Tariff")}
    for i, (hour, kwh, measured, period) in enumerate(rows):
        start = pd.Timestamp(a[i], tz="UTC").tz_convert(ZONE)
        assert start.strftime("%H:%M") == hour
        _check(kwh, e.kwh[i])
        assert ("yes" if e.measured[i] else "no") == measured
        assert start.hour in periods[period]
    assert np.isclose(e.kwh.sum(), 170.0)  # the gap's 15 kWh are not placed


def test_both_flags_of_the_worked_example_carry_the_printed_figures():
    readings, f, now = example()
    frames = {"energy_readings": readings}
    (oc,) = evaluate_overcharging(frames, f, now, BillThresholds())
    (ob,) = evaluate_overbilling(frames, f, now, BillThresholds())
    assert _evidence_rows("The overcharging flag's evidence", oc) == 16
    assert _evidence_rows("The over-billing flag's evidence", ob) == 12
