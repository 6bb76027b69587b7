"""Overcharging and overbilling on hand-built bills, tariffs and meter frames."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from rules.energy import interval_energy
from rules.errors import ThresholdError
from rules.overcharging import (
    OVERCHARGING,
    BillThresholds,
    evaluate_overbilling,
    evaluate_overcharging,
    parse_hours,
)
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 12, 5, tzinfo=UTC)
START, END = "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"  # a one-day bill keeps numbers small


def energy(site: str, meter: str, values: list[float], start: str = "2026-11-01T00:00:00Z") -> pd.DataFrame:
    """Hourly cumulative readings on the hour from ``start``: values[k+1] - values[k] is hour k's energy."""
    times = pd.date_range(start, periods=len(values), freq="h")
    return pd.DataFrame({"time": times, "site_id": site, "meter_id": meter, "energy_kwh": values})


def bill(**kw) -> pd.DataFrame:
    row = {"bill_id": "B1", "site_id": "S1", "supplier_id": "LL1", "supplier_name": "Landlord One",
           "meter_id": None, "period_start": pd.Timestamp(START), "period_end": pd.Timestamp(END),
           "billed_kwh": 240.0, "amount_cny": 240.0}
    row.update(kw)
    return pd.DataFrame([row])


FLAT = pd.DataFrame([{"region": "SH", "customer_class": "commercial", "period": "flat", "hours": None,
                      "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": 0.80}])


def test_flat_tariff_overcharging_exact_numbers():
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(amount_cny=240.0))
    # 10 kWh per hour for 24 hours: 240 kWh metered.
    frames = {"energy_readings": energy("S1", "M1", [100.0 + 10 * i for i in range(25)])}
    found = evaluate_overcharging(frames, f, NOW, BillThresholds())
    assert len(found) == 1
    (x,) = found
    assert (x.kind, x.site_id, x.bill_id, x.supplier_id) == ("overcharging", "S1", "B1", "LL1")
    assert x.evidence["unit_price_cny_per_kwh"] == 1.0
    assert x.evidence["cap_cny_per_kwh"] == pytest.approx(0.8)
    assert x.evidence["excess_cny"] == pytest.approx(48.0)  # (1.00 - 0.80) * 240
    assert x.severity == "info"
    assert x.evidence["tariff_rows"][0]["price_cny_per_kwh"] == 0.8


def test_price_at_the_cap_or_within_tolerance_is_not_flagged():
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(amount_cny=0.8 * 1.01 * 240))
    assert evaluate_overcharging({}, f, NOW, BillThresholds()) == []


def test_loss_share_raises_the_cap_and_is_capped():
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(amount_cny=0.85 * 240))
    assert len(evaluate_overcharging({}, f, NOW, BillThresholds())) == 1
    assert evaluate_overcharging({}, f, NOW, BillThresholds(loss_share=0.08)) == []
    with pytest.raises(ThresholdError, match=r"rules\.overcharging"):
        OVERCHARGING.configure({"loss_share": 0.2})
    with pytest.raises(ThresholdError, match=r"rules\.overcharging\.tolrance"):
        OVERCHARGING.configure({"tolrance": 0.2})


def test_time_of_use_cap_is_the_sites_own_energy_mix():
    tou = pd.DataFrame([
        {"region": "SH", "customer_class": "commercial", "period": "peak", "hours": "8-20",
         "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": 1.20},
        {"region": "SH", "customer_class": "commercial", "period": "valley", "hours": "20-8",
         "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": 0.40},
    ])
    # 15 kWh in each of the 12 peak hours (180), 5 kWh in each of the 12 valley hours (60).
    per_hour = [15.0 if 8 <= h < 20 else 5.0 for h in range(24)]
    cumulative = [1000.0]
    for kwh in per_hour:
        cumulative.append(cumulative[-1] + kwh)
    frames = {"energy_readings": energy("S1", "M1", cumulative)}
    # cap = (180 * 1.2 + 60 * 0.4) / 240 = 1.0 CNY/kWh; bill at 1.10 is 24 CNY too much.
    f = facts(sites=sites({"site_id": "S1"}), tariffs=tou, bills=bill(amount_cny=264.0))
    utc = BillThresholds(tariff_timezone="UTC")
    (x,) = evaluate_overcharging(frames, f, NOW, utc)
    assert x.evidence["cap_cny_per_kwh"] == pytest.approx(1.0)
    assert x.evidence["energy_mix_kwh"] == {"peak": 180.0, "valley": 60.0}
    assert x.evidence["excess_cny"] == pytest.approx(24.0)
    assert x.evidence["time_of_use"] is True
    # A site that draws mostly at peak has a higher cap: the same bill is then fine.
    peaky = [1000.0 + 10 * i for i in range(25)]
    peaky_frames = {"energy_readings": energy("S1", "M1", peaky)}
    f2 = facts(sites=sites({"site_id": "S1"}), tariffs=tou, bills=bill(amount_cny=0.79 * 240))
    assert evaluate_overcharging(peaky_frames, f2, NOW, utc) == []
    # Read in China Standard Time (the default) the peak hours are 00-12 UTC: another mix and cap.
    (local,) = evaluate_overcharging(frames, f, NOW, BillThresholds())
    assert local.evidence["energy_mix_kwh"] == {"peak": 100.0, "valley": 140.0}
    assert local.evidence["cap_cny_per_kwh"] == pytest.approx((100 * 1.2 + 140 * 0.4) / 240)


def test_tariff_change_inside_the_period_applies_from_its_date():
    rows = pd.concat([FLAT, pd.DataFrame([{**FLAT.iloc[0].to_dict(),
                                           "effective_from": pd.Timestamp("2026-11-01T12:00:00Z"),
                                           "price_cny_per_kwh": 1.0}])], ignore_index=True)
    frames = {"energy_readings": energy("S1", "M1", [100.0 + 10 * i for i in range(25)])}
    f = facts(sites=sites({"site_id": "S1"}), tariffs=rows, bills=bill(amount_cny=0.95 * 240))
    (x,) = evaluate_overcharging(frames, f, NOW, BillThresholds())
    assert x.evidence["cap_cny_per_kwh"] == pytest.approx(0.9)
    assert len(x.evidence["tariff_rows"]) == 2


def test_parse_hours():
    assert parse_hours("8-11;18-21") == {8, 9, 10, 18, 19, 20}
    assert parse_hours("22-2") == {22, 23, 0, 1}
    assert parse_hours("7") == {7}
    assert parse_hours(None) == set(range(24))
    with pytest.raises(ValueError):
        parse_hours("25")


def test_meter_reset_counts_only_positive_increments():
    # 10 kWh per hour; the meter resets to 0 after hour 10 and continues.
    values = [100.0 + 10 * i for i in range(11)] + [10.0 * i for i in range(1, 15)]
    hours = pd.date_range(START, periods=24, freq="h").as_unit("ns").asi8
    e = interval_energy(energy("S1", "M1", values), ["S1"] * 24, hours, hours + 3_600_000_000_000,
                        max_gap_s=7200)
    # Hour 10 holds the reset (200 -> 10): not measured, 0 kWh, its hour unmetered.
    assert e.kwh[10] == 0 and not e.measured[10] and e.unmetered_s[10] == 3600
    assert e.measured.sum() == 23 and e.kwh.sum() == pytest.approx(100.0 + 130.0)
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(billed_kwh=250.0))
    # Metered 230 plus the unmetered hour at the highest measured rate (10 kWh/h): 240 x 1.05 = 252.
    assert evaluate_overbilling({"energy_readings": energy("S1", "M1", values)}, f, NOW, BillThresholds()) == []
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(billed_kwh=253.0))
    (x,) = evaluate_overbilling({"energy_readings": energy("S1", "M1", values)}, f, NOW, BillThresholds())
    assert x.evidence["meter_resets"] == 1 and x.evidence["unmetered_hours"] == 1.0
    assert x.evidence["unmetered_allowance_kwh"] == 10.0 and x.evidence["excess_kwh"] == pytest.approx(13.0)


def test_overbilling_exact_numbers_and_meter_swap():
    old = energy("S1", "M1", [500.0 + 5 * i for i in range(13)])                 # 60 kWh
    new = energy("S1", "M2", [0.0 + 5 * i for i in range(13)], "2026-11-01T12:00:00Z")  # 60 kWh
    frames = {"energy_readings": pd.concat([old, new], ignore_index=True)}
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(billed_kwh=300.0, amount_cny=240.0))
    (x,) = evaluate_overbilling(frames, f, NOW, BillThresholds())
    assert (x.kind, x.bill_id) == ("overbilling", "B1")
    assert x.evidence["metered_kwh"] == pytest.approx(120.0)
    assert x.evidence["metered_kwh_by_meter"] == {"M1": 60.0, "M2": 60.0}
    assert x.evidence["excess_kwh"] == pytest.approx(180.0)
    assert x.evidence["excess_cny"] == pytest.approx(180.0 * 0.8)
    assert x.severity == "warning"


def test_overbilling_needs_enough_meter_data():
    frames = {"energy_readings": energy("S1", "M1", [100.0, 101.0, 102.0])}  # 3 hours of 24
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(billed_kwh=300.0))
    assert evaluate_overbilling(frames, f, NOW, BillThresholds()) == []


def test_bills_outside_the_window_are_not_checked():
    f = facts(sites=sites({"site_id": "S1"}), tariffs=FLAT, bills=bill(amount_cny=1000.0))
    assert evaluate_overcharging({}, f, datetime(2027, 6, 1, tzinfo=UTC), BillThresholds()) == []
    assert evaluate_overcharging({}, f, datetime(2026, 11, 1, 12, tzinfo=UTC), BillThresholds()) == []


def test_time_of_use_cap_needs_meter_data_over_most_of_the_period():
    tou = pd.DataFrame([
        {"region": "SH", "customer_class": "commercial", "period": "peak", "hours": "8-20",
         "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": 1.20},
        {"region": "SH", "customer_class": "commercial", "period": "valley", "hours": "20-8",
         "effective_from": pd.Timestamp("2026-01-01T00:00:00Z"), "price_cny_per_kwh": 0.40},
    ])
    # Only the first 6 hours (all valley) metered: that mix would make the cap 0.40.
    frames = {"energy_readings": energy("S1", "M1", [100.0 + 10 * i for i in range(7)])}
    f = facts(sites=sites({"site_id": "S1"}), tariffs=tou, bills=bill(amount_cny=0.9 * 240))
    t = BillThresholds(tariff_timezone="UTC")
    assert evaluate_overcharging(frames, f, NOW, t) == []
    (x,) = evaluate_overcharging(frames, facts(sites=sites({"site_id": "S1"}), tariffs=tou,
                                               bills=bill(amount_cny=1.5 * 240)), NOW, t)
    assert x.evidence["cap_cny_per_kwh"] == 1.2 and x.evidence["cap_basis"].startswith("highest")


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_an_hour_in_two_periods_takes_the_higher_price_whatever_the_order(order):
    """Overlapping periods are refused at import, but a registry from before may hold them:
    the cap of such an hour no longer depends on the order (or names) of the periods."""
    base = FLAT.iloc[0].to_dict()
    rows = pd.DataFrame([
        base,
        {**base, "period": "peak", "hours": "0-24", "price_cny_per_kwh": 0.30},
        {**base, "period": "valley", "hours": "0-24", "price_cny_per_kwh": 1.20},
    ]).iloc[order].reset_index(drop=True)
    frames = {"energy_hourly": energy("S1", "M1", [100.0 + 10 * i for i in range(25)])}
    f = facts(sites=sites({"site_id": "S1"}), tariffs=rows, bills=bill(amount_cny=240.0))
    assert evaluate_overcharging(frames, f, NOW, BillThresholds()) == []  # 1.00 is under 1.20
    f = facts(sites=sites({"site_id": "S1"}), tariffs=rows, bills=bill(amount_cny=1.5 * 240))
    (x,) = evaluate_overcharging(frames, f, NOW, BillThresholds())
    assert x.evidence["cap_cny_per_kwh"] == pytest.approx(1.2)
