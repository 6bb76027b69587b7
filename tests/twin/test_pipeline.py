"""The twin inside ``sitetwin run``'s pipeline: MQTT -> collector -> live state in the registry."""

from __future__ import annotations

import time

import orjson
import pytest
from sqlalchemy import select

from sitetwin.config import load_settings
from sitetwin.wiring import Pipeline
from tests.support import publish, wait_for
from tests.twin.conftest import add_site
from twin.models import Cell, LiveSiteState, Meter
from twin.store import open_store

pytestmark = pytest.mark.integration


def test_telemetry_reaches_the_twin_registered_or_not(tmp_path, mosquitto, influxdb, influx_db):
    url = f"sqlite:///{tmp_path / 'twin.sqlite'}"
    store = open_store(url)
    add_site(store, "REG1")
    settings = load_settings(
        None,
        mqtt={"servers": [mosquitto.url], "client_id": f"twin-{tmp_path.name}",
              "shared_group": f"tw{abs(hash(str(tmp_path))) % 10**8}"},
        influxdb={"url": influxdb.url, "database": influx_db},
        collector={"batch_size": 100, "batch_age": "100ms", "live_flush_interval": "200ms"},
        services={"state_dir": str(tmp_path / "state")},
        spool={"fsync": False},
        twin={"url": url},
    )
    now = int(time.time())
    payloads = [
        ("REG1/tower", {"ts": now - 60, "mains_ok": True, "battery_soc_pct": 99.0}),
        ("REG1/tower", {"ts": now, "mains_ok": False, "battery_soc_pct": 87.5,
                        "cabinet_temp_c": 31.0}),
        ("REG1/power", [{"ts": now - 30, "meter_id": "M-REG1", "energy_kwh": 100.0,
                         "power_kw": 6.5}]),
        ("REG1/interference", {"ts": now, "cell_id": "REG1-A", "band": "n78",
                               "ul_interference_dbm": -105.0}),
        ("STRANGER/tower", {"ts": now, "mains_ok": True}),
    ]
    messages = [(f"sites/{t}", orjson.dumps(p)) for t, p in payloads]
    pipeline = Pipeline(settings, twin=True, rules=False)
    pipeline.start()
    try:
        wait_for(pipeline.collector.subscribed.is_set, message="subscription")
        publish(mosquitto.host, mosquitto.port, messages)

        def flushed():
            with store.session() as s:
                return len(s.scalars(select(LiveSiteState)).all()) == 2 and s.get(Cell, "REG1-A")

        wait_for(flushed, timeout=30, message="live state flushed")
    finally:
        pipeline.stop()
    with store.session() as s:
        reg = s.get(LiveSiteState, "REG1")
        stranger = s.get(LiveSiteState, "STRANGER")
        meter = s.get(Meter, "M-REG1")
    assert (reg.mains_ok, reg.on_battery, reg.battery_soc_pct, reg.cabinet_temp_c, reg.power_kw,
            reg.energy_kwh, reg.registered) == (False, True, 87.5, 31.0, 6.5, 100.0, True)
    assert int(reg.last_seen.timestamp()) == now
    assert stranger.registered is False
    assert meter.site_id == "REG1"
    store.close()
