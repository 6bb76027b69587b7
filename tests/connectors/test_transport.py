"""The lean transport: buffered reads and bulk PUBACKs, and its protocol against real Mosquitto."""

from __future__ import annotations

import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.transport import BufferedSocket, LeanClient, puback_packets, scan_publishes
from tests.support import publish, wait_for


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: str, payload: bytes, mid: int, *, qos: int = 1, dup: bool = False,
                    retain: bool = False, props: bytes | None = b"") -> bytes:
    """A PUBLISH as a broker writes it (``props`` None: MQTT 3.1.1, no property block)."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"")
    if props is not None:
        body += _varint(len(props)) + props
    body += payload
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes([first]) + _varint(len(body)) + body


def test_the_scanner_decodes_qos1_publishes_and_stops_at_anything_else() -> None:
    user_property = b"\x26" + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
    stream = (_publish_packet("sites/S1/tower", b'{"a":1}', 1)
              + _publish_packet("sites/S2/power", b"x" * 20000, 2, dup=True, retain=True,
                                props=user_property)
              + b"\xd0\x00"  # PINGRESP: paho's
              + _publish_packet("sites/S3/tower", b"{}", 3))
    out, pos, whole = scan_publishes(stream, 0, properties=True)
    assert out == [("sites/S1/tower", b'{"a":1}', 1, False), ("sites/S2/power", b"x" * 20000, 2, True)]
    assert stream[pos] == 0xD0 and whole
    out, pos, whole = scan_publishes(stream, pos + 2, properties=True)
    assert out == [("sites/S3/tower", b"{}", 3, False)] and pos == len(stream) and not whole


@pytest.mark.parametrize("packet", [
    _publish_packet("t", b"qos0", 0, qos=0),
    _publish_packet("t", b"qos2", 7, qos=2),
    _publish_packet("", b"alias", 7),  # an empty topic (a topic alias): paho's
    b"\x32\x06\x00\x02\xff\xfe\x00\x01",  # a topic that is not UTF-8
    b"\x32\x80\x80\x80\x80\x01",  # a Remaining Length of five bytes: malformed
])
def test_the_scanner_leaves_other_publishes_and_malformed_packets_whole_to_paho(packet: bytes) -> None:
    out, pos, whole = scan_publishes(packet + b"rest", 0, properties=True)
    assert (out, pos, whole) == ([], 0, True)


def test_the_scanner_reads_mqtt_3_1_1_publishes_without_a_property_block() -> None:
    stream = _publish_packet("a/b", b"payload", 65535, props=None)
    assert scan_publishes(stream, 0, properties=False) == ([("a/b", b"payload", 65535, False)],
                                                          len(stream), False)


_PUBLISHES = st.lists(st.tuples(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                                        min_size=1, max_size=40),
                                st.binary(max_size=300), st.integers(1, 65535), st.booleans()),
                      min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(_PUBLISHES, st.data())
def test_the_scanner_gives_the_same_publishes_however_the_stream_is_cut(publishes, data) -> None:
    """Bytes arriving in arbitrary pieces (as reads from a socket do): fed piece by piece,
    keeping the unconsumed tail, the scanner yields every PUBLISH once, in order."""
    stream = b"".join(_publish_packet(t, p, m, dup=d) for t, p, m, d in publishes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    got, buf, start = [], b"", 0
    for end in [*cuts, len(stream)]:
        buf += stream[start:end]
        start = max(start, end)
        out, pos, whole = scan_publishes(buf, 0, properties=True)
        assert not whole  # nothing here is paho's
        got += out
        buf = buf[pos:]
    assert buf == b"" and got == list(publishes)


def test_fill_appends_to_the_tail_and_a_lone_tail_is_not_reported_pending() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        sock = BufferedSocket(a)
        packet = _publish_packet("t/x", b"0123456789", 5)
        b.sendall(packet[:7])
        assert sock.fill()
        buf, pos = sock.take()
        out, pos, whole = scan_publishes(buf, pos, properties=True)
        sock.advance(pos, tail_only=not whole)
        assert out == [] and sock.buffered() == 7 and sock.pending() == 0  # paho waits in select
        assert not sock.fill()  # nothing more yet: would block
        b.sendall(packet[7:])
        assert sock.fill() and sock.pending() == len(packet)
        buf, pos = sock.take()
        assert scan_publishes(buf, pos, properties=True)[0] == [("t/x", b"0123456789", 5, False)]
        b.close()
        sock.advance(len(buf), tail_only=False)
        assert not sock.fill() and sock.ended and sock.recv(1) == b""  # EOF kept for paho
    finally:
        a.close()


def test_buffered_socket_serves_small_reads_from_one_large_read() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello" * 3)
        sock = BufferedSocket(a)
        assert sock.recv(1) == b"\x30"  # one recv of the socket, the rest buffered
        assert sock.buffered() == 20 and sock.pending() == 20
        assert sock.recv(1) == b"\x05"
        assert sock.recv(5) == b"hello"
        assert sock.recv(100) == b"\x30\x05hello\x30\x05hello"  # what is buffered, no waiting
        assert sock.buffered() == 0
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        assert sock.fileno() == a.fileno()  # everything else goes to the socket
        b.close()
        assert sock.recv(1) == b""  # end of stream
    finally:
        a.close()


def test_puback_packets_match_pahos_encoding() -> None:
    mids = [1, 2, 255, 256, 65535]
    assert puback_packets(mids) == b"".join(struct.pack("!BBH", 0x40, 2, m) for m in mids)
    assert puback_packets([]) == b""


def _client(mosquitto, client_id: str, received: list, *, receive_maximum: int = 20000,
            scanned: bool = True) -> tuple[LeanClient, threading.Event]:
    """``scanned``: QoS 1 PUBLISH through ``on_publish_batch`` (the collector's path), else
    paho's ``on_message``; both append ``(mid, dup, payload)`` to ``received``."""
    client = LeanClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
    if scanned:
        client.on_publish_batch = lambda pubs: received.extend((m, d, p) for _t, p, m, d in pubs)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = receive_maximum
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: received.append((msg.mid, msg.dup, msg.payload))
    client.connect(mosquitto.host, mosquitto.port, clean_start=False, properties=props)
    client.loop_start()
    return client, subscribed


def _assert_nothing_to_redeliver(mosquitto, cid: str, topic: str) -> None:
    """Every message of session ``cid`` was acknowledged: connecting again, only a fresh
    marker arrives."""
    received: list = []
    client, _ = _client(mosquitto, cid, received)
    try:
        publish(mosquitto.host, mosquitto.port, [(topic, b"marker")])
        wait_for(lambda: received)
        assert [p for _m, _d, p in received] == [b"marker"]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "paho"])
def test_lean_client_resumes_its_session_and_gets_unacked_messages_again_with_dup(mosquitto,
                                                                                   scanned) -> None:
    cid = f"lean-resume-{time.time_ns()}"
    topic = f"lean/{cid}"
    received: list = []
    client, subscribed = _client(mosquitto, cid, received, scanned=scanned)
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    publish(mosquitto.host, mosquitto.port, [(topic, b"%d" % i) for i in range(100)])
    wait_for(lambda: len(received) == 100)
    client.ack_many(mid for mid, _dup, _p in received[:40])  # the first 40 are done
    client.disconnect()  # queued after the PUBACKs: they are written first
    client.loop_stop()

    again: list = []
    client, _ = _client(mosquitto, cid, again, scanned=scanned)
    try:
        wait_for(lambda: len(again) == 60)
        assert [p for _m, _d, p in again] == [b"%d" % i for i in range(40, 100)]
        assert all(dup for _m, dup, _p in again)  # redelivered: DUP set
        client.ack_many(mid for mid, _d, _p in again)
    finally:
        client.disconnect()
        client.loop_stop()
    # Everything acknowledged: a third connection of the session gets nothing.
    _assert_nothing_to_redeliver(mosquitto, cid, topic)


@pytest.mark.integration
def test_lean_client_acks_past_the_packet_id_wrap(mosquitto) -> None:
    """70 000 messages through the scanner: the broker's packet ids wrap past 65 535 and
    every ack still lands."""
    cid = f"lean-wrap-{time.time_ns()}"
    topic = f"lean/{cid}"
    n = 70_000
    received: list = []
    client, subscribed = _client(mosquitto, cid, received, receive_maximum=5000)
    acked = 0
    try:
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10)
        pub = threading.Thread(target=publish, args=(mosquitto.host, mosquitto.port,
                                                     ((topic, b"x") for _ in range(n))))
        pub.start()
        deadline = time.monotonic() + 300
        while acked < n and time.monotonic() < deadline:
            # With 5000 unacknowledged at most, nothing more arrives unless we ack.
            upto = len(received)
            if upto > acked:
                client.ack_many(mid for mid, _d, _p in received[acked:upto])
                acked = upto
            else:
                time.sleep(0.01)
        pub.join(60)
        assert acked == n
        mids = [mid for mid, _d, _p in received]
        assert max(mids) == 65535 and mids.index(65535) < n - 1 and mids[mids.index(65535) + 1] == 1
        assert not any(dup for _m, dup, _p in received)
    finally:
        client.disconnect()
        client.loop_stop()
    # Every ack was taken: the session holds nothing to redeliver.
    _assert_nothing_to_redeliver(mosquitto, cid, topic)


@pytest.mark.integration
def test_scanned_and_pahos_paths_share_one_connection_in_order(mosquitto) -> None:
    """QoS 1 through the scanner, QoS 0 and 2 through paho's ``on_message``; payloads of
    1 MiB span many reads; retained messages arrive too; every QoS 1 is acked and none comes
    again."""
    cid = f"lean-mixed-{time.time_ns()}"
    topic = f"lean/{cid}"
    scanned: list = []
    plain: list = []
    client, subscribed = _client(mosquitto, cid, scanned)
    client.on_message = lambda c, u, msg: plain.append((msg.qos, msg.payload))
    try:
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        pub.publish(topic + "/r", b"retained", qos=1, retain=True).wait_for_publish(10)
        client.subscribe([(topic + "/#", mqtt.SubscribeOptions(qos=2))])
        assert subscribed.wait(10)
        big = bytes(range(256)) * 4096  # 1 MiB
        for i in range(30):
            qos = i % 3
            pub.publish(topic, big if i % 10 == 4 else b"%d" % i, qos=qos).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: len(scanned) == 11 and len(plain) == 20)
        assert scanned[0][2] == b"retained"
        assert [p for _m, _d, p in scanned[1:]] == [big if i % 10 == 4 else b"%d" % i
                                                     for i in range(30) if i % 3 == 1]
        for qos in (0, 2):  # paho hands a QoS 2 message over at PUBREL: in order per QoS
            assert [p for q, p in plain if q == qos] == [big if i % 10 == 4 else b"%d" % i
                                                         for i in range(30) if i % 3 == qos]
        client.ack_many(m for m, _d, _p in scanned)
    finally:
        client.disconnect()
        client.loop_stop()
    _assert_nothing_to_redeliver(mosquitto, cid, topic)
