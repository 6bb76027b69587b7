"""Power-monitoring (动环) rules: door open outside maintenance, cabinet over-temperature, tilt,
low-voltage disconnect imminent — and the honest inputs each must leave alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from rules.environment import (
    DoorThresholds,
    LlvdThresholds,
    OvertempThresholds,
    TiltThresholds,
    evaluate_battery_llvd_risk,
    evaluate_cabinet_overtemp,
    evaluate_door_open,
    evaluate_tilt_exceeded,
)
from tests.rules.helpers import facts

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def times(n: int) -> pd.DatetimeIndex:
    return pd.date_range(end=pd.Timestamp(NOW) - pd.Timedelta(minutes=5), periods=n, freq="5min")


def doors(site: str, states: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"time": times(len(states)), "site_id": site, "door_open": states})


def booked(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"site_id": s, "start": pd.Timestamp(a), "end": pd.Timestamp(b), "ticket": "T"}
                         for s, a, b in rows])


def test_a_door_open_outside_any_maintenance_window_is_flagged():
    frames = {"door_readings": pd.concat([
        doors("INTRUDED", [False] * 6 + [True] * 3),
        doors("VISIT", [False] * 6 + [True] * 3),       # inside its booked visit
        doors("CLOSED", [False, True, True, False, False]),  # opened and closed again
        doors("OVERRAN", [False] * 3 + [True] * 6)])}  # the visit ended at 11:45
    visits = booked(("VISIT", "2026-11-20T11:30:00Z", "2026-11-20T13:00:00Z"),
                    ("OVERRAN", "2026-11-20T11:00:00Z", "2026-11-20T11:45:00Z"))
    found = {x.site_id: x for x in evaluate_door_open(frames, facts(maintenance=visits), NOW,
                                                      DoorThresholds())}
    assert set(found) == {"INTRUDED", "OVERRAN"}
    x = found["INTRUDED"]
    assert (x.kind, x.severity) == ("door_open", "warning")
    assert x.evidence["open_since"] == "2026-11-20T11:45:00Z" and x.evidence["open_s"] == 600.0
    assert x.evidence["maintenance_windows"] == []
    over = found["OVERRAN"].evidence
    assert over["first_outside"] == "2026-11-20T11:45:00Z"
    assert over["maintenance_windows"] == [["2026-11-20T11:00:00Z", "2026-11-20T11:45:00Z"]]


def test_door_grace_and_critical_after():
    frames = {"door_readings": doors("S1", [False] + [True] * 8)}
    (x,) = evaluate_door_open(frames, facts(), NOW, DoorThresholds(critical_after=1800))
    assert x.severity == "critical"  # open 35 min
    assert evaluate_door_open(frames, facts(), NOW, DoorThresholds(open_after=3600)) == []


def env(site: str, **columns: list) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"time": times(n), "site_id": site, **columns})


def test_cabinet_overtemp_sustained_but_not_a_normal_swing_or_a_short_peak():
    frames = {"env_5m": pd.concat([
        env("HOT", cabinet_temp_c=[38, 40, 44, 46, 47, 48, 49]),        # 20 min at or above 45
        env("SWING", cabinet_temp_c=[24, 28, 33, 36, 38, 36, 33]),       # a sunny afternoon
        env("PEAK", cabinet_temp_c=[38, 40, 41, 39, 40, 46, 47]),        # only 10 min above
        env("COOLED", cabinet_temp_c=[50, 51, 52, 50, 46, 41, 39])])}    # back below now
    (x,) = evaluate_cabinet_overtemp(frames, facts(), NOW, OvertempThresholds())
    assert (x.kind, x.site_id, x.severity) == ("cabinet_overtemp", "HOT", "warning")
    assert x.evidence["duration_s"] == 1200.0 and x.evidence["cabinet_temp_c"] == 49.0
    frames = {"env_5m": env("OVEN", cabinet_temp_c=[56, 57, 58, 58])}
    assert evaluate_cabinet_overtemp(frames, facts(), NOW, OvertempThresholds())[0].severity == "critical"


def test_tilt_beyond_the_limit_but_not_a_gust():
    frames = {"env_5m": pd.concat([
        env("LEANING", tilt_deg=[0.4, 0.5, 3.2, 3.4, 3.5]),
        env("GUST", tilt_deg=[0.4, 0.4, 0.5, 0.4, 3.1]),        # one bucket
        env("STRAIGHT", tilt_deg=[0.40, 0.45, 0.42, 0.41, 0.44])])}
    (x,) = evaluate_tilt_exceeded(frames, facts(), NOW, TiltThresholds())
    assert (x.kind, x.site_id, x.severity) == ("tilt_exceeded", "LEANING", "warning")
    assert x.evidence["max_tilt_deg"] == 3.5


def test_llvd_risk_only_on_battery_near_the_disconnect():
    frames = {"env_5m": pd.concat([
        env("DROPPING", battery_voltage_v=[47.0, 46.0, 45.2, 44.9], on_battery=[True] * 4,
            mains_ok=[False] * 4, battery_soc_pct=[20.0, 12.0, 6.0, 3.0]),
        env("EQUALISING", battery_voltage_v=[44.8, 44.8, 44.9, 44.9], on_battery=[False] * 4,
            mains_ok=[True] * 4, battery_soc_pct=[100.0] * 4),   # low reading on mains: not a drop
        env("FRESH", battery_voltage_v=[51.0, 50.5, 50.1, 49.8], on_battery=[True] * 4,
            mains_ok=[False] * 4, battery_soc_pct=[90.0, 85.0, 80.0, 76.0])])}
    (x,) = evaluate_battery_llvd_risk(frames, facts(), NOW, LlvdThresholds())
    assert (x.kind, x.site_id, x.severity) == ("battery_llvd_risk", "DROPPING", "warning")
    assert x.evidence["margin_v"] == 0.9 and x.evidence["battery_soc_pct"] == 3.0
    frames = {"env_5m": env("EDGE", battery_voltage_v=[44.4], on_battery=[None], mains_ok=[False])}
    assert evaluate_battery_llvd_risk(frames, facts(), NOW, LlvdThresholds())[0].severity == "critical"


def test_stale_readings_are_not_now():
    old = doors("S1", [True] * 3)
    old["time"] = old["time"] - pd.Timedelta(minutes=30)
    assert evaluate_door_open({"door_readings": old}, facts(), NOW, DoorThresholds()) == []
    hot = env("S1", cabinet_temp_c=[50.0] * 6)
    hot["time"] = hot["time"] - pd.Timedelta(minutes=30)
    assert evaluate_cabinet_overtemp({"env_5m": hot}, facts(), NOW, OvertempThresholds()) == []
