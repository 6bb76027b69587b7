"""The QoS 1 publisher against a real Mosquitto: everything delivered, window respected, reconnects."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.publisher import Publisher, PublishError, WirePublisher
from sitetwin.config import load_settings
from sitetwin.services import free_port
from tests.support import wait_for


class _Subscriber:
    """Counts distinct payloads on a topic filter with a persistent QoS 1 session."""

    def __init__(self, broker, topic: str, client_id: str) -> None:
        self.seen: set[bytes] = set()
        self.received = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 1)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.ready.wait(10), "subscription not acknowledged"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.received += 1
            self.seen.add(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _mqtt(broker, **mqtt_extra):
    """The ``[mqtt]`` section a publisher takes, for ``broker``."""
    return load_settings(None, mqtt={"servers": [broker.url], "reconnect_min": "200ms",
                                     "reconnect_max": "1s", **mqtt_extra}).mqtt


def _messages(n: int, prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/S{i % 50:04d}/tower", b'{"n":%d,"pad":"%s"}' % (i, b"x" * 250))
            for i in range(n)]


TRANSPORTS = pytest.mark.parametrize("make", [WirePublisher, Publisher], ids=["wire", "paho"])


@pytest.mark.integration
@TRANSPORTS
def test_every_qos1_message_is_acknowledged_and_delivered_within_the_window(private_mosquitto, make):
    sub = _Subscriber(private_mosquitto, "pubtest/+/tower", "sub-window")
    try:
        msgs = _messages(2000, "pubtest")
        seen_stats = []
        with make(_mqtt(private_mosquitto), max_inflight=25,
                       progress=seen_stats.append, progress_interval_s=0.0) as pub:
            assert pub.publish_all(msgs) == 2000
        stats = pub.stats()
        assert stats.published == stats.acked == 2000
        assert 0 < stats.max_unacked <= 25
        assert seen_stats, "progress callback never called"
        assert all(s.published - s.acked <= 25 for s in seen_stats)
        wait_for(lambda: len(sub.seen) == 2000, message="all 2000 messages at the subscriber")
        assert sub.seen == {p for _t, p in msgs}
    finally:
        sub.close()


@pytest.mark.integration
@TRANSPORTS
def test_a_broker_restart_mid_stream_loses_nothing(private_mosquitto, make):
    sub = _Subscriber(private_mosquitto, "restart/+/tower", "sub-restart")
    restarted = []

    def bounce(stats):
        if not restarted and stats.published >= 500:
            restarted.append(stats.acked)
            private_mosquitto.stop()
            private_mosquitto.start()

    try:
        msgs = _messages(1500, "restart")
        with make(_mqtt(private_mosquitto), max_inflight=200, progress=bounce,
                       progress_interval_s=0.0) as pub:
            pub.publish_all(msgs)
        stats = pub.stats()
        assert restarted, "the broker was never restarted"
        assert stats.reconnects >= 1
        assert stats.acked == 1500
        # QoS 1 is at least once: duplicates may arrive, losses may not.
        wait_for(lambda: len(sub.seen) == 1500, timeout=60, message="all 1500 distinct messages")
    finally:
        sub.close()


@TRANSPORTS
def test_an_unreachable_broker_is_a_clear_error(make):
    port = free_port()
    mqtt = load_settings(None, mqtt={"servers": [f"tcp://127.0.0.1:{port}"],
                                     "connection_timeout": "2s"}).mqtt
    with pytest.raises(PublishError, match=f"127.0.0.1:{port}"):
        make(mqtt).connect()


def test_window_and_rate_are_validated():
    mqtt = load_settings(None).mqtt
    with pytest.raises(ValueError):
        Publisher(mqtt, max_inflight=0)
    with pytest.raises(ValueError):
        Publisher(mqtt, max_inflight=65536)
    with pytest.raises(ValueError):
        Publisher(mqtt, rate=0)


@pytest.mark.integration
@TRANSPORTS
def test_the_rate_limit_holds_publishing_back(mosquitto, make):
    # A lower bound only: the limiter cannot let 400 messages through at 2000/s in under 0.2 s.
    with make(_mqtt(mosquitto), rate=2000.0) as pub:
        began = time.monotonic()
        pub.publish_all(_messages(400, "ratetest"))
        elapsed = time.monotonic() - began
    assert pub.stats().acked == 400
    assert elapsed >= 0.19


@pytest.fixture
def password_mosquitto(tmp_path):
    from connectors.broker import password_file
    from sitetwin.services import Mosquitto

    (tmp_path / "passwd").write_text(password_file({"sim": "s3cret-pw"}))
    port = free_port()
    svc = Mosquitto(root=tmp_path / "mq", port=port, extra_config=(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"))
    svc.start()
    yield svc
    svc.stop()


@pytest.mark.integration
@TRANSPORTS
def test_credentials_come_from_settings_and_a_refusal_is_clear(password_mosquitto, make, caplog):
    good = _mqtt(password_mosquitto, username="sim", password="s3cret-pw")
    with make(good) as pub:
        pub.publish_all(_messages(100, "auth"))
    assert pub.stats().acked == 100
    bad = _mqtt(password_mosquitto, username="sim", password="wrong-pw",
                connection_timeout="3s")
    with pytest.raises(PublishError) as err:
        make(bad).connect()
    assert "wrong-pw" not in str(err.value) and "wrong-pw" not in caplog.text


def test_wire_encoding_round_trips():
    from connectors.publisher import _connack_properties, _read_varint, _varint

    for n in (0, 1, 127, 128, 16383, 16384, 2_097_151, 268_435_455):
        assert _read_varint(_varint(n), 0) == (n, len(_varint(n)))
    assert _read_varint(b"\x80", 0) is None  # incomplete
    # CONNACK body: flags, reason, properties (Receive Maximum 20, a reason string, Max QoS 1)
    props = b"\x21\x00\x14" + b"\x1f\x00\x02ok" + b"\x24\x01"
    assert _connack_properties(b"\x00\x00" + _varint(len(props)) + props) == {0x21: 20, 0x24: 1}


@pytest.mark.integration
@TRANSPORTS
def test_the_brokers_receive_maximum_narrows_the_window(tmp_path, make):
    from sitetwin.services import Mosquitto

    svc = Mosquitto(root=tmp_path / "mq", port=free_port(), extra_config="max_inflight_messages 20")
    svc.start()
    try:
        with make(_mqtt(svc), max_inflight=500) as pub:
            pub.publish_all(_messages(2000, "recvmax"))
        stats = pub.stats()
        assert stats.acked == 2000 and pub.window == 20 and stats.max_unacked <= 20
    finally:
        svc.stop()


@pytest.mark.integration
@TRANSPORTS
def test_tls_with_a_device_password_and_an_acl_refusal(tmp_path, make):
    from tests.connectors.test_broker_security import _start_broker

    broker = _start_broker(tmp_path, require_client_cert=False)
    try:
        mqtt = _mqtt(broker.svc, servers=[f"ssl://127.0.0.1:{broker.svc.port}"],
                     tls_ca=broker.ca, username="S1", password=broker.passwords["S1"])
        with make(mqtt) as pub:
            pub.publish_all([("sites/S1/tower", b'{"n": %d}' % i) for i in range(200)])
            pub.flush()
            assert pub.stats().acked == 200 and pub.stats().refused == 0
            pub.publish("sites/S2/tower", b'{"n": -1}')  # another device's topic: the ACL says no
        stats = pub.stats()
        assert stats.acked == 201 and stats.refused == 1
    finally:
        broker.svc.stop()


@pytest.mark.integration
@TRANSPORTS
def test_qos0_is_sent_without_waiting_for_acknowledgements(mosquitto, make):
    sub = _Subscriber(mosquitto, "qos0test/+/tower", f"sub-qos0-{make.__name__}")
    try:
        msgs = _messages(300, "qos0test")
        with make(_mqtt(mosquitto), qos=0) as pub:
            pub.publish_all(msgs)
        stats = pub.stats()
        assert stats.published == stats.acked == 300 and stats.max_unacked == 0
        wait_for(lambda: len(sub.seen) == 300, message="300 QoS 0 messages")
    finally:
        sub.close()
