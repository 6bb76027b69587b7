"""progress_frame: pure counting per county from sites, events and targets."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from twin.progress import progress_frame

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_counts_per_county_and_total():
    sites = pd.DataFrame([
        ("A", "North", "direct", 2026), ("B", "North", "transfer", 2026),
        ("C", "North", "transfer", 2025), ("D", "South", "direct", 2026),
        ("E", "South", "direct", 2027), ("F", "South", "transfer", 2026),
    ], columns=["site_id", "county", "supply", "planned_year"])
    events = pd.DataFrame([
        ("A", "planned", ts("2026-01-01"), True), ("A", "power_connected", ts("2026-02-01"), True),
        ("A", "on_air", ts("2026-03-01"), True),
        ("B", "planned", ts("2026-01-01"), True), ("B", "blocked", ts("2026-02-01"), True),
        ("C", "on_air", ts("2025-01-01"), True), ("C", "relocating", ts("2026-01-05"), True),
        ("C", "decommissioned", ts("2026-04-05"), True),
        ("D", "on_air", ts("2026-05-01"), False),  # imported as on air, date unknown
        ("E", "under_construction", ts("2026-05-01"), True),
        # F has no event before AS_OF: it does not exist yet
    ], columns=["site_id", "to_state", "at", "dated"])
    f = progress_frame(sites, events, {"North": 4, "West": 2}, 2026, AS_OF).set_index("county")
    assert list(f.index) == ["North", "South", "West", "TOTAL"]
    n, s, w, t = (f.loc[c] for c in ("North", "South", "West", "TOTAL"))
    assert (n.target_sites, n.planned_in_year, n.on_air, n.on_air_in_year, n.blocked,
            n.progress_pct, n.direct_sites, n.transfer_sites) == (4, 2, 1, 1, 1, 25.0, 1, 1)
    assert (s.on_air, s.on_air_in_year, s.under_construction, s.planned_in_year,
            s.direct_share_pct) == (1, 0, 1, 2, 100.0)
    assert pd.isna(s.target_sites) and pd.isna(s.progress_pct)
    assert (w.target_sites, w.on_air, w.progress_pct) == (2, 0, 0.0)
    assert (t.target_sites, t.on_air, t.on_air_in_year, t.progress_pct) == (6, 2, 1, 16.7)
