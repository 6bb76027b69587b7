"""Live state: concurrent observation, one-transaction flushes, unregistered sites, the online window."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from connectors.reading import InterferenceReading, PowerReading, TowerReading
from tests.twin.conftest import add_site
from twin.errors import StoreError
from twin.live import LiveState, is_online
from twin.models import Cell, LiveSiteState, Meter

pytestmark = pytest.mark.integration

T = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def tower(site: str, s: int, **kw) -> TowerReading:
    return TowerReading(site_id=site, ts=(T + timedelta(seconds=s)).timestamp(),
                        mains_ok=kw.pop("mains_ok", True), **kw)


def test_concurrent_observe_and_flush_lose_nothing(store, settings):
    live = LiveState(online_window_s=settings.twin.online_window_s)
    sites = [f"C{i:03d}" for i in range(40)]
    steps = 50
    stop = threading.Event()
    errors: list[BaseException] = []

    def feed(offset: int) -> None:
        try:
            for k in range(steps):
                batch = []
                for j, site in enumerate(sites[offset::4]):
                    sec = k * 10 + offset
                    batch.append(tower(site, sec, battery_soc_pct=float(k), cabinet_temp_c=20.0))
                    batch.append(PowerReading(site_id=site, ts=(T + timedelta(seconds=sec)).timestamp(),
                                              meter_id=f"M-{site}", energy_kwh=float(k * 10 + j),
                                              power_kw=float(k)))
                    batch.append(InterferenceReading(site_id=site, ts=(T + timedelta(seconds=sec)).timestamp(),
                                                     cell_id=f"{site}-1", band="n78",
                                                     ul_interference_dbm=-110.0))
                live.observe_batch(batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def flusher() -> None:
        while not stop.is_set():
            try:
                live.flush(store)
            except BaseException as exc:
                errors.append(exc)
                return
            stop.wait(0.01)

    f = threading.Thread(target=flusher)
    f.start()
    feeders = [threading.Thread(target=feed, args=(o,)) for o in range(4)]
    for t in feeders:
        t.start()
    for t in feeders:
        t.join()
    stop.set()
    f.join()
    live.flush(store)
    assert not errors
    assert live.observed == 40 * steps * 3 and live.pending == 0

    with store.session() as s:
        rows = {r.site_id: r for r in s.scalars(select(LiveSiteState))}
        meters = {m.meter_id: m for m in s.scalars(select(Meter))}
        cells = {c.cell_id: c for c in s.scalars(select(Cell))}
    assert sorted(rows) == sites and len(meters) == 40 and len(cells) == 40
    for i, site in enumerate(sites):
        offset = i % 4
        last = T + timedelta(seconds=(steps - 1) * 10 + offset)
        r = rows[site]
        assert (r.last_seen, r.battery_soc_pct, r.power_kw, r.mains_ok, r.on_battery) == (
            last, float(steps - 1), float(steps - 1), True, False)
        assert r.registered is False
        m = meters[f"M-{site}"]
        assert (m.site_id, m.first_seen, m.last_seen) == (site, T + timedelta(seconds=offset), last)
        assert cells[f"{site}-1"].band == "n78" and cells[f"{site}-1"].last_seen == last


def test_older_reading_does_not_overwrite_newer(store):
    live = LiveState(online_window_s=180)
    live.observe_batch([tower("A", 100, battery_soc_pct=50.0)])
    live.flush(store)
    # A device's backlog arrives late: older values must not replace the newer ones.
    live.observe_batch([tower("A", 10, battery_soc_pct=99.0, mains_ok=False)])
    live.flush(store)
    # A newer reading without battery_soc_pct keeps the last known value.
    live.observe_batch([tower("A", 200, mains_ok=False, cabinet_temp_c=41.5)])
    live.flush(store)
    with store.session() as s:
        r = s.get(LiveSiteState, "A")
    assert r.last_seen == T + timedelta(seconds=200)
    assert (r.mains_ok, r.on_battery, r.battery_soc_pct, r.cabinet_temp_c) == (False, True, 50.0, 41.5)


def test_unregistered_until_imported_and_flush_failure_keeps_data(store):
    live = LiveState(online_window_s=180)
    live.observe_batch([tower("REG", 1), tower("GHOST", 1)])
    add_site(store, "REG")
    live.flush(store)
    with store.session() as s:
        assert s.get(LiveSiteState, "REG").registered is True
        assert s.get(LiveSiteState, "GHOST").registered is False
    # The registry goes away mid-run: the flush fails, and the next one writes the data.
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE live_state RENAME TO live_state_away"))
    live.observe_batch([tower("GHOST", 30, battery_soc_pct=12.0)])
    with pytest.raises(StoreError):
        live.flush(store)
    assert live.pending == 1
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE live_state_away RENAME TO live_state"))
    live.observe_batch([tower("GHOST", 20, battery_soc_pct=40.0)])  # older than the kept one
    assert live.flush(store) == 1
    with store.session() as s:
        g = s.get(LiveSiteState, "GHOST")
    assert (g.last_seen, g.battery_soc_pct) == (T + timedelta(seconds=30), 12.0)


def test_online_window(settings):
    live = LiveState(online_window_s=settings.twin.online_window_s)
    assert live.online_window_s == settings.twin.reporting_period * settings.twin.online_periods
    assert is_online(T, T + timedelta(seconds=180), 180) and not is_online(T, T + timedelta(seconds=181), 180)
    assert not is_online(None, T, 180)


def test_digests_hold_plain_values_the_garbage_collector_lets_go_of():
    """The collector holds one digest per reading until its batch is durable; a digest must
    not keep the reading alive or stay tracked (the twin's cost on ingest, bench/RESULTS.md)."""
    import gc

    readings = [tower("D1", 0, on_battery=None, mains_ok=False, battery_soc_pct=80.0, cabinet_temp_c=30.5),
                PowerReading(site_id="D1", ts=T.timestamp(), meter_id="M1", energy_kwh=5.0, power_kw=2.0),
                InterferenceReading(site_id="D1", ts=T.timestamp(), cell_id="D1-1", band="n78",
                                    ul_interference_dbm=-110.0)]
    digests = [LiveState.digest(r) for r in readings]
    assert digests[0][:7] == ("tower", "D1", readings[0].ts, False, True, 80.0, 30.5)  # on_battery from mains
    assert digests[1][3:6] == ("M1", 2.0, 5.0)
    assert digests[2][3:5] == ("D1-1", "n78")
    gc.collect()
    assert not any(gc.is_tracked(d) for d in digests)
    # Observing digests is observing the readings.
    a, b = LiveState(online_window_s=60), LiveState(online_window_s=60)
    a.observe_batch(readings)
    b.observe_digests(digests)
    assert [r.row() for r in a._sites.values()] == [r.row() for r in b._sites.values()]
    assert a._meters == b._meters and a._cells == b._cells
