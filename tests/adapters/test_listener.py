"""The write endpoint end to end: Telegraf-style POSTs -> broker -> `sitetwin run` -> InfluxDB."""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request

import orjson
import pytest

from adapters.listener import Listener
from adapters.sink import ReadingSink
from connectors.deadletter import DeadLetterStore
from core.settings import load_settings
from tests.adapters.test_watcher import _stored
from tests.connectors.test_hostile import collector_env, wait_until_ingesting
from tests.support import collector_process, wait_for

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-tests"


def _post(url: str, body: bytes, *, headers: dict | None = None, gz: bool = False):
    data = gzip.compress(body) if gz else body
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={**({"Content-Encoding": "gzip"} if gz else {}),
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start(tmp_path, broker, **listener):
    settings = load_settings(None, mqtt={"servers": [broker.url], "reconnect_min": "200ms",
                                         "reconnect_max": "1s"},
                             services={"state_dir": str(tmp_path / "state")},
                             adapters={"listener": {"listen": "127.0.0.1:0", "tokens": [TOKEN],
                                                    **listener}})
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="listener")
    sink.connect()
    server = Listener(settings.adapters.listener, sink)
    server.start()
    return settings, sink, server


def _tower_lines(sites: int, per_site: int, start_s: int, unit: int = 1) -> list[str]:
    return [f"tower,site_id=L{s:03d},host=gw-{s % 3} mains_ok=true,battery_soc_pct={50 + i}i,"
            f"cabinet_temp_c=21.5 {(start_s + 60 * i) * unit}"
            for i in range(per_site) for s in range(sites)]


def test_telegraf_batches_are_stored_exactly_and_other_lines_dead_lettered(
        tmp_path, mosquitto, influxdb, influx_db):
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db)
    proc = collector_process(env, log_path=tmp_path / "c.log", wait_subscribed=True)
    settings, sink, server = _start(tmp_path, mosquitto)
    now_s = int(time.time()) // 60 * 60 - 86400
    try:
        v2 = f"{server.url}/api/v2/write?org=o&bucket=b&precision=s"
        auth = {"Authorization": f"Token {TOKEN}"}
        # Unauthenticated and wrong tokens: 401, nothing published.
        assert _post(v2, b"tower,site_id=X1 mains_ok=true")[0] == 401
        assert _post(v2, b"tower,site_id=X1 mains_ok=true",
                     headers={"Authorization": "Token nope"})[0] == 401
        assert _post(f"{server.url}/write?u=a&p=nope", b"tower,site_id=X1 mains_ok=true")[0] == 401

        # A gzip batch with seconds, escaping in a foreign tag, PRB lines, one measurement
        # that is not ours, one value out of range and one line that is not line protocol.
        tower = _tower_lines(20, 30, now_s)
        extra = [
            f"interference,site_id=L001,cell_id=L001-1,band=n78 ul_interference_dbm=-105.5,"
            f"period_s=900i {now_s}",
            f"interference_prb,site_id=L001,cell_id=L001-1,band=n78 prb_000=-106,prb_001=-105 {now_s}",
            f"power,site_id=L002,meter_id=M\\ 2 energy_kwh=10.5 {now_s}",  # bad meter id: schema
            f"power,site_id=L002,meter_id=M2,region=Hai\\ Dian\\,BJ energy_kwh=10.5,power_kw=2 {now_s}",
            f"cpu,host=gw-1 usage_idle=99.5 {now_s}",
            "this is not line protocol",
            "# a comment",
            "",
        ]
        status, body = _post(v2, "\n".join(tower + extra).encode(), headers=auth, gz=True)
        assert status == 400, body
        answer = orjson.loads(body)
        assert answer["accepted"] == 602 and answer["refused"] == 3
        assert [(e["line"], e["reason"]) for e in answer["line_errors"]] == [
            (603, "schema"), (605, "unknown_measurement"), (606, "bad_line")]
        # A v1 write in milliseconds with u/p, all good: 204.
        more = _tower_lines(20, 10, now_s + 3600, unit=1000)
        status, body = _post(f"{server.url}/write?db=x&precision=ms&u=telegraf&p={TOKEN}",
                             "\n".join(more).encode())
        assert status == 204, body
        # Bearer and nanoseconds (the default precision).
        status, _ = _post(f"{server.url}/api/v2/write", "\n".join(
            _tower_lines(1, 1, now_s + 7200, unit=10**9)).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 204
        want_tower = 600 + 200 + 1
        wait_for(lambda: len(_stored(influxdb, influx_db, "tower")) >= want_tower, timeout=60,
                 interval=0.5, message=f"{want_tower} tower points")
        wait_for(lambda: _stored(influxdb, influx_db, "power"), timeout=30, message="power")
    finally:
        server.stop()
        sink.close()
        proc.terminate()
        proc.wait(30)
    towers = _stored(influxdb, influx_db, "tower")
    assert len(towers) == len({(r["site_id"], r["time"]) for r in towers}) == want_tower
    assert all("host" not in r for r in towers)
    assert {r["battery_soc_pct"] for r in towers if r["site_id"] == "L005"} == \
        set(range(50, 80)) | set(range(50, 60))
    [power] = _stored(influxdb, influx_db, "power")
    assert (power["meter_id"], power["energy_kwh"], power["power_kw"]) == ("M2", 10.5, 2.0)
    [itf] = _stored(influxdb, influx_db, "interference")
    assert (itf["cell_id"], itf["ul_interference_dbm"], itf["time"]) == ("L001-1", -105.5, now_s)
    [prb] = _stored(influxdb, influx_db, "interference_prb")
    assert (prb["prb_000"], prb["prb_001"]) == (-106.0, -105.0)
    assert server.accepted == 602 + 200 + 1 and server.refused == 3
    store = DeadLetterStore(settings.dead_letter_path)
    try:
        letters = store.list(source="listener")
    finally:
        store.close()
    assert sorted(d.reason for d in letters) == ["bad_line", "schema", "unknown_measurement"]
    assert {d.payload for d in letters} == {extra[2].encode(), extra[4].encode(), extra[5].encode()}


def test_a_broker_outage_is_503_and_the_retry_stores_each_point_once(
        tmp_path, private_mosquitto, influxdb, influx_db):
    env = collector_env(tmp_path, private_mosquitto, influxdb.url, influx_db)
    proc = collector_process(env, log_path=tmp_path / "c.log", wait_subscribed=True)
    wait_until_ingesting(private_mosquitto, influxdb, influx_db)
    _settings, sink, server = _start(tmp_path, private_mosquitto, ack_timeout="1s")
    now_s = int(time.time()) // 60 * 60 - 86400
    url = f"{server.url}/api/v2/write?precision=s"
    auth = {"Authorization": f"Token {TOKEN}"}
    first, second = _tower_lines(10, 5, now_s), _tower_lines(10, 5, now_s + 3600)
    try:
        assert _post(url, "\n".join(first).encode(), headers=auth)[0] == 204
        private_mosquitto.stop()
        status, body = _post(url, "\n".join(second).encode(), headers=auth)
        assert status == 503, body
        private_mosquitto.start()
        # Mosquitto routes to a restored shared subscription only once its member is back:
        # what the broker acknowledged before that is its loss, as for any device's message.
        log = tmp_path / "c.log"
        wait_for(lambda: log.read_text(errors="replace").count("session resumed") >= 1,
                 message="the collector back on its session")
        # Telegraf retries the refused batch: 204 once the broker is back.
        wait_for(lambda: _post(url, "\n".join(second).encode(), headers=auth)[0] == 204,
                 timeout=60, interval=1.0, message="a 204 after the broker is back")
        wait_for(lambda: len(_stored(influxdb, influx_db, "tower")) >= 101, timeout=60,
                 interval=0.5, message="every tower point")
    finally:
        server.stop()
        sink.close()
        proc.terminate()
        proc.wait(30)
    rows = [r for r in _stored(influxdb, influx_db, "tower") if r["site_id"].startswith("L")]
    assert len(rows) == len({(r["site_id"], r["time"]) for r in rows}) == 100


def test_the_command_serves_until_sigterm_and_logs_no_token(tmp_path, mosquitto):
    import os
    import signal
    import subprocess
    import sys

    from sitetwin.services import free_port
    from tests.support import ROOT

    port = free_port()
    env = {**os.environ, "SITETWIN_MQTT__SERVERS": f'["{mosquitto.url}"]',
           "SITETWIN_SERVICES__STATE_DIR": str(tmp_path / "state"),
           "SITETWIN_ADAPTERS__LISTENER__TOKENS": f'["{TOKEN}"]'}
    log = tmp_path / "listen.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "-vv", "adapters", "listen",
                                 "--listen", f"127.0.0.1:{port}"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"

            def up():
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                        return r.status == 204
                except OSError:
                    return False

            wait_for(up, timeout=30, message="the listener answering /ping")
            status, _ = _post(f"{url}/write?u=x&p={TOKEN}&precision=s",
                              f"tower,site_id=CLI1 mains_ok=true {int(time.time()) - 60}".encode())
            assert status == 204
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    text = log.read_text(errors="replace")
    assert "listening for line protocol" in text and TOKEN not in text
