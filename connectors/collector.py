"""The MQTT collector: at-least-once from the broker to InfluxDB.

Flow, per message, on paho's network thread (the hot path):
parse -> validate -> serialise -> append to the open batch.  Nothing else.

A batch is sealed when it holds ``batch_size`` points or its first message is
``batch_age`` old, and handed to the writer thread through a bounded queue.
The writer makes it durable - written to InfluxDB, or else spooled to disk -
stores its rejected messages in the dead-letter store, and only then
acknowledges its messages to the broker (paho manual ack).  If neither
InfluxDB nor the spool can take a batch, the writer keeps it and retries: no
acknowledgement goes out, the queue fills, reading pauses and the broker holds
the backlog.  Nothing is dropped.

Packet ids only mean the same message within one session.  Acknowledgements
for messages received before a reconnect are sent only if the broker resumed
the session; otherwise the broker redelivers them and they are written again,
which InfluxDB absorbs (an identical point overwrites itself).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.deadletter import DeadLetter, DeadLetterStore
from connectors.errors import ConnectorError, SpoolError, WriteRetryable
from connectors.influx import InfluxWriter
from connectors.lineprotocol import encode_reading
from connectors.metrics import PipelineMetrics
from connectors.reading import Parsed, Reading, Rejection, parse_message
from connectors.spool import Spool
from core.settings import Settings

__all__ = ["Collector", "LiveSink", "mqtt_client"]

log = logging.getLogger(__name__)


class LiveSink(Protocol):
    """Receives the readings of each durable batch (the twin's live state): ``digest`` is
    called on each reading as it arrives, ``observe_digests`` with a batch's digests once
    the batch is durable."""

    def digest(self, reading: Reading) -> Hashable: ...

    def observe_digests(self, digests: Iterable[Any]) -> None: ...


@dataclass
class _Batch:
    opened: float
    lines: list[str] = field(default_factory=list)
    points: int = 0
    acks: list[tuple[int, int]] = field(default_factory=list)  # (mid, epoch)
    letters: list[tuple[DeadLetter, bool]] = field(default_factory=list)  # (letter, dup)
    digests: list = field(default_factory=list)  # for the live sink, when there is one


def _server(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    tls = parts.scheme in ("ssl", "mqtts", "tls")
    if parts.scheme not in ("tcp", "mqtt", "ssl", "mqtts", "tls"):
        raise ConnectorError(f"unsupported MQTT server scheme in {url!r} (use tcp:// or ssl://)")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def mqtt_client(settings: Settings, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """A paho MQTT 5 client with the configured credentials and TLS (not yet connected)."""
    m = settings.mqtt
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if m.username:
        client.username_pw_set(m.username, m.password.get_secret_value() if m.password else None)
    _host, _port, tls = _server(m.servers[0])
    if tls or m.tls_ca or m.tls_cert:
        import ssl

        client.tls_set(ca_certs=m.tls_ca, certfile=m.tls_cert, keyfile=m.tls_key,
                       cert_reqs=ssl.CERT_NONE if m.insecure_skip_verify else ssl.CERT_REQUIRED)
        if m.insecure_skip_verify:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(int(max(1, m.reconnect_min)), int(max(1, m.reconnect_max)))
    return client


class Collector:
    """Subscribes through the shared subscription and writes durable batches to InfluxDB."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str | None = None,
        live: LiveSink | None = None,
        writer: InfluxWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or settings.mqtt.client_id
        self.live = live
        self.clock = clock
        c = settings.collector
        self.batch_size = c.batch_size
        self.batch_age = c.batch_age
        self.writer = writer or InfluxWriter.from_settings(settings.influxdb)
        self.spool = Spool(settings.spool_path / self.client_id, max_bytes=settings.spool.max_bytes,
                           fsync=settings.spool.fsync)
        self.dead_letters = DeadLetterStore(settings.dead_letter_path,
                                            max_payload_bytes=settings.dead_letter.max_payload_bytes)
        self.metrics = PipelineMetrics(collector=self.client_id)
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=c.max_pending_batches)
        self._lock = threading.Lock()
        self._batch: _Batch | None = None
        self._epoch = 0
        self._stop = threading.Event()
        # Set by stop() under ``_lock``: from then on nothing queues a batch (every batch is
        # queued under ``_lock``), so stop()'s end marker is the last item of the queue.
        self._closing = threading.Event()
        self._influx_down = threading.Event()
        self._threads: list[threading.Thread] = []
        self._servers = [_server(s) for s in settings.mqtt.servers]
        self._server_index = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client = mqtt_client(settings, self.client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._max_payload = settings.mqtt.max_payload_bytes
        self._max_age_s = settings.collector.max_reading_age
        self._qos = settings.mqtt.qos

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (retrying forever in the background) and start the worker threads."""
        if self.settings.influxdb.create_database:
            try:
                self.writer.ensure_database()
            except WriteRetryable as exc:
                log.warning("cannot create the InfluxDB database yet (%s); spooling until it answers", exc)
                self._influx_down.set()
        for name, target in (("writer", self._write_loop), ("sealer", self._seal_loop),
                             ("drain", self._drain_loop), ("metrics", self._metrics_loop)):
            t = threading.Thread(target=target, name=f"{self.client_id}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        host, port, _tls = self._servers[0]
        self._client.connect_async(host, port, keepalive=int(self.settings.mqtt.keepalive),
                                   clean_start=not self.settings.mqtt.persistent_session,
                                   properties=self._connect_properties())
        self._client.loop_start()

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        if self.settings.mqtt.persistent_session:
            props.SessionExpiryInterval = min(int(self.settings.mqtt.session_expiry), 0xFFFFFFFF)
        props.ReceiveMaximum = self.settings.mqtt.receive_maximum
        return props

    def stop(self, timeout: float = 30.0) -> None:
        """Finish: seal the open batch, make every pending batch durable, ack, disconnect."""
        if self._stop.is_set():
            return
        # Stop taking new messages first, so nothing arrives after the last batch.
        self._client.on_message = None
        self._write_metrics()
        self._close_queue()
        deadline = time.monotonic() + timeout
        writer = self._threads[0] if self._threads else None
        if writer is not None:
            writer.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for t in self._threads[1:]:
            t.join(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self.writer.close()
        self.dead_letters.close()

    def _close_queue(self) -> None:
        """Queue the open batch and then the end marker; a message callback still running
        finds ``_closing`` set and leaves its message un-acked for the broker to redeliver."""
        with self._lock:
            self._closing.set()
            self._seal_locked()
            self._queue.put(None)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    # -- MQTT callbacks (network thread) ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused: %s", reason_code)
            return
        resumed = bool(getattr(flags, "session_present", False))
        if not resumed:
            with self._lock:
                self._epoch += 1  # acks for an earlier session would name other messages
        host, port, _ = self._servers[self._server_index]
        log.info("MQTT connected to %s:%s as %s (session %s)", host, port, self.client_id,
                 "resumed" if resumed else "new")
        group = self.settings.mqtt.shared_group
        topics = [(f"$share/{group}/{t}" if group else t, self._qos) for t in self.settings.mqtt.topics]
        client.subscribe([(t, mqtt.SubscribeOptions(qos=q)) for t, q in topics])
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(str(rc) for rc in failed))
        else:
            log.info("MQTT subscribed to %s through shared group %r",
                     ", ".join(self.settings.mqtt.topics), self.settings.mqtt.shared_group)
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_connect_fail(self, client, userdata) -> None:
        if len(self._servers) > 1:
            self._server_index = (self._server_index + 1) % len(self._servers)
            host, port, _ = self._servers[self._server_index]
            try:
                client.host, client.port = host, port  # paho reconnects to the stored address
            except RuntimeError:
                pass
        host, port, _ = self._servers[self._server_index]
        log.warning("MQTT connection to %s:%s failed; retrying with backoff", host, port)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        now = self.clock()
        payload = msg.payload
        try:
            parsed = parse_message(msg.topic, payload, now, max_payload_bytes=self._max_payload,
                                   max_age_s=self._max_age_s)
        except Exception as exc:
            # parse_message must not raise; if it ever does, an exception escaping this
            # callback would end paho's network thread and with it all ingest.
            log.exception("unexpected error parsing a message; dead-lettered")
            parsed = Parsed(site_id=None, stream=None,
                            rejection=Rejection("internal_error", f"{type(exc).__name__}: {exc}"[:300]))
        m = self.metrics
        m.received_msgs += 1
        # Serialise (and digest for the twin) outside the lock the sealer thread shares.
        lines = digests = None
        if parsed.rejection is None:
            lines = [encode_reading(r) for r in parsed.readings]
            live = self.live
            if live is not None:
                digests = [live.digest(r) for r in parsed.readings]
        with self._lock:
            if self._closing.is_set():
                return  # stop() already queued its end marker: not acked, so redelivered
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch(opened=time.monotonic())
            if msg.qos > 0:
                batch.acks.append((msg.mid, self._epoch))
            if lines is not None:
                batch.lines.extend(lines)
                if digests:
                    batch.digests.extend(digests)
                batch.points += len(parsed.readings)
                m.received_points += len(parsed.readings)
                if parsed.unknown_fields:
                    m.unknown_fields += parsed.unknown_fields
            else:
                rej = parsed.rejection
                batch.letters.append((DeadLetter(reason=rej.reason, detail=rej.detail, payload=payload,
                                                 topic=msg.topic, received_at=now), bool(msg.dup)))
                m.rejected_msgs += 1
                m.rejected_by_reason[rej.reason] += 1
                batch.points += 1
            if batch.points >= self.batch_size:
                self._batch = None
                # Blocks when max_pending_batches are waiting: reading pauses, the broker
                # holds on.  The writer never takes ``_lock``, so it keeps draining meanwhile.
                self._queue.put(batch)

    # -- batching ------------------------------------------------------------------------------
    def _seal_locked(self) -> None:
        batch = self._batch
        if batch is not None and (batch.lines or batch.acks or batch.letters):
            self._batch = None
            self._queue.put(batch)

    def _seal_loop(self) -> None:
        tick = min(0.1, self.batch_age / 4)
        while not self._closing.wait(tick):
            with self._lock:
                batch = self._batch
                if (not self._closing.is_set() and batch is not None
                        and time.monotonic() - batch.opened >= self.batch_age):
                    self._batch = None
                    self._queue.put(batch)

    # -- durability (writer thread) ------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            self._make_durable(batch)

    def _make_durable(self, batch: _Batch) -> None:
        body = "\n".join(batch.lines).encode() if batch.lines else b""
        delay = 0.5
        self.metrics.pending_acks = len(batch.acks)
        while True:
            try:
                self._store_letters(batch.letters)
                if body:
                    self._persist(body)
                break
            except (SpoolError, ConnectorError) as exc:
                # Neither InfluxDB nor the spool (nor the dead-letter store) took it:
                # hold the acks and retry, so the broker keeps the messages.
                log.error("batch of %d lines not durable (%s); holding acknowledgements, retrying in %.1fs",
                          len(batch.lines), exc, delay)
                if self._stop.wait(delay):
                    return  # shutting down: the unacknowledged messages will be redelivered
                delay = min(delay * 2, 10.0)
        self._ack(batch.acks)
        self.metrics.pending_acks = 0
        self.metrics.batch_done(time.monotonic() - batch.opened)
        if self.live is not None and batch.digests:
            try:
                self.live.observe_digests(batch.digests)
            except Exception:  # the twin must never stop ingest
                log.exception("live-state update failed; ingest continues")

    def _persist(self, body: bytes) -> None:
        points = body.count(b"\n") + 1
        # Only InfluxDB's health decides; batches still in the spool are replayed by the
        # drain meanwhile (points are idempotent, order does not matter).  Waiting for an
        # empty spool here kept every batch going through the disk after an outage when
        # batches arrived about as often as the drain ran.
        if not self._influx_down.is_set():
            try:
                result = self.writer.write(body)
            except WriteRetryable as exc:
                log.warning("InfluxDB write failed (%s); spooling to %s", exc, self.spool.path)
                self._influx_down.set()
            else:
                self._record_rejected_lines(result.rejected)
                self.metrics.written_points += points - len(result.rejected)
                return
        self.spool.put(body)  # raises SpoolFull / SpoolError: caller holds the acks
        self.metrics.spooled_points += points

    def _record_rejected_lines(self, rejected) -> None:
        if not rejected:
            return
        self.metrics.write_rejected_points += len(rejected)
        self.metrics.rejected_by_reason["write_rejected"] += len(rejected)
        self._store_letters([
            (DeadLetter(reason="write_rejected", detail=r.error, payload=r.line, source="influxdb"), False)
            for r in rejected
        ])

    def _store_letters(self, letters: list[tuple[DeadLetter, bool]]) -> None:
        if not letters:
            return
        fresh = [letter for letter, dup in letters
                 if not (dup and self.dead_letters.contains(letter.topic, letter.payload))]
        self.dead_letters.add_many(fresh)
        letters.clear()  # stored: a retry of this batch must not store them twice

    def _ack(self, acks: list[tuple[int, int]]) -> None:
        epoch = self._epoch
        for mid, mid_epoch in acks:
            if mid_epoch == epoch:
                self._client.ack(mid, 1)

    # -- spool drain ---------------------------------------------------------------------------
    def _drain_loop(self) -> None:
        interval = self.settings.spool.drain_interval
        while not self._stop.wait(interval):
            self.drain_once()

    def drain_once(self) -> int:
        """Replay spooled batches, oldest first, until the spool is empty or InfluxDB fails."""
        replayed = 0
        while True:
            try:
                item = self.spool.oldest()
            except SpoolError as exc:
                log.error("cannot read the spool: %s", exc)
                return replayed
            if item is None:
                if self._influx_down.is_set() and self.writer.ping():
                    self._influx_down.clear()
                    log.info("InfluxDB is back; writing directly again")
                return replayed
            path, body = item
            try:
                result = self.writer.write(body)
            except WriteRetryable:
                return replayed
            try:
                self._record_rejected_lines(result.rejected)
            except ConnectorError as exc:
                log.error("cannot store rejected lines from the spool: %s", exc)
                return replayed
            self.spool.remove(path)
            points = body.count(b"\n") + 1
            self.metrics.drained_points += points
            self.metrics.written_points += points - len(result.rejected)
            replayed += 1
            if replayed == 1:
                log.info("draining the spool (%d batches, %d bytes)", len(self.spool) + 1,
                         self.spool.bytes + len(body))

    # -- self-metrics ----------------------------------------------------------------------------
    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.settings.collector.metrics_interval):
            self._write_metrics()

    def _write_metrics(self) -> None:
        point = self.metrics.point(spool_bytes=self.spool.bytes, spool_batches=len(self.spool))
        with self._lock:
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch(opened=time.monotonic())
            batch.lines.append(point)

    # -- introspection -------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "collector": self.client_id,
            "connected": self.connected.is_set(),
            "influxdb_down": self._influx_down.is_set(),
            **self.metrics.snapshot(spool_bytes=self.spool.bytes, spool_batches=len(self.spool),
                                    reset=False),
        }
