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

and, when the owner sets ``on_publish_batch`` (the collector does), a third:

- QoS 1 PUBLISH packets are framed and decoded straight from that buffer, a
  whole read at a time, and handed over as one list of ``(topic, payload,
  packet id, dup)``.  paho still handles every other packet (CONNACK, SUBACK,
  PINGRESP, DISCONNECT, QoS 0 and 2, a PUBLISH with a topic alias) and every
  error: the scanner only ever gives it a packet that is whole in the buffer,
  so paho is never left half way through one.  Measured on 20 000 tower
  readings (bench/RESULTS.md, "Ingest"): paho's per-packet reading, decoding,
  ``MQTTMessage`` and callback were about half of the collector's CPU.

These lean on paho internals (``_create_socket``, ``_packet_queue``,
``_send_pingreq`` and ``_ping_t`` for the barrier before DISCONNECT, ``_in_packet``,
``_protocol``, ``_msgtime_mutex`` and ``_last_bytes_received`` for the scanner), present in
paho-mqtt 2.1 and 2.2; ``pyproject.toml`` bounds paho below 3 and the
collector's tests (against the real Mosquitto) cover session resume,
redelivery and the fault cases through this class.
"""

from __future__ import annotations

import logging
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BufferedSocket", "InboundPublish", "LeanClient", "puback_packets", "scan_publishes"]

log = logging.getLogger(__name__)

# One QoS 1 PUBLISH as the scanner hands it over: topic, payload, packet id, DUP flag.
InboundPublish = tuple[str, bytes, int, bool]

READ_SIZE = 256 * 1024
MAX_PACKETS_PER_READ = 1000
FLUSH_TIMEOUT = 2.0  # seconds disconnect() waits for the broker to answer a PINGREQ
_PUBACK = 0x40


class BufferedSocket:
    """A socket (plain or TLS) whose ``recv`` is served from a buffer filled in large reads.

    Everything but ``recv`` and ``pending`` goes to the wrapped socket, so ``select``
    (through ``fileno``), ``send``, ``setblocking`` and ``close`` behave as before.
    """

    __slots__ = ("_buf", "_error", "_pos", "_sock", "_tail_only")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        # Set by the scanner when what is buffered is only the start of a packet: then
        # nothing is ready without new bytes, and ``pending`` must not say otherwise (paho
        # would spin instead of waiting in ``select``).
        self._tail_only = False
        # EOF (None inside a 1-tuple) or the error a ``fill`` met, kept for paho's next
        # ``recv`` once the buffer is empty, so paho sees the end as it would have.
        self._error: tuple[OSError | None] | None = None

    def fill(self) -> bool:
        """Append what the socket has now (one read of up to 256 KiB) to the buffer.
        False when nothing came: it would block, or EOF or an error, which are kept for
        paho to meet on its next ``recv``."""
        if self._error is not None:
            return False
        try:
            data: bytes = self._sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError):
            return False
        except OSError as exc:
            self._error = (exc,)
            return False
        if not data:
            self._error = (None,)
            return False
        rest = len(self._buf) - self._pos
        self._buf = self._buf[self._pos:] + data if rest else data
        self._pos = 0
        self._tail_only = False
        return True

    @property
    def ended(self) -> bool:
        """A ``fill`` met EOF or an error (kept for paho's ``recv``)."""
        return self._error is not None

    def take(self) -> tuple[bytes, int]:
        """The buffer and the position of its first unread byte (for the scanner)."""
        return self._buf, self._pos

    def advance(self, pos: int, *, tail_only: bool) -> None:
        """The scanner consumed the buffer up to ``pos``; ``tail_only``: the rest is the
        start of a packet not yet whole."""
        if pos >= len(self._buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = pos
        self._tail_only = tail_only and pos < len(self._buf)

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            if self._error is not None:
                (error,) = self._error
                if error is None:
                    return b""
                raise error
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
        if self._tail_only:
            return inner
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def puback_packets(mids: Iterable[int]) -> bytes:
    """The PUBACK packets (reason Success, no properties: 4 bytes each) for ``mids``."""
    mids = list(mids)
    return struct.pack(f"!{len(mids)}I", *((_PUBACK << 24) | (2 << 16) | mid for mid in mids))


def scan_publishes(buf: bytes, pos: int, *, properties: bool) -> tuple[list[InboundPublish], int, bool]:
    """Frame and decode the QoS 1 PUBLISH packets at the head of ``buf[pos:]``.

    Returns ``(publishes, pos, whole)``: the packets decoded, the position of the
    first byte not consumed, and whether a whole packet starts there (one the
    scanner leaves to paho: another type, QoS 0 or 2, a topic alias, a malformed
    or non-UTF-8 topic).  ``whole`` False means the buffer ends there or with the
    start of a packet.  ``properties``: MQTT 5 (a property block follows the packet
    id); its properties are skipped - the collector reads none of them.
    """
    out: list[InboundPublish] = []
    n = len(buf)
    while pos < n:
        first = buf[pos]
        # Remaining Length: 1-4 bytes, 7 bits each, least significant first.
        i = pos + 1
        length = 0
        shift = 0
        while True:
            if i >= n:
                return out, pos, False
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 21:
                return out, pos, True  # malformed: paho reports it
        end = i + length
        if end > n:
            return out, pos, False
        if first & 0xF6 != 0x32:  # not PUBLISH at QoS 1 (DUP and RETAIN bits ignored)
            return out, pos, True
        if length < 4:
            return out, pos, True
        topic_len = (buf[i] << 8) | buf[i + 1]
        j = i + 2 + topic_len
        if topic_len == 0 or j + 2 > end:
            return out, pos, True
        try:
            topic = buf[i + 2:j].decode("utf-8")
        except UnicodeDecodeError:
            return out, pos, True
        mid = (buf[j] << 8) | buf[j + 1]
        j += 2
        if properties:
            plen = 0
            shift = 0
            while True:
                if j >= end or shift > 21:
                    return out, pos, True
                byte = buf[j]
                j += 1
                plen |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            j += plen
            if j > end:
                return out, pos, True
        out.append((topic, buf[j:end], mid, bool(first & 0x08)))
        pos = end
    return out, pos, False


class LeanClient(mqtt.Client):
    """paho's MQTT client with buffered reads and batch acknowledgements (see the module)."""

    _acked_since_ping = False
    # Set to take QoS 1 PUBLISH packets a read at a time (see the module); None: paho's path.
    on_publish_batch: Callable[[list[InboundPublish]], None] | None = None

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read packets while whole ones may be buffered (up to 1000 per call), so paho's
        loop does one ``select`` per buffer rather than per packet."""
        sock = self._sock
        if (self.on_publish_batch is not None and isinstance(sock, BufferedSocket)
                and self._in_packet["command"] == 0):
            return self._read_scanned(sock)
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(MAX_PACKETS_PER_READ):
            if (rc != mqtt.MQTT_ERR_SUCCESS or sock is None or sock is not self._sock
                    or not isinstance(sock, BufferedSocket) or not sock.buffered()):
                break
            rc = super().loop_read(1)
        return rc

    def _read_scanned(self, sock: BufferedSocket) -> mqtt.MQTTErrorCode:
        """One read from the socket: its QoS 1 PUBLISH packets go to ``on_publish_batch``
        as one list, any other whole packet to paho, in the order they came."""
        sock.fill()
        properties = self._protocol == mqtt.MQTTv5
        rc = mqtt.MQTT_ERR_SUCCESS
        handler = self.on_publish_batch
        for _ in range(MAX_PACKETS_PER_READ):
            buf, pos = sock.take()
            publishes, pos, whole = scan_publishes(buf, pos, properties=properties)
            sock.advance(pos, tail_only=not whole)
            if publishes:
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()
                if handler is not None:
                    try:
                        handler(publishes)
                    except Exception:  # must not end the network thread (and all ingest)
                        log.exception("the PUBLISH batch handler failed; %d messages stay "
                                      "unacknowledged until the broker redelivers them", len(publishes))
            if not whole:
                break
            # A whole packet that is paho's to handle: it reads it from the buffer.
            rc = super().loop_read(1)
            if rc != mqtt.MQTT_ERR_SUCCESS or sock is not self._sock:
                return rc
        if sock.ended and sock is self._sock:
            # EOF or a socket error met by ``fill``: paho reads what is left, meets the
            # end and reconnects.
            return super().loop_read(1)
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
