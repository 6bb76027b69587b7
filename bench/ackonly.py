"""The broker's limit for bench/ingest.py: an MQTT 5 subscriber on a raw socket that only acks.

Run:  python bench/ackonly.py HOST PORT CLIENT_ID N subscribe|drain|drain-each TOPIC_FILTER

``subscribe`` makes the persistent session (Session Expiry 3600 s) and its
subscription, then leaves; ``drain`` comes back to the session, reads until N
PUBLISH packets arrived, and prints one JSON line: received, seconds (first to
last packet), cpu_s (this process).

What it does per packet is the least any consumer must do: frame it (fixed
header, remaining length), split topic, packet id, properties and payload,
and answer PUBACK.  It reads up to 1 MiB per ``recv`` and writes the PUBACKs
for everything it framed in that read with one ``sendall`` - so its cost per
message is a few microseconds of Python, and the rate it reaches is what
Mosquitto can deliver on this machine.  No TLS, no auth, no keepalive (a drain
lasts seconds), no reconnect: a bench instrument, not a client.

``drain-each`` answers every PUBLISH with its own ``sendall`` as soon as it is
framed: what a subscriber that "only parses MQTT on the socket and acks" does
when it acks message by message - the socket-level limit as issue 15 measured
it (27 475 msgs/s then), as opposed to the bulk acks above, which measure what
Mosquitto can push.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect(client_id: str) -> bytes:
    # Session Expiry Interval (0x11) 3600 s, Receive Maximum (0x21) 20000 as the collector's default.
    props = b"\x11" + struct.pack("!I", 3600) + b"\x21" + struct.pack("!H", 20000)
    body = _string("MQTT") + b"\x05" + b"\x00" + struct.pack("!H", 60) + _varint(len(props)) + props
    return _packet(0x10, body + _string(client_id))


def _subscribe(topic: str) -> bytes:
    return _packet(0x82, struct.pack("!H", 1) + b"\x00" + _string(topic) + b"\x01")


def _read_varint(buf, i: int) -> tuple[int, int] | None:
    """(value, next index) of the variable byte integer at ``i``, None if incomplete."""
    value = shift = 0
    n = len(buf)
    while i < n:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


def _expect(sock: socket.socket, kind: int) -> bytearray:
    """Read one packet of type ``kind``; the bytes that came after it (queued PUBLISHes)."""
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"broker closed the connection before packet type {kind}")
        data += chunk
        rl = _read_varint(data, 1)
        if rl is not None and rl[1] + rl[0] <= len(data):
            break
    if data[0] >> 4 != kind:
        raise SystemExit(f"expected packet type {kind}, got {bytes(data[:8])!r}")
    return data[rl[1] + rl[0]:]


def main() -> int:
    host, port, cid, n, mode, topic = (sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                       sys.argv[5], sys.argv[6])
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect(cid))
    buf = _expect(sock, 2)  # CONNACK
    if mode == "subscribe":
        sock.sendall(_subscribe(topic))
        _expect(sock, 9)  # SUBACK
        sock.sendall(b"\xe0\x00")
        sock.close()
        print("{}")
        return 0
    each = mode == "drain-each"
    got = 0
    first = last = 0.0
    payload_bytes = 0
    fresh = bool(buf)  # the first round frames what came with the CONNACK
    while got < n:
        if not fresh:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SystemExit(f"broker closed the connection after {got} messages")
            buf += chunk
        fresh = False
        acks = []
        i, end = 0, len(buf)
        while i < end:
            header = buf[i]
            rl = _read_varint(buf, i + 1)
            if rl is None:
                break
            length, body = rl
            if body + length > end:
                break
            if header >> 4 == 3:  # PUBLISH
                tlen = (buf[body] << 8) | buf[body + 1]
                topic_end = body + 2 + tlen
                _topic = bytes(buf[body + 2:topic_end])
                pos = topic_end
                if header & 0x06:  # QoS 1 or 2: a packet id
                    if each:
                        sock.sendall(b"\x40\x02" + bytes(buf[pos:pos + 2]))
                        now = time.perf_counter()
                        first = first or now
                        last = now
                    else:
                        acks.append(b"\x40\x02" + bytes(buf[pos:pos + 2]))
                    pos += 2
                plen_idx = _read_varint(buf, pos)
                assert plen_idx is not None
                plen, pos = plen_idx
                payload_bytes += body + length - (pos + plen)
                got += 1
            i = body + length
        del buf[:i]
        if acks:
            now = time.perf_counter()
            if not first:
                first = now
            last = now
            sock.sendall(b"".join(acks))
    sock.sendall(b"\xe0\x00")
    sock.close()
    print(json.dumps({"received": got, "seconds": last - first, "cpu_s": time.process_time()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
