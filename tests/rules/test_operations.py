"""Operations: offline sites and mains failures with SOC trend."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from rules.operations import MainsThresholds, OfflineThresholds, evaluate_mains_failure, evaluate_site_offline
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_site_offline():
    s = sites({"site_id": "UP"}, {"site_id": "LATE"}, {"site_id": "GONE"}, {"site_id": "NEVER"},
              {"site_id": "BUILD", "state": "under_construction"}, {"site_id": "PLAN", "state": "planned"},
              {"site_id": "MOVING", "state": "relocating"}, {"site_id": "DOWN", "state": "decommissioned"})
    frames = {"last_seen": pd.DataFrame([
        {"site_id": "UP", "time": pd.Timestamp("2026-11-20T11:55:00Z")},
        {"site_id": "LATE", "time": pd.Timestamp("2026-11-20T11:40:00Z")},
        {"site_id": "GONE", "time": pd.Timestamp("2026-11-20T09:00:00Z")}])}
    found = {x.site_id: x for x in evaluate_site_offline(frames, facts(sites=s), NOW, OfflineThresholds())}
    # Never built, or taken down: silent by design.  Relocating is on air until replaced.
    assert set(found) == {"LATE", "GONE", "NEVER", "MOVING"}
    assert found["LATE"].severity == "warning" and found["GONE"].severity == "critical"
    assert found["LATE"].evidence["silent_s"] == 1200.0
    assert found["NEVER"].evidence["last_seen"] is None


def tower(site: str, on_battery: list[bool], soc: list[float]) -> pd.DataFrame:
    times = pd.date_range(end=pd.Timestamp(NOW) - pd.Timedelta(minutes=5), periods=len(soc), freq="5min")
    return pd.DataFrame({"time": times, "site_id": site, "on_battery": on_battery,
                         "mains_ok": [not b for b in on_battery], "battery_soc_pct": soc})


def test_mains_failure_with_soc_trend_and_time_to_empty():
    # 30 minutes on battery, SOC falling 2 % per 5 min = 24 %/h, 80 % left: ~3.3 h.
    frames = {"tower_5m": tower("S1", [False, False] + [True] * 6, [100, 100, 90, 88, 86, 84, 82, 80])}
    (x,) = evaluate_mains_failure(frames, facts(), NOW, MainsThresholds())
    assert (x.kind, x.site_id, x.severity) == ("mains_failure", "S1", "warning")
    assert x.evidence["duration_s"] == 1800.0
    assert x.evidence["soc_slope_pct_per_h"] == pytest.approx(-24.0)
    assert x.evidence["hours_to_empty"] == pytest.approx(80 / 24, abs=0.01)
    assert len(x.evidence["soc_trend"]) == 6


def test_short_outage_and_recovered_site_are_not_flagged_and_low_soc_is_critical():
    short = {"tower_5m": tower("S1", [False] * 5 + [True] * 2, [100] * 5 + [99, 98])}
    assert evaluate_mains_failure(short, facts(), NOW, MainsThresholds()) == []
    back = {"tower_5m": tower("S1", [True] * 6 + [False], [90, 80, 70, 60, 50, 40, 41])}
    assert evaluate_mains_failure(back, facts(), NOW, MainsThresholds()) == []
    low = {"tower_5m": tower("S1", [True] * 6, [40, 36, 32, 28, 24, 20])}
    (x,) = evaluate_mains_failure(low, facts(), NOW, MainsThresholds())
    assert x.severity == "critical"


def test_evidence_times_are_utc_with_z():
    from rules.finding import iso_utc

    assert iso_utc(NOW) == "2026-11-20T12:00:00Z"
    s = sites({"site_id": "GONE"})
    frames = {"last_seen": pd.DataFrame([{"site_id": "GONE", "time": pd.Timestamp("2026-11-20T09:00:00Z")}])}
    (x,) = evaluate_site_offline(frames, facts(sites=s), NOW, OfflineThresholds())
    assert x.evidence["last_seen"] == "2026-11-20T09:00:00Z" and "09:00:00Z" in x.summary


def test_a_site_on_battery_that_went_silent_is_still_a_mains_failure_and_escalates():
    # On battery from -40 min, last report -25 min: silent since -20 min, batteries likely flat.
    g = tower("S1", [False, False] + [True] * 4, [100, 100, 90, 88, 86, 84])
    g["time"] = g["time"] - pd.Timedelta(minutes=20)
    (x,) = evaluate_mains_failure({"tower_5m": g}, facts(), NOW, MainsThresholds())
    assert x.severity == "critical" and x.evidence["reporting"] is False
    assert x.evidence["silent_since"] == "2026-11-20T11:40:00Z"
    assert x.window_end == NOW and "停电退服" in x.summary


def test_the_offline_finding_names_a_mains_failure_as_its_probable_cause():
    s = sites({"site_id": "FLAT"}, {"site_id": "OFF"})
    frames = {"last_seen": pd.DataFrame({"site_id": ["FLAT", "OFF"],
                                         "time": [pd.Timestamp("2026-11-20T11:30:00Z")] * 2}),
              "tower_latest": pd.DataFrame({"site_id": ["FLAT", "OFF"], "on_battery": [True, False],
                                            "mains_ok": [False, True], "battery_soc_pct": [12.0, 100.0]})}
    found = {x.site_id: x for x in evaluate_site_offline(frames, facts(sites=s), NOW, OfflineThresholds())}
    cause = found["FLAT"].evidence["probable_cause"]
    assert (cause["kind"], cause["dedup_key"], cause["battery_soc_pct"]) == (
        "mains_failure", "mains_failure|FLAT||", 12.0)
    assert found["FLAT"].severity == "critical" and found["OFF"].severity == "warning"
    assert "probable_cause" not in found["OFF"].evidence


def test_only_sites_that_reported_are_observed():
    from rules.operations import observed_sites

    latest = pd.DataFrame({"site_id": ["A", "B"], "on_battery": [False, True]})
    assert observed_sites({"tower_latest": latest}) == {"A", "B"}
    assert observed_sites({}) == set()


def test_the_rules_and_the_twin_agree_on_which_states_should_be_on_air():
    from rules.operations import ON_AIR_STATES
    from twin.live import ON_AIR_STATES as TWIN_ON_AIR

    assert ON_AIR_STATES == TWIN_ON_AIR
