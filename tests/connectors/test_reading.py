"""Payload schemas of docs/contracts.md section 1: what is accepted, what is rejected and why."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

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
    with pytest.raises(Exception):
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
