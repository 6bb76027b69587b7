"""Interference: sustained levels, baseline rise, PRB classes, multi-site incidents."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from rules.interference import (
    InterferenceThresholds,
    classify_prb,
    estimate_source,
    evaluate_interference,
    haversine_km,
)
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
T = InterferenceThresholds()


def recent(site: str, cell: str, levels: list[float]) -> pd.DataFrame:
    times = pd.date_range(end=pd.Timestamp(NOW) - pd.Timedelta(minutes=15), periods=len(levels), freq="15min")
    return pd.DataFrame({"time": times, "site_id": site, "cell_id": cell, "band": "n78", "ul_dbm": levels})


def baseline(site: str, cell: str, level: float, days: int = 7) -> pd.DataFrame:
    times = pd.date_range(end=pd.Timestamp(NOW) - pd.Timedelta(hours=2), periods=days * 24, freq="h")
    return pd.DataFrame({"time": times, "site_id": site, "cell_id": cell, "ul_dbm": level})


def test_absolute_level_for_n_consecutive_periods():
    f = facts(sites=sites({"site_id": "S1"}))
    quiet = {"interference_recent": recent("S1", "C1", [-117, -117, -109, -109])}
    assert evaluate_interference(quiet, f, NOW, T) == []  # only 2 periods
    loud = {"interference_recent": recent("S1", "C1", [-117, -109, -109, -108])}
    (x,) = evaluate_interference(loud, f, NOW, T)
    assert (x.kind, x.site_id, x.cell_id, x.severity) == ("interference", "S1", "C1", "warning")
    assert x.evidence["cells"][0]["periods"] == 3
    crit = {"interference_recent": recent("S1", "C1", [-104, -103, -104])}
    assert evaluate_interference(crit, f, NOW, T)[0].severity == "critical"


def test_a_cleared_last_period_is_not_flagged():
    f = facts(sites=sites({"site_id": "S1"}))
    frames = {"interference_recent": recent("S1", "C1", [-104, -104, -104, -117])}
    assert evaluate_interference(frames, f, NOW, T) == []


def test_rise_over_the_cells_own_baseline():
    f = facts(sites=sites({"site_id": "S1"}))
    frames = {"interference_recent": recent("S1", "C1", [-113.0, -113.0, -113.0]),
              "interference_baseline": baseline("S1", "C1", -120.0)}
    (x,) = evaluate_interference(frames, f, NOW, T)
    assert x.evidence["cells"][0]["rise_db"] == pytest.approx(7.0)
    # 5 dB over baseline and below -110 dBm: not flagged.
    frames["interference_recent"] = recent("S1", "C1", [-115.0] * 3)
    assert evaluate_interference(frames, f, NOW, T) == []
    # Too few days of history: no baseline, so only the absolute level counts.
    frames = {"interference_recent": recent("S1", "C1", [-113.0] * 3),
              "interference_baseline": baseline("S1", "C1", -120.0, days=2)}
    assert evaluate_interference(frames, f, NOW, T) == []


def test_prb_wideband_narrowband_unknown():
    flat = np.full(273, -100.0) + np.random.default_rng(1).normal(0, 0.5, 273)
    assert classify_prb(flat, -118.0, T)["class"] == "wideband"
    block = np.full(273, -118.0)
    block[40:60] = -95.0
    got = classify_prb(block, -118.0, T)
    assert got["class"] == "narrowband" and got["block"] == [40, 59]
    scattered = np.full(273, -118.0)
    scattered[::3] = -95.0
    assert classify_prb(scattered, -118.0, T)["class"] == "unknown"
    assert classify_prb(np.full(10, np.nan), -118.0, T)["class"] == "unknown"


def test_prb_frame_classifies_the_flagged_cell():
    f = facts(sites=sites({"site_id": "S1"}))
    prb = pd.DataFrame([{"site_id": "S1", "cell_id": "C1",
                         **{f"prb_{i:03d}": (-95.0 if 100 <= i < 110 else -118.0) for i in range(273)}}])
    frames = {"interference_recent": recent("S1", "C1", [-108.0] * 3), "interference_prb": prb}
    (x,) = evaluate_interference(frames, f, NOW, T)
    assert x.evidence["classification"] == "narrowband"


def test_nearby_sites_form_one_incident_located_by_rise():
    s = sites({"site_id": "A", "lat": 31.000, "lon": 121.000},
              {"site_id": "B", "lat": 31.010, "lon": 121.000},
              {"site_id": "C", "lat": 31.000, "lon": 121.010},
              {"site_id": "FAR", "lat": 32.000, "lon": 121.000})
    frames = {
        "interference_recent": pd.concat([
            recent("A", "A1", [-100.0] * 3), recent("B", "B1", [-110.0] * 3),
            recent("C", "C1", [-110.0] * 3), recent("FAR", "F1", [-105.0] * 3)]),
        "interference_baseline": pd.concat([baseline(x, f"{x[0]}1", -120.0) for x in ("A", "B", "C", "FAR")]),
    }
    found = evaluate_interference(frames, facts(sites=s), NOW, T)
    assert len(found) == 2
    incident = next(x for x in found if x.evidence["incident"])
    assert incident.site_id == "A" and incident.cell_id == "A1"  # the strongest rise anchors it
    assert incident.evidence["sites"] == ["A", "B", "C"]
    est = incident.evidence["source_estimate"]
    # Weights 20, 10, 10 dB: the estimate lies between the sites, pulled towards A.
    assert est["lat"] == pytest.approx(31.0025, abs=1e-6)
    assert est["lon"] == pytest.approx(121.0025, abs=1e-6)
    lone = next(x for x in found if not x.evidence["incident"])
    assert lone.site_id == "FAR"


def test_geometry_helpers():
    assert haversine_km(31.0, 121.0, 31.0, 121.0) == 0
    assert haversine_km(31.0, 121.0, 32.0, 121.0) == pytest.approx(111.2, abs=0.2)
    assert estimate_source([(0.0, 0.0, 1.0), (2.0, 2.0, 1.0)]) == {"lat": 1.0, "lon": 1.0}


def _jammers(window_start: str, window_end: str, bands: tuple[str, ...] = ("n78",),
             radius_m: float = 2000.0) -> pd.DataFrame:
    return pd.DataFrame([{"interferer_id": "EXAM-1", "name": "No. 3 Middle School exam hall",
                          "lat": 31.003, "lon": 121.003, "radius_m": radius_m, "bands": bands,
                          "windows": ((pd.Timestamp(window_start), pd.Timestamp(window_end)),)}])


def test_an_incident_at_an_authorised_jammer_is_marked_and_not_escalated():
    s = sites({"site_id": "A", "lat": 31.000, "lon": 121.000},
              {"site_id": "B", "lat": 31.010, "lon": 121.000},
              {"site_id": "FAR", "lat": 32.000, "lon": 121.000})
    frames = {"interference_recent": pd.concat([
        recent("A", "A1", [-100.0] * 3), recent("B", "B1", [-101.0] * 3),
        recent("FAR", "F1", [-100.0] * 3)])}
    exam = _jammers("2026-11-20T06:00:00Z", "2026-11-20T13:00:00Z")  # 14:00-21:00 +08:00
    found = {x.site_id: x for x in evaluate_interference(frames, facts(sites=s, interferers=exam), NOW, T)}
    incident, far = found["A"], found["FAR"]
    allowed = incident.evidence["authorised_interferer"]
    assert (allowed["interferer_id"], allowed["window"]) == (
        "EXAM-1", ["2026-11-20T06:00:00Z", "2026-11-20T13:00:00Z"])
    assert allowed["distance_m"] < 2000 and incident.severity == "info"
    assert incident.summary.startswith("authorised interferer No. 3 Middle School exam hall")
    # The far site is not within its radius: still an alarm.
    assert far.severity == "critical" and "authorised_interferer" not in far.evidence


@pytest.mark.parametrize(("window", "bands", "radius_m"), [
    (("2026-11-20T00:00:00Z", "2026-11-20T09:00:00Z"), ("n78",), 2000.0),  # ended at 17:00 local
    (("2026-11-20T06:00:00Z", "2026-11-20T13:00:00Z"), ("n41",), 2000.0),  # another band
    (("2026-11-20T06:00:00Z", "2026-11-20T13:00:00Z"), ("n78",), 100.0),   # too far away
], ids=["outside-window", "other-band", "outside-radius"])
def test_interference_not_covered_by_an_authorised_jammer_stays_an_alarm(window, bands, radius_m):
    s = sites({"site_id": "A", "lat": 31.000, "lon": 121.000})
    frames = {"interference_recent": recent("A", "A1", [-100.0] * 3)}
    (x,) = evaluate_interference(frames, facts(sites=s, interferers=_jammers(*window, bands, radius_m)),
                                 NOW, T)
    assert x.severity == "critical" and "authorised_interferer" not in x.evidence
