"""Lifecycle: relocation violations and stalled states."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from rules.lifecycle import LIFECYCLE, evaluate_lifecycle
from tests.rules.helpers import facts, sites

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def seen(**kw: str) -> pd.DataFrame:
    return pd.DataFrame([{"site_id": s, "time": pd.Timestamp(v)} for s, v in kw.items()])


def test_relocation_violation_when_old_site_is_down_before_the_new_is_on_air():
    s = sites({"site_id": "OLD1", "state": "decommissioned", "state_since": "2026-11-18T00:00:00Z"},
              {"site_id": "NEW1", "state": "under_construction", "replaces_site_id": "OLD1"},
              {"site_id": "OLD2", "state": "on_air"},
              {"site_id": "NEW2", "state": "power_connected", "replaces_site_id": "OLD2"},
              {"site_id": "OLD3", "state": "decommissioned"},
              {"site_id": "NEW3", "state": "on_air", "replaces_site_id": "OLD3"},
              {"site_id": "OLD4", "state": "on_air"},
              {"site_id": "NEW4", "state": "approved", "replaces_site_id": "OLD4"})
    frames = {"last_seen": seen(OLD2="2026-11-19T12:00:00Z", OLD4="2026-11-19T23:59:00Z")}
    t = LIFECYCLE.configure({"limits_days": {}})
    found = evaluate_lifecycle(frames, facts(sites=s), NOW, t)
    assert {(x.kind, x.site_id) for x in found} == {("relocation_violation", "OLD1"),
                                                    ("relocation_violation", "OLD2")}
    x = next(x for x in found if x.site_id == "OLD1")
    assert x.evidence["replacement_site_id"] == "NEW1" and x.severity == "critical"
    assert x.window_start == datetime(2026, 11, 18, tzinfo=UTC)


def test_stalled_states_past_their_limit():
    s = sites({"site_id": "A", "state": "approved", "state_since": "2026-10-01T00:00:00Z"},   # 50 d
              {"site_id": "B", "state": "approved", "state_since": "2026-11-01T00:00:00Z"},   # 19 d
              {"site_id": "C", "state": "approved", "state_since": "2026-09-01T00:00:00Z"},   # 80 d
              {"site_id": "D", "state": "on_air", "state_since": "2020-01-01T00:00:00Z"})
    found = evaluate_lifecycle({}, facts(sites=s), NOW, LIFECYCLE.configure(None))
    got = {x.site_id: x for x in found}
    assert set(got) == {"A", "C"}
    assert got["A"].severity == "warning" and got["C"].severity == "critical"
    assert got["A"].evidence["limit_days"] == 30.0
    custom = LIFECYCLE.configure({"limits_days": {"approved": 60}})
    assert {x.site_id for x in evaluate_lifecycle({}, facts(sites=s), NOW, custom)} == {"C"}
