"""Reservations: exceeded, underused, missing."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from rules.reservations import ReservationThresholds, evaluate_reservations
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 11, 20, tzinfo=UTC)
T = ReservationThresholds()


def res(site: str, reserved_kw: float) -> dict:
    return {"site_id": site, "declared_kw": reserved_kw * 0.8, "reserved_kw": reserved_kw,
            "feeder": "F1", "substation": "SUB1", "status": "energized"}


def peaks(**kw: float) -> pd.DataFrame:
    return pd.DataFrame([{"site_id": s, "peak_kw": v, "time": pd.Timestamp("2026-11-19T10:00:00Z")}
                         for s, v in kw.items()])


def test_exceeded_underused_missing():
    s = sites({"site_id": "OVER", "on_air_since": "2026-01-01T00:00:00Z"},
              {"site_id": "EDGE", "on_air_since": "2026-01-01T00:00:00Z"},
              {"site_id": "IDLE", "on_air_since": "2026-01-01T00:00:00Z"},
              {"site_id": "NEW", "on_air_since": "2026-11-10T00:00:00Z"},
              {"site_id": "BUILD", "state": "under_construction"},
              {"site_id": "PLAN", "state": "planned"})
    r = pd.DataFrame([res("OVER", 10.0), res("EDGE", 10.0), res("IDLE", 10.0), res("NEW", 10.0)])
    found = evaluate_reservations({"power_peak": peaks(OVER=12.5, EDGE=10.0, IDLE=1.5, NEW=1.0)},
                                  facts(sites=s, reservations=r), NOW, T)
    got = {(x.kind, x.site_id): x for x in found}
    assert set(got) == {("reservation_exceeded", "OVER"), ("reservation_underused", "IDLE"),
                        ("reservation_missing", "BUILD")}
    over = got[("reservation_exceeded", "OVER")]
    assert over.severity == "critical" and over.evidence["over_kw"] == 2.5
    assert over.evidence["feeder"] == "F1"
    assert got[("reservation_underused", "IDLE")].evidence["unused_kw"] == 8.5


def test_on_air_date_unknown_counts_as_established():
    s = sites({"site_id": "OLD", "on_air_since": None})
    (x,) = evaluate_reservations({"power_peak": peaks(OLD=2.0)},
                                 facts(sites=s, reservations=pd.DataFrame([res("OLD", 10.0)])), NOW, T)
    assert x.kind == "reservation_underused" and x.evidence["on_air_since"] is None


def test_slightly_exceeded_is_a_warning():
    s = sites({"site_id": "S"})
    (x,) = evaluate_reservations({"power_peak": peaks(S=11.0)},
                                 facts(sites=s, reservations=pd.DataFrame([res("S", 10.0)])), NOW, T)
    assert x.severity == "warning"
