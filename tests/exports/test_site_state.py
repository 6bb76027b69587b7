"""site_state line protocol: one point per registered site, online/offline by the window,
reservations joined, a site that line protocol cannot carry left out (logged)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.reading import PowerReading, TowerReading
from exports.site_state import site_state_lines
from tests.twin.conftest import add_site
from twin.live import LiveState
from twin.models import Reservation

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def tower(site: str, s: int, **kw) -> TowerReading:
    return TowerReading(site_id=site, ts=(T + timedelta(seconds=s)).timestamp(),
                        mains_ok=kw.pop("mains_ok", True), **kw)


def test_one_point_per_registered_site_online_offline_and_silent_by_design(store):
    live = LiveState(online_window_s=180)
    add_site(store, "ON1", state="on_air", county="Pi County")
    add_site(store, "OFF1", state="on_air")
    add_site(store, "NEVER", supply="transfer")
    with store.session() as s:
        s.add(Reservation(site_id="ON1", declared_kw=8.0, reserved_kw=10.0, feeder="F 1",
                          substation="Sub=A", status="approved"))
    live.observe_batch([tower("ON1", 0, battery_soc_pct=97.0),
                        PowerReading(site_id="ON1", ts=T.timestamp(), meter_id="M1", energy_kwh=5.0,
                                     power_kw=3.5),
                        tower("OFF1", -1000), tower("GHOST", 0)])
    live.flush(store)
    body = site_state_lines(store, T + timedelta(seconds=60), online_window_s=180).decode()
    lines = body.splitlines()
    assert len(lines) == 3  # registered sites only
    ts_ns = int((T + timedelta(seconds=60)).timestamp()) * 10**9
    on1 = next(x for x in lines if "site_id=ON1" in x)
    assert on1.startswith("site_state,county=Pi\\ County,feeder=F\\ 1,kind=macro,site_id=ON1,"
                          "state=on_air,substation=Sub\\=A,supply=direct ")
    assert "online=1i" in on1 and "on_battery=0i" in on1 and "power_kw=3.5" in on1
    assert "reserved_kw=10.0" in on1 and "declared_kw=8.0" in on1 and "age_s=60.0" in on1
    assert on1.endswith(f" {ts_ns}")
    off1 = next(x for x in lines if "site_id=OFF1" in x)
    assert "online=0i" in off1 and "offline=1i" in off1 and "age_s=1060.0" in off1
    assert "offline=0i" in on1
    # Planned and never heard: silent by design, so not offline (issue 14).
    never = next(x for x in lines if "site_id=NEVER" in x)
    assert "online=0i" in never and "offline=0i" in never and "age_s" not in never
    assert "supply=transfer" in never


def test_site_state_skips_a_site_that_cannot_be_written(store):
    add_site(store, "OK1")
    add_site(store, "ODD", county="Line\nbreak")
    body = site_state_lines(store, T).decode()
    assert [x.split(",")[0] for x in body.splitlines()] == ["site_state"]
    assert "site_id=OK1" in body and "ODD" not in body


