"""Payload schemas of docs/contracts.md section 1: what is accepted, what is rejected and why."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from connectors.reading import InterferenceReading, PowerReading, TowerReading, parse_message

NOW = datetime(2026, 11, 24, 8, 15, tzinfo=UTC)


def parse(topic: str, doc: object, **kw):
    payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return parse_message(topic, payload, NOW, **kw)


def test_each_stream_parses_into_its_frozen_model():
    tower = parse("sites/S1/tower", {"ts": "2026-11-24T08:15:00Z", "mains_ok": True,
                                     "battery_soc_pct": 97.5, "cabinet_temp_c": -3})
    power = parse("sites/S1/power", {"ts": 1795508100, "meter_id": "M-1", "energy_kwh": 12.5,
                                     "power_kw": 3})
    itf = parse("sites/S1/interference", {"ts": 1795508100.5, "cell_id": "C1", "band": "n78",
                                          "ul_interference_dbm": -108.2, "prb_dbm": [-110.0] * 273})
    assert [type(p.readings[0]) for p in (tower, power, itf)] == [
        TowerReading, PowerReading, InterferenceReading]
    assert tower.readings[0].ts == NOW and tower.readings[0].site_id == "S1"
    assert power.readings[0].ts_ns == 1795508100 * 10**9
    assert itf.readings[0].ts_ns == 1795508100_500_000_000
    assert itf.readings[0].period_s == 900 and len(itf.readings[0].prb_dbm) == 273
    with pytest.raises(ValidationError):
        tower.readings[0].mains_ok = False  # frozen


def test_an_array_is_a_backlog_and_unknown_fields_are_counted_not_stored():
    doc = [{"ts": 1795508000 + i, "mains_ok": False, "vendor_x": 1, "vendor_y": 2} for i in range(5)]
    parsed = parse("sites/S1/tower", doc)
    assert parsed.ok and len(parsed.readings) == 5
    assert parsed.unknown_fields == 10
    assert not hasattr(parsed.readings[0], "vendor_x")


@pytest.mark.parametrize(("topic", "doc", "reason"), [
    ("sites/S1/tower", b"{not json", "bad_json"),
    ("sites/S1/tower", b"\xff\xfe{}", "bad_encoding"),
    ("sites/S1/tower", [], "empty"),
    ("sites/S1/tower", 42, "not_a_reading"),
    ("sites/S1/tower", [{"ts": 1795508000, "mains_ok": True}, 7], "not_a_reading"),
    ("sites/S1/tower", {"ts": 1795508000, "mains_ok": True, "site_id": "S2"}, "site_mismatch"),
    ("sites/S 1/tower", {"ts": 1795508000, "mains_ok": True}, "bad_site_id"),
    ("sites/S1/weather", {"ts": 1795508000}, "unknown_stream"),
    ("devices/S1/tower", {"ts": 1795508000, "mains_ok": True}, "bad_topic"),
    ("sites/S1/tower", {"ts": 1795508000}, "schema"),
    ("sites/S1/tower", {"ts": 1795508000, "mains_ok": 1}, "schema"),
    ("sites/S1/tower", {"ts": 1795508000, "mains_ok": True, "battery_soc_pct": 101}, "schema"),
    ("sites/S1/tower", {"ts": 1795508000, "mains_ok": True, "cabinet_temp_c": -41}, "schema"),
    ("sites/S1/tower", b'{"ts": 1795508000, "mains_ok": true, "humidity_pct": NaN}', "bad_json"),
    ("sites/S1/tower", {"ts": "yesterday", "mains_ok": True}, "schema"),
    ("sites/S1/tower", {"ts": 1795508100 + 301, "mains_ok": True}, "future_ts"),
    ("sites/S1/tower", {"ts": 100, "mains_ok": True}, "ancient_ts"),
    ("sites/S1/power", {"ts": 1795508000, "meter_id": "M 1", "energy_kwh": 1}, "schema"),
    ("sites/S1/power", {"ts": 1795508000, "meter_id": "M1", "energy_kwh": -1}, "schema"),
    ("sites/S1/power", {"ts": 1795508000, "meter_id": "M1", "energy_kwh": 1, "power_kw": 501},
     "schema"),
    ("sites/S1/interference", {"ts": 1795508000, "cell_id": "C1", "band": "n78",
                               "ul_interference_dbm": -30}, "schema"),
    ("sites/S1/interference", {"ts": 1795508000, "cell_id": "C1", "band": "x,y=z",
                               "ul_interference_dbm": -100}, "schema"),
    ("sites/S1/interference", {"ts": 1795508000, "cell_id": "C1", "band": "n78",
                               "ul_interference_dbm": -100, "prb_dbm": [-100.0] * 276}, "schema"),
])
def test_bad_messages_are_rejected_with_a_reason(topic, doc, reason):
    parsed = parse(topic, doc)
    assert not parsed.ok and not parsed.readings
    assert parsed.rejection.reason == reason, parsed.rejection
    assert parsed.rejection.detail


def test_one_bad_reading_rejects_the_whole_message_and_names_its_index():
    doc = [{"ts": 1795508000, "mains_ok": True}, {"ts": 1795508060, "mains_ok": "yes"}]
    parsed = parse("sites/S1/tower", doc)
    assert parsed.rejection.reason == "schema"
    assert parsed.rejection.detail.startswith("reading[1].mains_ok")


def test_oversize_payload_is_refused_before_parsing():
    parsed = parse("sites/S1/tower", b"x" * 2000, max_payload_bytes=1000)
    assert parsed.rejection.reason == "oversize"


def test_readings_older_than_the_horizon_are_too_old():
    day = 86400
    now_s = int(NOW.timestamp())
    # The default horizon is 400 days: a backlog within it is taken, one reading beyond refuses all.
    assert parse("sites/S1/tower", {"ts": now_s - 399 * day, "mains_ok": True}).ok
    old = parse("sites/S1/tower", [{"ts": now_s - 60, "mains_ok": True},
                                   {"ts": "2020-01-01T00:00:00Z", "mains_ok": True}])
    assert old.rejection.reason == "too_old"
    assert old.rejection.detail.startswith("reading[1].ts 2020-01-01") and "400-day" in old.rejection.detail
    # A configured horizon (here one day), compared to this message's ``now``.
    assert parse("sites/S1/tower", {"ts": now_s - day + 1, "mains_ok": True}, max_age_s=day).ok
    assert parse("sites/S1/tower", {"ts": now_s - day - 1, "mains_ok": True},
                 max_age_s=day).rejection.reason == "too_old"
    # Before 2000 stays ancient_ts whatever the horizon.
    assert parse("sites/S1/tower", {"ts": 100, "mains_ok": True},
                 max_age_s=60 * 365 * day).rejection.reason == "ancient_ts"


@pytest.mark.parametrize("ts", ["２０２６-11-24T08:00:00Z", "2026-11-24T０8:00:00Z",
                                "2026-11-24T08:00:00+0８:00"])
def test_times_take_ascii_digits_only(ts):
    parsed = parse("sites/S1/tower", {"ts": ts, "mains_ok": True})
    assert parsed.rejection.reason == "schema" and "ts" in parsed.rejection.detail


def _shards(influx, db: str) -> int:
    out = influx.query("SHOW SHARDS")
    return sum(len(s["values"]) for s in out["results"][0].get("series") or [] if s["name"] == db)


@pytest.mark.integration
def test_a_device_replaying_readings_since_2000_stores_only_the_horizon(
        tmp_path, mosquitto, influxdb, influx_db):
    """One device publishes a reading a week since 2000 (the issue: InfluxDB opened 1 400
    shards for it).  Through broker and collector: exactly the readings within the horizon are
    stored (series and timestamp), the rest are dead-lettered as ``too_old``, and InfluxDB
    opens no shard group older than the horizon."""
    import signal
    import time

    from connectors.deadletter import DeadLetterStore
    from tests.connectors.test_faults import assert_exactly_once
    from tests.connectors.test_hostile import collector_env, wait_until_ingesting
    from tests.support import collector_process, publish, wait_for

    week = 7 * 86400
    now_s = int(time.time())
    horizon_s = 400 * 86400
    start = 946_684_800 + 3600  # 2000-01-01T01:00Z
    all_ts = list(range(start, now_s - 3600, week))
    # Leave a day's margin around the horizon: the collector's clock moves during the test.
    all_ts = [t for t in all_ts if abs(t - (now_s - horizon_s)) > 86400]
    messages = [("sites/W0001/tower", orjson.dumps({"ts": t, "mains_ok": True})) for t in all_ts]
    kept = [m for m, t in zip(messages, all_ts, strict=False) if t > now_s - horizon_s]
    refused = [m for m, t in zip(messages, all_ts, strict=False) if t <= now_s - horizon_s]
    assert len(refused) > 1300 and 50 < len(kept) < 60

    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db)
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log, wait_subscribed=True)
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        shards_before = _shards(influxdb, influx_db)
        assert publish(mosquitto.host, mosquitto.port, messages) == len(messages)
        dead = tmp_path / "state" / "rejected.sqlite"

        def too_old() -> int:
            if not dead.exists():
                return 0
            store = DeadLetterStore(dead)
            try:
                return sum(d.reason == "too_old" for d in store.list(limit=100_000))
            finally:
                store.close()

        wait_for(lambda: too_old() == len(refused), timeout=120, message="the too_old dead letters")
        from tests.connectors.test_faults import wait_all

        wait_all(influxdb, influx_db, "W", len(kept))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]
    assert_exactly_once(influxdb, influx_db, "W", kept)
    store = DeadLetterStore(tmp_path / "state" / "rejected.sqlite")
    try:
        letters = [d for d in store.list(limit=100_000) if d.reason == "too_old"]
    finally:
        store.close()
    assert sorted(d.payload for d in letters) == sorted(p for _, p in refused)
    # One shard group per week reached: at most the horizon's 58 weeks (+1 at each end).
    assert _shards(influxdb, influx_db) - shards_before <= len(kept) + 2
