"""The collector against real Mosquitto and InfluxDB: exactly once in InfluxDB, nothing lost."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from connectors.collector import Collector
from connectors.deadletter import DeadLetterStore
from sitetwin.config import load_settings
from sitetwin.wiring import collector_config
from tests.support import collector_process, count, full_or_short, publish, tower_messages, wait_for

pytestmark = pytest.mark.integration


def _settings(tmp_path, mosquitto, influx_url, db, **extra):
    sections = {
        "mqtt": {"servers": [mosquitto.url], "client_id": f"c-{tmp_path.name}",
                 "shared_group": f"g{abs(hash(str(tmp_path))) % 10**8}"},
        "influxdb": {"url": influx_url, "database": db},
        "collector": {"batch_size": 500, "batch_age": "200ms", "metrics_interval": "1s"},
        "services": {"state_dir": str(tmp_path / "state")},
        "spool": {"fsync": False, "drain_interval": "200ms"},
    }
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return load_settings(None, **sections)


def _env(settings) -> dict[str, str]:
    """The same settings for a child process, through the environment."""
    return {
        "SITETWIN_MQTT__SERVERS": orjson.dumps(settings.mqtt.servers).decode(),
        "SITETWIN_MQTT__CLIENT_ID": settings.mqtt.client_id,
        "SITETWIN_MQTT__SHARED_GROUP": settings.mqtt.shared_group,
        "SITETWIN_INFLUXDB__URL": settings.influxdb.url,
        "SITETWIN_INFLUXDB__DATABASE": settings.influxdb.database,
        "SITETWIN_COLLECTOR__BATCH_SIZE": str(settings.collector.batch_size),
        "SITETWIN_COLLECTOR__BATCH_AGE": str(settings.collector.batch_age),
        "SITETWIN_SERVICES__STATE_DIR": str(settings.state_dir),
        "SITETWIN_SPOOL__FSYNC": "false",
        "SITETWIN_SPOOL__DRAIN_INTERVAL": "0.2",
        "SITETWIN_COLLECTOR__WORKERS": "1",  # one process as this client id (spool paths)
    }


def _host_port(mosquitto):
    return mosquitto.host, mosquitto.port


def test_published_messages_land_exactly_once_and_bad_ones_are_dead_lettered(
        tmp_path, mosquitto, influxdb, influx_db):
    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db)
    collector = Collector(collector_config(settings))
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        good = tower_messages(sites=20, per_site=50)
        now = int(time.time())
        bad = [
            ("sites/S0001/tower", b"{not json"),
            ("sites/S0001/tower", orjson.dumps({"ts": now, "mains_ok": "yes"})),
            ("sites/S0002/tower", orjson.dumps({"site_id": "S0003", "ts": now, "mains_ok": True})),
            ("sites/S0001/tower", b"\xff\xfe"),
            ("sites/S0001/power", orjson.dumps({"ts": now, "meter_id": "M 1", "energy_kwh": 1.0})),
            ("sites/S0001/tower", b"x" * (settings.mqtt.max_payload_bytes + 1)),
            ("sites/S0001/weather", b"{}"),
        ]
        power = [("sites/S0005/power", orjson.dumps([
            {"ts": now - 120, "meter_id": "M5", "energy_kwh": 10.0, "power_kw": 5.5, "note": "x"},
            {"ts": now - 60, "meter_id": "M5", "energy_kwh": 10.1, "power_kw": 5.6},
        ]))]
        publish(*_host_port(mosquitto), good + bad + power)
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(good),
                 message="all tower points")
        wait_for(lambda: collector.metrics.rejected_msgs == len(bad), message="rejections counted")
        # The power message was published last: wait for it too. A message that reaches the
        # collector after stop() began is left un-acked for the broker to redeliver, so it
        # would (rightly) not be in InfluxDB yet.
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(energy_kwh) FROM power") == 2,
                 message="both power points")
    finally:
        collector.stop()
    assert count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(good)
    assert count(influxdb, influx_db, "SELECT count(energy_kwh) FROM power") == 2
    store = DeadLetterStore(settings.dead_letter_path)
    assert store.counts() == {"bad_encoding": 1, "bad_json": 1, "oversize": 1, "schema": 2,
                              "site_mismatch": 1, "unknown_stream": 1}
    letters = store.list(limit=10)
    assert {d.topic for d in letters} >= {"sites/S0001/weather", "sites/S0002/tower"}
    oversize = store.list(reason="oversize")[0]
    assert oversize.truncated and oversize.payload_bytes == settings.mqtt.max_payload_bytes + 1
    assert collector.metrics.unknown_fields == 1
    # the collector's own counters reached InfluxDB
    assert count(influxdb, influx_db, "SELECT count(received_msgs) FROM sitetwin_pipeline") >= 1


# Two minutes in CI; 20 s on a developer's default run (tests.support.full_or_short).
OUTAGE_S = full_or_short(120, 20)


@pytest.mark.slow
def test_influxdb_down_for_two_minutes_spools_then_drains_without_loss(
        tmp_path, mosquitto, private_influxdb):
    db = private_influxdb.database
    settings = _settings(tmp_path, mosquitto, private_influxdb.url, db)
    collector = Collector(collector_config(settings))
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        first = tower_messages(sites=10, per_site=30)
        publish(*_host_port(mosquitto), first)
        wait_for(lambda: count(private_influxdb, db, "SELECT count(mains_ok) FROM tower") == len(first))
        private_influxdb.stop()
        outage_start = time.monotonic()
        # A steady load all through the outage: every second, one reading per site.
        during = tower_messages(sites=10, per_site=int(OUTAGE_S), start_s=1_795_000_000)
        second = 0
        while time.monotonic() - outage_start < OUTAGE_S and second * 10 < len(during):
            publish(*_host_port(mosquitto), during[second * 10:(second + 1) * 10])
            second += 1
            time.sleep(max(0.0, outage_start + second - time.monotonic()))
        sent = during[:second * 10]
        # acknowledged by the collector only once spooled
        wait_for(lambda: collector.metrics.spooled_points >= len(sent), message="spooled")
        assert collector.spool.batches > 0
        private_influxdb.start()
        wait_for(lambda: collector.spool.batches == 0, timeout=60, message="spool drained")
        total = len(first) + len(sent)
        wait_for(lambda: count(private_influxdb, db, "SELECT count(mains_ok) FROM tower") == total)
        # the spool's depth during the outage is in the collector's own metrics (spooled, then drained)
        out = private_influxdb.query("SELECT max(spool_bytes), max(spool_batches) FROM sitetwin_pipeline",
                                     db=db)
        _, max_bytes, max_batches = out["results"][0]["series"][0]["values"][0]
        assert max_bytes > 0 and max_batches > 0
    finally:
        collector.stop()
    assert collector.metrics.drained_points >= len(sent)


def test_collector_killed_mid_stream_loses_nothing(tmp_path, mosquitto, influxdb, influx_db):
    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db)
    env = _env(settings)
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log, wait_subscribed=True)
    messages = tower_messages(sites=50, per_site=200)  # 10 000
    try:
        import threading

        done = threading.Event()

        def _publish():
            publish(*_host_port(mosquitto), messages)
            done.set()

        t = threading.Thread(target=_publish)
        t.start()
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") > 1000,
                 message="ingest under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # subscribed, so its SIGTERM handler is in place before the finally below
        proc = collector_process(env, log_path=log, wait_subscribed=True)
        t.join(120)
        assert done.is_set()
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(messages),
                 timeout=60, message=f"all {len(messages)} points after restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]


def test_two_collectors_share_the_load_and_the_union_is_complete(tmp_path, mosquitto, influxdb, influx_db):
    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db)
    env = _env(settings)
    procs = [collector_process(env, instance=i, log_path=tmp_path / f"c{i}.log",
                               wait_subscribed=True) for i in (1, 2)]
    try:
        messages = tower_messages(sites=40, per_site=100)
        publish(*_host_port(mosquitto), messages)
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(messages),
                 timeout=60, message="union complete")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
    assert all(p.returncode == 0 for p in procs)
    # both took a share: each wrote its own pipeline counters with received messages
    out = influxdb.query('SELECT last(received_msgs) FROM sitetwin_pipeline GROUP BY "collector"', db=influx_db)
    shares = {s["tags"]["collector"]: s["values"][0][1] for s in out["results"][0]["series"]}
    assert len(shares) == 2 and all(v > 0 for v in shares.values()), shares
    assert sum(shares.values()) == len(messages)


def test_nothing_is_queued_behind_stops_end_marker(tmp_path):
    """A message callback or the sealer still running as stop() closes the queue adds no batch
    after the end marker: the message is left un-acked (the broker redelivers it)."""
    import paho.mqtt.client as mqtt

    settings = _settings(tmp_path, type("M", (), {"url": "mqtt://127.0.0.1:1"})(),
                         "http://127.0.0.1:1", "unused")
    collector = Collector(collector_config(settings))
    done = []
    collector._make_durable = done.append

    def message(mid: int):
        topic, payload = tower_messages(sites=1, per_site=mid)[-1]
        msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
        msg.payload, msg.qos = payload, 1
        return msg

    try:
        collector._on_message(None, None, message(1))
        collector._close_queue()  # what stop() does once on_message is detached
        collector._on_message(None, None, message(2))  # a callback that was already running
        collector._seal_loop()  # the sealer too ends at once and queues nothing
        for _ in range(collector._writers):
            collector._write_loop()  # each writer returns at its end marker
    finally:
        collector.dead_letters.close()
    assert [[mid for mid, _ in b.acks] for b in done] == [[1]]
    assert collector._queue.empty() and collector._batch is None


class _Flaky:
    """A real InfluxWriter whose first ``failures`` writes raise what no handler expects."""

    def __init__(self, real, failures: int) -> None:
        self.real, self.failures = real, failures

    def write(self, body):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("surprise from a library")
        return self.real.write(body)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_the_writer_survives_an_unexpected_error_and_retries_the_same_batch(
        tmp_path, mosquitto, influxdb, influx_db):
    from connectors.influx import InfluxWriter

    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db,
                         collector={"metrics_interval": "1h"})
    collector = Collector(collector_config(settings), writer=_Flaky(InfluxWriter(influxdb.url, database=influx_db), 3))
    collector.start()
    good = tower_messages(sites=10, per_site=20)
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        publish(*_host_port(mosquitto), good)
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(good),
                 message="every reading despite the errors")
        assert collector.metrics.writer_errors == 3
        assert collector._threads[0].is_alive()
    finally:
        collector.stop()


def test_a_failing_dead_letter_store_holds_back_no_valid_reading(tmp_path, mosquitto, influxdb, influx_db):
    from connectors.errors import DeadLetterError

    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db,
                         collector={"metrics_interval": "1h"})
    collector = Collector(collector_config(settings))

    def broken(*args, **kwargs):
        raise DeadLetterError("cannot write the dead-letter store: database or disk is full")

    collector.dead_letters.add_many = broken
    collector.dead_letters.contains = broken
    collector.start()
    good = tower_messages(sites=10, per_site=20)
    bad = [("sites/JUNK/tower", orjson.dumps({"ts": 1_790_000_000 + i, "mains_ok": "junk"})) for i in range(30)]
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        interleaved = [m for pair in zip(good, bad * 7, strict=False) for m in pair]
        publish(*_host_port(mosquitto), interleaved + good[len(bad) * 7:])
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == len(good),
                 message="every valid reading")
        wait_for(lambda: collector.metrics.dead_letter_failed == min(len(bad) * 7, len(good)),
                 message="the failures counted")
    finally:
        collector.stop()


def test_the_watchdog_reports_a_collector_that_makes_nothing_durable(tmp_path, mosquitto, influxdb, influx_db):
    import threading

    from connectors.influx import InfluxWriter

    class Hung(_Flaky):
        def write(self, body):
            release.wait(60)  # a write that never returns (no timeout would save us)
            return self.real.write(body)

    release = threading.Event()
    stalls: list[str] = []
    settings = _settings(tmp_path, mosquitto, influxdb.url, influx_db, collector={"metrics_interval": "1h"})
    collector = Collector(collector_config(settings), writer=Hung(InfluxWriter(influxdb.url, database=influx_db), 0),
                          watchdog=1.5, on_stall=stalls.append)
    collector.start()
    try:
        wait_for(collector.subscribed.is_set, message="subscription")
        publish(*_host_port(mosquitto), tower_messages(sites=2, per_site=5))
        wait_for(lambda: stalls, timeout=15, message="the watchdog")
        assert "made nothing durable" in stalls[0]
    finally:
        release.set()
        collector.stop()
