"""The collector's MQTT transport: paho-mqtt with buffered reads and bulk acknowledgements.

paho-mqtt 2.x reads every packet with at least three ``recv`` calls (the fixed
header byte, each remaining-length byte, the body) after a ``select``, and
each manual ``ack`` queues one PUBACK, wakes the network thread through its
socket pair and is written with its own ``send``: about six system calls per
message before any of the collector's own work (bench/RESULTS.md, "Ingest").

``LeanClient`` keeps paho for everything that is protocol (CONNECT and its
properties, TLS, auth, keepalive, reconnect, session resume, SUBSCRIBE, flow
control, DISCONNECT) and changes two things only:

- its socket is wrapped in ``BufferedSocket``, which reads up to 256 KiB per
  ``recv`` and serves paho's small reads from that buffer.  It has ``pending()``
  (as an SSL socket has), so paho's loop does not wait in ``select`` while
  whole packets are already buffered, and ``loop_read`` goes on reading while
  the buffer holds data (one pass of paho's loop per buffer, not per packet);
- ``ack_many`` queues the PUBACKs of a whole batch as one write: one wake-up of
  the network thread and one ``send`` per batch instead of per message.

These lean on paho internals (``_create_socket``, ``_packet_queue``,
``_send_pingreq`` and ``_ping_t`` for the barrier before DISCONNECT), present in
paho-mqtt 2.1 and 2.2; ``pyproject.toml`` bounds paho below 3 and the
collector's tests (against the real Mosquitto) cover session resume,
redelivery and the fault cases through this class.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedSocket", "LeanClient", "puback_packets"]

READ_SIZE = 256 * 1024
MAX_PACKETS_PER_READ = 1000
FLUSH_TIMEOUT = 2.0  # seconds disconnect() waits for the broker to answer a PINGREQ
_PUBACK = 0x40


class BufferedSocket:
    """A socket (plain or TLS) whose ``recv`` is served from a buffer filled in large reads.

    Everything but ``recv`` and ``pending`` goes to the wrapped socket, so ``select``
    (through ``fileno``), ``send``, ``setblocking`` and ``close`` behave as before.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            # Raises BlockingIOError / ssl.SSLWantReadError as the socket would; b"" is EOF.
            data: bytes = self._sock.recv(max(bufsize, READ_SIZE))
            if len(data) <= bufsize:
                self._buf, self._pos = b"", 0
                return data
            buf, pos = self._buf, self._pos = data, 0
        end = pos + bufsize
        self._pos = end
        if end >= len(buf):
            out = buf[pos:] if pos else buf
            self._buf, self._pos = b"", 0
            return out
        return buf[pos:end]

    def buffered(self) -> int:
        """Bytes in our buffer (received, not yet handed to paho)."""
        return len(self._buf) - self._pos

    def pending(self) -> int:
        """Bytes readable without waiting: ours plus what a TLS layer holds decrypted."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def puback_packets(mids: Iterable[int]) -> bytes:
    """The PUBACK packets (reason Success, no properties: 4 bytes each) for ``mids``."""
    mids = list(mids)
    return struct.pack(f"!{len(mids)}I", *((_PUBACK << 24) | (2 << 16) | mid for mid in mids))


class LeanClient(mqtt.Client):
    """paho's MQTT client with buffered reads and batch acknowledgements (see the module)."""

    _acked_since_ping = False

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read packets while whole ones may be buffered (up to 1000 per call), so paho's
        loop does one ``select`` per buffer rather than per packet."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(MAX_PACKETS_PER_READ):
            if (rc != mqtt.MQTT_ERR_SUCCESS or sock is None or sock is not self._sock
                    or not isinstance(sock, BufferedSocket) or not sock.buffered()):
                break
            rc = super().loop_read(1)
        return rc

    def disconnect(self, *args: Any, **kwargs: Any) -> mqtt.MQTTErrorCode:
        """Make sure the broker has applied the PUBACKs sent so far, then DISCONNECT.

        Measured against Mosquitto 2: PUBACKs written just before DISCONNECT were often
        not applied - 98 of 100 messages came again instead of 60 when a batch's acks
        and DISCONNECT went out together, and 304 of 70 000 came again on a loaded
        machine even after the acks had been written.  A broker answers packets in
        order, so a PINGRESP proves every PUBACK before the PINGREQ was handled: the
        client pings and waits for the answer (up to ``FLUSH_TIMEOUT``).  Lost acks
        would only mean redelivery, but a clean stop should not cost a batch of
        duplicates."""
        if self._thread is not None and self.is_connected() and self._acked_since_ping:
            self._acked_since_ping = False
            deadline = time.monotonic() + FLUSH_TIMEOUT
            if self._ping_t == 0:
                self._send_pingreq()
            while self._ping_t != 0 and self.is_connected() and time.monotonic() < deadline:
                time.sleep(0.002)
        return super().disconnect(*args, **kwargs)

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``) in one queued write."""
        packet = puback_packets(mids)
        if packet:
            self._acked_since_ping = True
            self._packet_queue(_PUBACK, packet, 0, 1)
