"""The dead-letter store: every rejected message kept with its reason, counted, truncated to a cap."""

from __future__ import annotations

from connectors.deadletter import DeadLetter, DeadLetterStore


def test_letters_are_kept_counted_and_truncated(tmp_path):
    store = DeadLetterStore(tmp_path / "dl.sqlite", max_payload_bytes=10)
    store.add_many([
        DeadLetter("bad_json", "payload is not JSON", b"{nope", topic="sites/S1/tower"),
        DeadLetter("oversize", "too big", b"z" * 100, topic="sites/S1/power"),
        DeadLetter("bad_json", "payload is not JSON", b"[", topic="sites/S2/tower"),
        DeadLetter("field type conflict", "InfluxDB said no", b"m v=1 1", source="influxdb"),
    ])
    assert store.counts() == {"bad_json": 2, "field type conflict": 1, "oversize": 1}
    assert store.total() == 4
    big = store.list(reason="oversize")[0]
    assert big.payload == b"z" * 10 and big.truncated and big.payload_bytes == 100
    assert store.contains("sites/S1/tower", b"{nope")
    assert not store.contains("sites/S9/tower", b"{nope")
    assert [d.reason for d in store.list(source="influxdb")] == ["field type conflict"]
    as_json = store.list(limit=1)[0].as_dict()
    assert set(as_json) >= {"id", "received_at", "topic", "reason", "detail", "payload"}
    store.close()
    reopened = DeadLetterStore(tmp_path / "dl.sqlite")
    assert reopened.total() == 4
