"""Retained alarms on MQTT: a subscriber that connects later sees the open flags per site and
a fleet summary, republished from the registry after each change (real Mosquitto)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from rules.flag import FlagBook
from rules.sink import ALARMS_TOPIC, alarm_messages, publish_site_alarms
from sitetwin.config import load_settings
from tests.support import wait_for
from twin.models import Flag

T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)


def _flag(store, site: str, kind: str, severity: str, status: str = "open") -> int:
    with store.session() as s:
        f = Flag(kind=kind, rule=kind, site_id=site, severity=severity, status=status, opened_at=T0,
                 updated_at=T0, window_start=T0, window_end=T0, summary=f"{site} {kind}",
                 evidence={}, dedup_key=f"{kind}:{site}")
        s.add(f)
        s.flush()
        return f.id


def late_subscriber(broker, expect: set[str]) -> dict:
    """Connect now, subscribe, and return the retained messages the broker hands over once
    those on the ``expect`` topics are in."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"late-{time.time_ns()}",
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{ALARMS_TOPIC}/#", 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        wait_for(subscribed.is_set, message="subscription")
        # ``sitetwin/alarms/#`` matches the summary topic too; retained messages follow the SUBACK.
        wait_for(lambda: expect <= set(got), timeout=10, message=f"retained {sorted(expect)}")
    finally:
        client.disconnect()
        client.loop_stop()
    return {t: json.loads(p) if p else None for t, p in got.items()}


def test_alarm_messages_clear_a_site_without_open_flags():
    flags = [{"id": 1, "site_id": "S1", "kind": "mains_failure", "severity": "critical"},
             {"id": 2, "site_id": "S1", "kind": "site_offline", "severity": "warning"}]
    msgs = alarm_messages(flags, ["S1", "S2"], T0)
    by_topic = {t: (p, r) for t, p, r in msgs}
    assert all(r for _, r in by_topic.values())
    assert json.loads(by_topic["sitetwin/alarms/S1"][0])["flags"] == flags
    assert by_topic["sitetwin/alarms/S2"][0] == b""  # an empty retained message clears it
    summary = json.loads(by_topic[ALARMS_TOPIC][0])
    assert summary["open"] == 2 and summary["by_severity"] == {"critical": 1, "warning": 1}
    assert summary["sites"] == ["S1"]


@pytest.mark.integration
def test_a_late_subscriber_sees_the_open_alarms(private_mosquitto, tmp_path):
    from twin.store import open_store

    settings = load_settings(None, mqtt={"servers": [private_mosquitto.url]},
                             services={"state_dir": str(tmp_path / "state")})
    store = open_store(f"sqlite:///{tmp_path / 'twin.sqlite'}")
    try:
        mains = _flag(store, "S1", "mains_failure", "critical")
        _flag(store, "S1", "site_offline", "warning")
        off2 = _flag(store, "S2", "site_offline", "warning")
        _flag(store, "S3", "site_offline", "warning", status="resolved")
        assert publish_site_alarms(settings.mqtt, store, ["S1", "S2", "S3"]) == 4
        seen = late_subscriber(private_mosquitto, {ALARMS_TOPIC, "sitetwin/alarms/S1",
                                                   "sitetwin/alarms/S2"})
        assert [f["kind"] for f in seen["sitetwin/alarms/S1"]["flags"]] == ["mains_failure",
                                                                            "site_offline"]
        assert [f["id"] for f in seen["sitetwin/alarms/S2"]["flags"]] == [off2]
        assert "sitetwin/alarms/S3" not in seen
        assert seen[ALARMS_TOPIC]["open"] == 3 and seen[ALARMS_TOPIC]["sites"] == ["S1", "S2"]
        # S2's flag is dismissed and S1's mains failure acknowledged: republished, the late
        # subscriber sees S2 gone and the acknowledgement on S1.
        book = FlagBook(store)
        book.review(off2, "dismissed", "li.wei", T0)
        book.ack(mains, "zhang.san", T0)
        publish_site_alarms(settings.mqtt, store, ["S1", "S2"])
        seen = late_subscriber(private_mosquitto, {ALARMS_TOPIC, "sitetwin/alarms/S1"})
        assert "sitetwin/alarms/S2" not in seen
        assert seen["sitetwin/alarms/S1"]["flags"][0]["acknowledged_by"] == "zhang.san"
        assert seen[ALARMS_TOPIC]["open"] == 2
    finally:
        store.close()


def test_flag_lines_make_one_series_per_flag_and_one_span_per_flag():
    """A review and an escalation change fields, never tags: the flag stays one series.
    Its span is one point at the opening, given an end when it is resolved."""
    from datetime import timedelta

    from rules.sink import flag_lines

    def flag(status: str, severity: str, minute: int, resolved: bool = False) -> dict:
        at = T0 + timedelta(minutes=minute)
        return {"id": 42, "kind": "mains_failure", "rule": "mains_failure", "site_id": "S-1",
                "cell_id": None, "supplier_id": None, "severity": severity, "status": status,
                "summary": "on battery", "evidence": {}, "opened_at": T0, "updated_at": at,
                "resolved_at": at if resolved else None}

    lines = flag_lines([flag("open", "warning", 0), flag("confirmed", "critical", 5),
                        flag("resolved", "critical", 9, resolved=True)]).decode().splitlines()
    flags = [ln for ln in lines if ln.startswith("flags,")]
    spans = [ln for ln in lines if ln.startswith("flag_spans,")]
    assert {ln.split(" ")[0] for ln in flags} == {
        "flags,flag_id=42,kind=mains_failure,rule=mains_failure,site_id=S-1"}
    assert [ln.rsplit(" ", 1)[1] for ln in flags] == [
        str(int((T0 + timedelta(minutes=m)).timestamp()) * 10**9) for m in (0, 5, 9)]
    assert 'status="confirmed"' in flags[1] and 'severity="critical"' in flags[1]
    t0_ns = str(int(T0.timestamp()) * 10**9)
    assert {ln.split(" ")[0] for ln in spans} == {
        "flag_spans,flag_id=42,kind=mains_failure,site_id=S-1"}
    assert all(ln.rsplit(" ", 1)[1] == t0_ns for ln in spans)  # rewritten in place
    assert "ended_ms" not in spans[0] and "ended_ms" not in spans[1]
    assert f"ended_ms={int((T0 + timedelta(minutes=9)).timestamp() * 1000)}i" in spans[2]
