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


def test_size_cap_drops_payload_bodies_first_then_oldest_rows_and_keeps_the_counts(tmp_path):
    cap = 128 * 1024
    store = DeadLetterStore(tmp_path / "dl.sqlite", max_payload_bytes=16 * 1024, max_bytes=cap)
    junk = [DeadLetter("schema", f"junk {i} " + "d" * 300, bytes([65 + i % 26]) * 16 * 1024,
                       topic="sites/JUNK/tower") for i in range(800)]  # 13 MB of payloads
    for i in range(0, len(junk), 20):
        store.add_many(junk[i:i + 20])
        assert store.used_bytes() <= cap
    letters = store.list(limit=1000)
    assert letters[0].detail.startswith("junk 799 ")  # the newest are kept
    assert any(d.payload_dropped and d.payload == b"" and d.payload_bytes == 16 * 1024 for d in letters)
    assert store.counts() == {"schema": 800}  # nothing uncounted, rows pruned or not
    assert store.pruned() == {"schema": 800 - len(letters)} and len(letters) < 800
    # small rows fit again
    store.add_many([DeadLetter("bad_json", "x", b"{", topic="sites/S1/tower")])
    assert store.counts() == {"bad_json": 1, "schema": 800}
    assert store.list(limit=1)[0].payload == b"{"


def test_age_cap_removes_old_rows_and_keeps_their_counts(tmp_path):
    store = DeadLetterStore(tmp_path / "dl.sqlite", max_age=3600)
    now = 1_800_000_000.0
    store.add_many([DeadLetter("schema", "old", b"1", received_at=now - 7200),
                    DeadLetter("schema", "new", b"2", received_at=now - 60)])
    store.prune(now=now)
    assert [d.detail for d in store.list()] == ["new"]
    assert store.counts() == {"schema": 2} and store.pruned() == {"schema": 1}


def test_sqlite_failures_become_dead_letter_errors_and_the_store_recovers(tmp_path):
    import pytest

    from connectors.errors import ConnectorError, DeadLetterError

    path = tmp_path / "dl.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = DeadLetterStore(path)  # opens lazily: constructing never fails
    for call in (lambda: store.add_many([DeadLetter("schema", "x", b"1")]),
                 lambda: store.contains("t", b"1"), store.counts, store.list):
        with pytest.raises(DeadLetterError) as info:
            call()
        assert isinstance(info.value, ConnectorError)
    path.unlink()
    store.add_many([DeadLetter("schema", "x", b"1")])  # reopened once the file is usable
    assert store.total() == 1
    store.close()
    unwritable = DeadLetterStore(tmp_path / "missing-parent-is-a-file" / "dl.sqlite")
    (tmp_path / "missing-parent-is-a-file").write_text("a file, not a directory")
    with pytest.raises(DeadLetterError, match="cannot open"):
        unwritable.add_many([DeadLetter("schema", "x", b"1")])
