"""The Modbus gateway on loopback: pymodbus's server, a dead device, a broker outage; counts in InfluxDB."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from adapters.device import Device, load_profile
from adapters.gateway import Gateway
from adapters.sink import ReadingSink
from core.settings import load_settings
from tests.adapters.servers import ModbusServer, Proxy, SilentDevice, words
from tests.adapters.test_watcher import _stored
from tests.connectors.test_hostile import collector_env
from tests.support import collector_process, wait_for

pytestmark = pytest.mark.integration

METER = words(("uint32", 100000), ("uint16", 2300), ("uint16", 500), ("int32", 1500),
              ("int16", 990))
PLANT = words(("uint16", 0b1), ("uint16", 5342), ("uint16", 456), ("uint16", 87), ("int16", 215),
              ("uint16", 0))


def _fleet(server: ModbusServer, silent: SilentDevice, prefix: str):
    meter, plant = load_profile("generic-meter"), load_profile("generic-rectifier")
    devices = [(Device(site_id=f"{prefix}{u}", meter_id=f"{prefix}{u}-M", host="127.0.0.1",
                       port=server.port, unit=u, profile="generic-meter"), meter)
               for u in range(1, 5)]
    devices.append((Device(site_id=f"{prefix}5", host="127.0.0.1", port=server.port, unit=5,
                           profile="generic-rectifier"), plant))
    devices.append((Device(id="short", site_id=f"{prefix}6", meter_id=f"{prefix}6-M",
                           host="127.0.0.1", port=server.port, unit=6, profile="generic-meter"),
                    meter))
    devices.append((Device(id="dead", site_id=f"{prefix}7", meter_id=f"{prefix}7-M",
                           host="127.0.0.1", port=silent.port, unit=1, profile="generic-meter",
                           timeout=1.0, retries=1), meter))
    return devices


def _settings(tmp_path, broker_url: str):
    return load_settings(None, mqtt={"servers": [broker_url], "reconnect_min": "200ms",
                                     "reconnect_max": "500ms"},
                         services={"state_dir": str(tmp_path / "state")},
                         adapters={"gateway": {"interval": "300ms", "workers": 4, "fsync": False,
                                               "flush_interval": "200ms", "backoff_max": "5s"}})


def _check_exact(influx, db, gateway, prefix: str) -> None:
    by_name = {s.device.name: s for s in gateway.devices}
    power = [r for r in _stored(influx, db, "power", "ms") if r["site_id"].startswith(prefix)]
    tower = [r for r in _stored(influx, db, "tower", "ms") if r["site_id"].startswith(prefix)]
    meters_ok = sum(by_name[f"{prefix}{u}-M"].polls_ok for u in range(1, 5))
    assert len(power) == len({(r["meter_id"], r["time"]) for r in power}) == meters_ok
    assert len(tower) == len({r["time"] for r in tower}) == by_name[f"{prefix}5@127.0.0.1:"
                                                                  f"{gateway.devices[4].device.port}/5"].polls_ok
    assert gateway.readings_polled == gateway.readings_published == meters_ok + len(tower)
    assert gateway.buffer.batches == 0
    row = next(r for r in power if r["meter_id"] == f"{prefix}1-M")
    assert (row["voltage_v"], row["current_a"], row["power_kw"], row["power_factor"]) == \
        (230.0, 5.0, 1.5, 0.99)
    assert row["energy_kwh"] > 1000.0
    assert (tower[0]["mains_ok"], tower[0]["battery_voltage_v"], tower[0]["cabinet_temp_c"]) == \
        (True, 53.42, 21.5)


def test_a_dead_and_a_refusing_device_do_not_delay_the_others(tmp_path, mosquitto, influxdb,
                                                              influx_db):
    server = ModbusServer({1: METER, 2: METER, 3: METER, 4: METER, 5: PLANT, 6: [0] * 3},
                          tick=frozenset({1, 2, 3, 4})).start()
    silent = SilentDevice()
    proc = collector_process(collector_env(tmp_path, mosquitto, influxdb.url, influx_db),
                             log_path=tmp_path / "c.log", wait_subscribed=True)
    settings = _settings(tmp_path, mosquitto.url)
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="gateway")
    sink.connect()
    gateway = Gateway(settings.adapters.gateway, sink, _fleet(server, silent, "GA"), state_dir=settings.state_dir,
                      buffer_max_bytes=settings.spool.max_bytes)
    stop = threading.Event()
    thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        by_name = {s.device.name: s for s in gateway.devices}
        wait_for(lambda: min(s.polls_ok for s in gateway.devices[:5]) >= 10, timeout=60,
                 message="10 polls of every working device")
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(60)
        wait_for(lambda: len(_stored(influxdb, influx_db, "power")) >= sum(
            s.polls_ok for s in gateway.devices[:4]), timeout=60, message="every power point")
    finally:
        stop.set()
        gateway.close()
        sink.close()
        proc.terminate()
        proc.wait(30)
        silent.stop()
        server.stop()
    # The working devices kept their 0.3 s cadence while the dead one held a worker 2 s
    # a poll (timeout 1 s, one retry) and backed off; polled in turn, 10 rounds would take
    # well over 10 s.
    assert elapsed < 10.0, f"10 polls took {elapsed:.1f}s"
    times = sorted(r["time"] for r in _stored(influxdb, influx_db, "power", "ms")
                   if r["meter_id"] == "GA1-M")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 1500, f"a working meter waited {max(gaps)} ms between polls"
    dead, short = by_name["dead"], by_name["short"]
    assert dead.polls_ok == 0 and set(dead.errors) == {"timeout"}
    assert dead.attempts_failed == 2 * dead.polls_failed  # one retry per poll
    assert 1 <= dead.polls_failed <= 4  # back-off: 0.3, 0.6, 1.2, 2.4 s after 2 s polls
    assert short.polls_ok == 0 and set(short.errors) == {"exception"}
    assert "code 2" in short.last_error
    _check_exact(influxdb, influx_db, gateway, "GA")


def test_a_broker_outage_during_polling_loses_nothing_and_duplicates_nothing(
        tmp_path, mosquitto, influxdb, influx_db):
    server = ModbusServer({1: METER, 2: METER, 3: METER, 4: METER, 5: PLANT, 6: [0] * 3},
                          tick=frozenset({1, 2, 3, 4})).start()
    silent = SilentDevice()
    proxy = Proxy(mosquitto.host, mosquitto.port)
    proc = collector_process(collector_env(tmp_path, mosquitto, influxdb.url, influx_db),
                             log_path=tmp_path / "c.log", wait_subscribed=True)
    settings = _settings(tmp_path, proxy.url)
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="gateway")
    sink.connect()
    gateway = Gateway(settings.adapters.gateway, sink, _fleet(server, silent, "GB"), state_dir=settings.state_dir,
                      buffer_max_bytes=settings.spool.max_bytes)
    stop = threading.Event()
    thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: gateway.readings_published >= 20, timeout=60, message="first readings")
        proxy.cut()  # the gateway's broker is unreachable; polling goes on
        cut_at = gateway.readings_polled
        wait_for(lambda: gateway.readings_polled >= cut_at + 40 and gateway.buffer.batches >= 3,
                 timeout=60, message="polling on, readings piling up on disk")
        assert gateway.readings_published < gateway.readings_polled
        proxy.restore()
        wait_for(lambda: gateway.readings_published >= cut_at + 40, timeout=60,
                 message="the backlog published after the outage")
        stop.set()
        thread.join(60)
        wait_for(lambda: len(_stored(influxdb, influx_db, "power")) + len(
            _stored(influxdb, influx_db, "tower")) >= gateway.readings_polled, timeout=60,
                 message="every polled reading in InfluxDB")
    finally:
        stop.set()
        gateway.close()
        sink.close()
        proc.terminate()
        proc.wait(30)
        proxy.close()
        silent.stop()
        server.stop()
    assert sink.publisher.reconnects >= 1
    _check_exact(influxdb, influx_db, gateway, "GB")


def test_the_command_polls_a_devices_file_once(tmp_path, mosquitto):
    import os
    import subprocess
    import sys

    import orjson

    from tests.support import ROOT

    server = ModbusServer({1: METER, 5: PLANT}).start()
    devices = tmp_path / "devices.toml"
    devices.write_text(
        f'[[device]]\nsite_id = "GC1"\nmeter_id = "GC1-M"\nhost = "127.0.0.1"\nport = {server.port}\n'
        f'profile = "generic-meter"\n'
        f'[[device]]\nsite_id = "GC1"\nhost = "127.0.0.1"\nport = {server.port}\nunit = 5\n'
        f'profile = "generic-rectifier"\n')
    env = {**os.environ, "SITETWIN_MQTT__SERVERS": f'["{mosquitto.url}"]',
           "SITETWIN_SERVICES__STATE_DIR": str(tmp_path / "state"),
           "SITETWIN_ADAPTERS__GATEWAY__FSYNC": "false"}
    try:
        out = subprocess.run([sys.executable, "-m", "sitetwin", "adapters", "gateway", "--devices",
                              str(devices), "--once", "--json"], env=env, cwd=ROOT,
                             capture_output=True, timeout=120, check=False)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr.decode()
    status = orjson.loads(out.stdout)
    assert status["readings_published"] == 2 and status["buffered_batches"] == 0
    assert [d["polls_ok"] for d in status["devices"]] == [1, 1]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[device]]\nsite_id = "GC1"\nhost = "h"\nprofile = "generic-meter"\n')
    out = subprocess.run([sys.executable, "-m", "sitetwin", "adapters", "gateway", "--devices",
                          str(bad), "--once"], env=env, cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert out.returncode == 1 and b"give meter_id" in out.stderr
