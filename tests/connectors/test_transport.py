"""The lean transport: buffered reads and bulk PUBACKs, and its protocol against real Mosquitto."""

from __future__ import annotations

import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.transport import BufferedSocket, LeanClient, puback_packets
from tests.support import publish, wait_for


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


def _client(mosquitto, client_id: str, received: list, *,
            receive_maximum: int = 20000) -> tuple[LeanClient, threading.Event]:
    client = LeanClient(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = receive_maximum
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: received.append((msg.mid, msg.dup, msg.payload))
    client.connect(mosquitto.host, mosquitto.port, clean_start=False, properties=props)
    client.loop_start()
    return client, subscribed


@pytest.mark.integration
def test_lean_client_resumes_its_session_and_gets_unacked_messages_again_with_dup(mosquitto) -> None:
    cid = f"lean-resume-{time.time_ns()}"
    topic = f"lean/{cid}"
    received: list = []
    client, subscribed = _client(mosquitto, cid, received)
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    publish(mosquitto.host, mosquitto.port, [(topic, b"%d" % i) for i in range(100)])
    wait_for(lambda: len(received) == 100)
    client.ack_many(mid for mid, _dup, _p in received[:40])  # the first 40 are done
    client.disconnect()  # queued after the PUBACKs: they are written first
    client.loop_stop()

    again: list = []
    client, _ = _client(mosquitto, cid, again)
    try:
        wait_for(lambda: len(again) == 60)
        assert [p for _m, _d, p in again] == [b"%d" % i for i in range(40, 100)]
        assert all(dup for _m, dup, _p in again)  # redelivered: DUP set
        client.ack_many(mid for mid, _d, _p in again)
    finally:
        client.disconnect()
        client.loop_stop()
    # Everything acknowledged: a third connection of the session gets nothing.
    third: list = []
    client, _ = _client(mosquitto, cid, third)
    try:
        publish(mosquitto.host, mosquitto.port, [(topic, b"marker")])
        wait_for(lambda: third)
        assert [p for _m, _d, p in third] == [b"marker"]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
def test_lean_client_acks_past_the_packet_id_wrap(mosquitto) -> None:
    """70 000 messages: the broker's packet ids wrap past 65 535 and every ack still lands."""
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
    again: list = []
    client, _ = _client(mosquitto, cid, again)
    try:
        publish(mosquitto.host, mosquitto.port, [(topic, b"marker")])
        wait_for(lambda: again)
        assert [p for _m, _d, p in again] == [b"marker"]
    finally:
        client.disconnect()
        client.loop_stop()
