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

Membership (issue 11).  The session outlives the process (``mqtt.session_expiry``,
7 days) so that a restarted collector gets what was queued for it.  A short
expiry would not make a dead member leave a shared group safely on Mosquitto:
the messages in flight to it would go with the session (the broker does not
hand them to another member; MQTT 5 section 4.8.2 only says it SHOULD).
Instead a member leaves explicitly - ``retire``: unsubscribe, take what is
still queued, make it durable, acknowledge, disconnect with Session Expiry
Interval 0 - and a member that died is retired by a live peer that finds its
instance lock free (``adopt``: the same steps, connected under the dead
member's client id).  Both are plain MQTT 5, so they work on any broker.

Robustness.  The writer thread survives any error (it retries the same batch);
the dead-letter store failing never holds back a batch's valid readings; a
watchdog ends the process (status 3) when nothing was made durable for
``collector.watchdog`` while messages wait - the broker redelivers them.

Packet ids only mean the same message within one session.  Acknowledgements
for messages received before a reconnect are sent only if the broker resumed
the session; otherwise the broker redelivers them and they are written again,
which InfluxDB absorbs (an identical point overwrites itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors.config import CollectorConfig
from connectors.deadletter import DeadLetter, DeadLetterStore
from connectors.errors import ConnectorError, SpoolError, SpoolLocked, WriteRetryable
from connectors.influx import InfluxWriter, RejectedLine
from connectors.lineprotocol import encode_reading
from connectors.metrics import PipelineMetrics
from connectors.mqtt import mqtt_client
from connectors.mqtt import server_address as _server
from connectors.reading import Parsed, Reading, Rejection, parse_message
from connectors.spool import RETIRED_MARK, InstanceLock, Spool, peer_directories
from connectors.transport import InboundPublish, LeanClient

__all__ = ["EXIT_STALLED", "Collector", "LiveSink", "mqtt_client"]

EXIT_STALLED = 3  # process exit status when the watchdog fires

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
    digests: list[Hashable] = field(default_factory=list)  # for the live sink, when there is one
    seq: int = 0  # order of sealing: acknowledgements go out in this order


class Collector:
    """Subscribes through the shared subscription and writes durable batches to InfluxDB."""

    def __init__(
        self,
        settings: CollectorConfig,
        *,
        client_id: str | None = None,
        live: LiveSink | None = None,
        writer: InfluxWriter | None = None,
        clock: Callable[[], float] = time.time,
        subscribe: bool = True,
        adopt: bool = True,
        watchdog: float | None = None,
        on_stall: Callable[[str], None] | None = None,
        instance_lock: InstanceLock | None = None,
        client: mqtt.Client | None = None,
        spool: Spool | None = None,
        dead_letters: DeadLetterStore | None = None,
    ) -> None:
        """``settings``: the sections a collector reads (``connectors.config``), picked out
        of the whole configuration by the shell (``sitetwin.wiring.collector_config``).
        ``writer``, ``client``, ``spool`` and ``dead_letters`` default to the real ones
        built from ``settings``; a test passes fakes to drive batching, acks and retries
        without sockets (tests/connectors/test_collector_unit.py)."""
        self.settings = settings
        self.client_id = client_id or settings.mqtt.client_id
        self.live = live
        self.clock = clock
        c = settings.collector
        self.batch_size = c.batch_size
        self.batch_age = c.batch_age
        self.writer = writer or InfluxWriter.from_settings(settings.influxdb)
        # The spool is opened by start(), once this instance holds its directory's lock.
        self.spool: Spool | None = spool
        self._instance_lock = instance_lock or InstanceLock(settings.spool_path / self.client_id)
        d = settings.dead_letter
        self.dead_letters = dead_letters or DeadLetterStore(
            settings.dead_letter_path, max_payload_bytes=d.max_payload_bytes, max_bytes=d.max_bytes,
            max_age=d.max_age)
        # False: a peer's session is being emptied (adoption) - no subscription, and the
        # session's own subscriptions are dropped on connect.
        self._subscribe = subscribe
        self._adopt = adopt and c.adopt_after > 0
        self._watchdog = c.watchdog if watchdog is None else watchdog
        self._on_stall = on_stall or _exit_stalled
        self.session_present = False
        self._unsubscribed = threading.Event()
        self._disconnected = threading.Event()
        self._last_message = time.monotonic()  # when the last message arrived
        self._last_durable = time.monotonic()  # when a batch was last made durable (or nothing waited)
        # Batches taken by a writer and not yet acknowledged (seq numbers), and the durable
        # ones waiting for an earlier batch before their acks may go (MQTT 5 4.6: PUBACKs
        # in the order the PUBLISHes came).
        self._writing: set[int] = set()
        self._durable: dict[int, _Batch] = {}
        self._next_seq = 0
        self._next_ack = 0
        self._ack_lock = threading.Lock()
        self._writers = max(1, c.writers)
        self._cancel = threading.Event()
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
        self._client = client or mqtt_client(settings.mqtt, self.client_id, manual_ack=True,
                                             lean=settings.mqtt.client == "lean")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_unsubscribe = self._on_unsubscribe
        if isinstance(self._client, LeanClient):
            self._client.on_publish_batch = self._on_publish_batch
        self._max_payload = settings.mqtt.max_payload_bytes
        self._max_age_s = settings.collector.max_reading_age
        self._qos = settings.mqtt.qos

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, lock_timeout: float | None = None) -> None:
        """Take this instance's spool, connect (retrying forever in the background) and
        start the worker threads.  Waits while another process holds the instance's lock
        (a peer adopting it), up to ``lock_timeout`` seconds (None: for ever)."""
        self._take_instance_lock(lock_timeout)
        if self._cancel.is_set():
            self._instance_lock.release()
            raise SpoolLocked(f"start of {self.client_id} cancelled while waiting for its lock")
        s = self.settings
        if self.spool is None:
            self.spool = Spool(self._instance_lock.directory, max_bytes=s.spool.max_bytes, fsync=s.spool.fsync)
        if self._subscribe:
            (self._instance_lock.directory / RETIRED_MARK).unlink(missing_ok=True)
        if self.settings.influxdb.create_database:
            try:
                self.writer.ensure_database()
            except WriteRetryable as exc:
                log.warning("cannot create the InfluxDB database yet (%s); spooling until it answers", exc)
                self._influx_down.set()
        loops = [(f"writer{k}" if k else "writer", self._write_loop) for k in range(self._writers)]
        loops += [("sealer", self._seal_loop), ("drain", self._drain_loop)]
        if self._subscribe:
            loops.append(("metrics", self._metrics_loop))
        if self._watchdog > 0:
            loops.append(("watchdog", self._watchdog_loop))
        if self._adopt and self._subscribe:
            loops.append(("adopt", self._adopt_loop))
        for name, target in loops:
            t = threading.Thread(target=target, name=f"{self.client_id}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        host, port, _tls = self._servers[0]
        self._client.connect_async(host, port, keepalive=int(self.settings.mqtt.keepalive),
                                   clean_start=not self.settings.mqtt.persistent_session,
                                   properties=self._connect_properties())
        self._client.loop_start()

    def _take_instance_lock(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        warned = 0.0
        while True:
            try:
                self._instance_lock.acquire()
                return
            except SpoolLocked:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if self._cancel.is_set():
                    return
                now = time.monotonic()
                if now - warned >= 10.0:
                    warned = now
                    log.warning("%s is held by another live process (a peer adopting it, or a second "
                                "collector with client id %s); waiting", self._instance_lock.directory,
                                self.client_id)
                self._cancel.wait(0.5)

    def cancel_start(self) -> None:
        """Make a ``start`` that waits for the instance lock give up (a signal meanwhile)."""
        self._cancel.set()

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated
        if self.settings.mqtt.persistent_session:
            props.SessionExpiryInterval = min(int(self.settings.mqtt.session_expiry), 0xFFFFFFFF)
        props.ReceiveMaximum = self.settings.mqtt.receive_maximum
        return props

    def stop(self, timeout: float = 30.0, *, end_session: bool = False) -> None:
        """Finish: seal the open batch, make every pending batch durable, ack, disconnect.

        ``end_session``: disconnect with Session Expiry Interval 0, so the broker drops the
        session and its place in the shared group (``retire`` calls it once nothing is left
        to receive), then drain the spool if InfluxDB answers; what stays is adopted later.
        """
        if self._stop.is_set():
            return
        # Stop taking new messages first, so nothing arrives after the last batch.
        self._client.on_message = None
        if isinstance(self._client, LeanClient):
            self._client.on_publish_batch = None
        if self._subscribe:
            self._write_metrics()
        self._close_queue()
        deadline = time.monotonic() + timeout
        writers = self._threads[:self._writers]
        for writer in writers:
            writer.join(max(0.0, deadline - time.monotonic()))
        durable = not any(w.is_alive() for w in writers)
        self._stop.set()
        for t in self._threads[self._writers:]:
            t.join(max(0.1, deadline - time.monotonic()))
        if end_session and durable:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        else:
            if end_session:
                log.error("%s: batches still not durable at shutdown; keeping the broker session "
                          "so that they are redelivered", self.client_id)
            self._client.disconnect()
        if self.connected.is_set():
            self._disconnected.wait(5.0)
        self._client.loop_stop()
        if end_session and durable and self.spool is not None:
            try:
                (self._instance_lock.directory / RETIRED_MARK).touch()
            except OSError as exc:
                log.warning("cannot mark %s retired: %s", self._instance_lock.directory, exc)
            if self.spool.batches and not self._influx_down.is_set():
                self.drain_once()
        self.writer.close()
        self.dead_letters.close()
        self._instance_lock.release()

    def retire(self, *, quiet: float | None = None, timeout: float = 120.0) -> bool:
        """Leave for good: unsubscribe, make everything already sent to us durable and
        acknowledged, then end the session (expiry 0) so the broker drops this member from
        the shared group.  Returns False (and keeps the session, so nothing is lost) if the
        pending batches could not be made durable within ``timeout``."""
        quiet = quiet if quiet is not None else max(2.0, 3 * self.batch_age)
        deadline = time.monotonic() + timeout
        # Our session may hold messages if we subscribed or resumed one.  From now on a
        # reconnect drops the subscriptions instead of making them (see _on_connect).
        may_hold = self._subscribe or self.session_present
        self._subscribe = False
        if self.connected.is_set() and may_hold:
            self._unsubscribe()
            self._unsubscribed.wait(min(10.0, timeout))
        # After UNSUBACK the broker routes nothing new here; what it queued for this session
        # still arrives as acknowledgements free its in-flight window.  Quiet for ``quiet``
        # seconds with nothing pending = all delivered.
        while time.monotonic() < deadline:
            if self.connected.is_set() and not self._pending() and (
                    not may_hold or time.monotonic() - self._last_message >= quiet):
                self.stop(end_session=True)
                log.info("%s retired: session ended, spool %s", self.client_id,
                         "empty" if not self.spool or not self.spool.batches else "left for adoption")
                return True
            time.sleep(0.1)
        log.error("%s could not retire within %.0fs (not connected, or batches not durable); "
                  "stopping with its session kept", self.client_id, timeout)
        self.stop()
        return False

    def _pending(self) -> bool:
        """Messages received and not yet made durable and acknowledged."""
        batch = self._batch
        return (bool(self._writing) or bool(self._durable) or not self._queue.empty()
                or (batch is not None and bool(batch.acks)))

    def _close_queue(self) -> None:
        """Queue the open batch and then an end marker per writer; a message callback still
        running finds ``_closing`` set and leaves its message un-acked for the broker to
        redeliver."""
        with self._lock:
            self._closing.set()
            self._seal_locked()
            for _ in range(self._writers):
                self._queue.put(None)

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    # -- MQTT callbacks (network thread) ---------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
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
        self.session_present = resumed
        self._disconnected.clear()
        if self._subscribe:
            # At every connect, resumed or not: a broker that lost the session's
            # subscriptions (Mosquitto keeps no shared subscription across a restart)
            # gets them back, and subscribing again to a filter is harmless.
            client.subscribe([(t, mqtt.SubscribeOptions(qos=self._qos)) for t in self._filters()])
        elif resumed:
            self._unsubscribe()
        self.connected.set()

    def _filters(self) -> list[str]:
        group = self.settings.mqtt.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self.settings.mqtt.topics]

    def _unsubscribe(self) -> None:
        self._unsubscribed.clear()
        self._client.unsubscribe(self._filters())

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                        properties: Properties | None) -> None:
        self._unsubscribed.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(str(rc) for rc in failed))
        else:
            log.info("MQTT subscribed to %s through shared group %r",
                     ", ".join(self.settings.mqtt.topics), self.settings.mqtt.shared_group)
            self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._disconnected.set()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if len(self._servers) > 1:
            self._server_index = (self._server_index + 1) % len(self._servers)
            host, port, _ = self._servers[self._server_index]
            with contextlib.suppress(RuntimeError):
                client.host, client.port = host, port  # paho reconnects to the stored address
        host, port, _ = self._servers[self._server_index]
        log.warning("MQTT connection to %s:%s failed; retrying with backoff", host, port)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's path, one message at a time (``[mqtt] client = "paho"``, QoS 0 and 2)."""
        payload = bytes(msg.payload)  # paho types it bytes | bytearray; bytes(b) of bytes is b itself
        self._take([(msg.topic, payload, msg.mid if msg.qos > 0 else None, bool(msg.dup))])

    def _on_publish_batch(self, publishes: list[InboundPublish]) -> None:
        """The lean transport's path: the QoS 1 PUBLISH packets of one socket read."""
        self._take(publishes)

    def _take(self, messages: Sequence[tuple[str, bytes, int | None, bool]]) -> None:
        """Validate and serialise ``messages`` (topic, payload, packet id or None for QoS 0,
        DUP) into the open batch, sealing it each time it is full.

        One pass under ``_lock``: measured, a first pass outside it (parse into a list, then
        append under the lock) cost about 1 us a message more, and the lock is only shared
        with the sealer (every ``batch_age / 4``) and ``stop``, which wait one read's worth
        (~1 300 messages, about 10 ms) at most."""
        now = self.clock()
        self._last_message = time.monotonic()
        live = self.live
        max_payload, max_age, batch_size = self._max_payload, self._max_age_s, self.batch_size
        m = self.metrics
        m.received_msgs += len(messages)
        points = unknown = 0
        with self._lock:
            if self._closing.is_set():
                return  # stop() already queued its end marker: not acked, so redelivered
            epoch = self._epoch
            batch = self._batch
            for topic, payload, mid, dup in messages:
                try:
                    parsed = parse_message(topic, payload, now, max_payload_bytes=max_payload,
                                           max_age_s=max_age)
                except Exception as exc:
                    # parse_message must not raise; if it ever does, an exception escaping
                    # here would end paho's network thread and with it all ingest.
                    log.exception("unexpected error parsing a message; dead-lettered")
                    parsed = Parsed(site_id=None, stream=None, rejection=Rejection(
                        "internal_error", f"{type(exc).__name__}: {exc}"[:300]))
                if batch is None:
                    batch = self._batch = _Batch(opened=time.monotonic())
                if mid is not None:
                    batch.acks.append((mid, epoch))
                rej = parsed.rejection
                if rej is None:
                    readings = parsed.readings
                    if len(readings) == 1:
                        batch.lines.append(encode_reading(readings[0]))
                    else:
                        batch.lines.extend([encode_reading(r) for r in readings])
                    if live is not None:
                        batch.digests.extend([live.digest(r) for r in readings])
                    batch.points += len(readings)
                    points += len(readings)
                    unknown += parsed.unknown_fields
                else:
                    batch.letters.append((DeadLetter(reason=rej.reason, detail=rej.detail, payload=payload,
                                                     topic=topic, received_at=now), dup))
                    m.rejected_msgs += 1
                    m.rejected_by_reason[rej.reason] += 1
                    batch.points += 1
                if batch.points >= batch_size:
                    self._batch = None
                    # Blocks when max_pending_batches are waiting: reading pauses, the broker
                    # holds on.  The writers never take ``_lock``, so they keep draining meanwhile.
                    self._queue_locked(batch)
                    batch = None
        m.received_points += points
        m.unknown_fields += unknown

    # -- batching ------------------------------------------------------------------------------
    def _queue_locked(self, batch: _Batch) -> None:
        """Hand a sealed batch to the writers (under ``_lock``: its number is its place)."""
        batch.seq = self._next_seq
        self._next_seq += 1
        self._queue.put(batch)

    def _seal_locked(self) -> None:
        batch = self._batch
        if batch is not None and (batch.lines or batch.acks or batch.letters):
            self._batch = None
            self._queue_locked(batch)

    def _seal_loop(self) -> None:
        tick = min(0.1, self.batch_age / 4)
        while not self._closing.wait(tick):
            with self._lock:
                batch = self._batch
                if (not self._closing.is_set() and batch is not None
                        and time.monotonic() - batch.opened >= self.batch_age):
                    self._batch = None
                    self._queue_locked(batch)

    # -- durability (writer threads) ------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            self._writing.add(batch.seq)
            delay = 0.5
            while True:
                try:
                    self._make_durable(batch)
                    break
                except Exception:
                    # Anything unforeseen (a bug, a library's surprise): this thread must
                    # not end, or the queue fills, paho's callback blocks and ingest stops
                    # while the process looks alive.  Retry the same batch; nothing was acked.
                    self.metrics.writer_errors += 1
                    log.exception("unexpected error making a batch of %d lines durable; "
                                  "retrying it in %.1fs", len(batch.lines), delay)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 10.0)

    def _make_durable(self, batch: _Batch) -> None:
        body = "\n".join(batch.lines).encode() if batch.lines else b""
        delay = 0.5
        self.metrics.pending_acks = len(batch.acks)
        # Rejected messages first, best effort: the store failing must not hold back
        # the valid readings of the batch (issue 11: a full disk there stopped all sites).
        self._store_letters(batch.letters)
        while body:
            try:
                self._persist(body)
                break
            except ConnectorError as exc:
                # Neither InfluxDB nor the spool took it: hold the acks and retry, so the
                # broker keeps the messages.
                log.error("batch of %d lines not durable (%s); holding acknowledgements, retrying in %.1fs",
                          len(batch.lines), exc, delay)
                if self._stop.wait(delay):
                    return  # shutting down: the unacknowledged messages will be redelivered
                delay = min(delay * 2, 10.0)
        self._release(batch)

    def _release(self, batch: _Batch) -> None:
        """``batch`` is durable: acknowledge it and every durable batch after it in
        sealing order, stopping at the first one still being written.  With several
        writers a later batch can be durable first; its PUBACKs wait for the earlier."""
        with self._ack_lock:
            self._durable[batch.seq] = batch
            while self._next_ack in self._durable:
                done = self._durable.pop(self._next_ack)
                self._next_ack += 1
                self._ack(done.acks)
                done.acks.clear()
                self._writing.discard(done.seq)
                self._last_durable = time.monotonic()
                self.metrics.batch_done(time.monotonic() - done.opened)
                if self.live is not None and done.digests:
                    try:
                        self.live.observe_digests(done.digests)
                    except Exception:  # the twin must never stop ingest
                        log.exception("live-state update failed; ingest continues")
                    done.digests = []
            self.metrics.pending_acks = sum(len(b.acks) for b in self._durable.values())

    @property
    def _started_spool(self) -> Spool:
        if self.spool is None:
            raise SpoolError("the collector is not started: it has no spool yet")
        return self.spool

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
                log.warning("InfluxDB write failed (%s); spooling to %s", exc, self._started_spool.path)
                self._influx_down.set()
            else:
                self._record_rejected_lines(result.rejected)
                self.metrics.written_points += points - len(result.rejected)
                return
        self._started_spool.put(body)  # raises SpoolFull / SpoolError: caller holds the acks
        self.metrics.spooled_points += points

    def _record_rejected_lines(self, rejected: Sequence[RejectedLine]) -> None:
        if not rejected:
            return
        self.metrics.write_rejected_points += len(rejected)
        self.metrics.rejected_by_reason["write_rejected"] += len(rejected)
        self._store_letters([
            (DeadLetter(reason="write_rejected", detail=r.error, payload=r.line, source="influxdb"), False)
            for r in rejected
        ])

    def _store_letters(self, letters: list[tuple[DeadLetter, bool]]) -> None:
        """Store rejected messages; never raises.  A failure is counted and logged and the
        letters are let go: valid readings must flow whatever the dead-letter store does."""
        if not letters:
            return
        try:
            fresh = [letter for letter, dup in letters
                     if not (dup and self.dead_letters.contains(letter.topic, letter.payload))]
            self.dead_letters.add_many(fresh)
        except Exception as exc:  # noqa: BLE001 - a failing dead-letter store must never stop valid readings
            self.metrics.dead_letter_failed += len(letters)
            log.error("dead-letter store failed (%s); %d rejected message(s) counted, not kept "
                      "(%d so far); valid readings go on", exc, len(letters), self.metrics.dead_letter_failed)
        letters.clear()  # stored or given up: a retry of this batch must not store them twice

    def _ack(self, acks: list[tuple[int, int]]) -> None:
        epoch = self._epoch
        client = self._client
        if isinstance(client, LeanClient):
            client.ack_many(mid for mid, mid_epoch in acks if mid_epoch == epoch)
            return
        for mid, mid_epoch in acks:
            if mid_epoch == epoch:
                client.ack(mid, 1)

    # -- spool drain ---------------------------------------------------------------------------
    def _drain_loop(self) -> None:
        interval = self.settings.spool.drain_interval
        while not self._stop.wait(interval):
            try:
                self.drain_once()
            except Exception:  # a spool file that cannot be deleted, a bug: log, go on
                log.exception("draining the spool failed; will try again")

    def drain_once(self) -> int:
        """Replay spooled batches, oldest first, until the spool is empty or InfluxDB fails."""
        replayed = 0
        spool = self._started_spool
        while True:
            try:
                item = spool.oldest()
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
            spool.remove(path)
            points = body.count(b"\n") + 1
            self.metrics.drained_points += points
            self.metrics.written_points += points - len(result.rejected)
            replayed += 1
            if replayed == 1:
                log.info("draining the spool (%d batches, %d bytes)", len(spool) + 1,
                         spool.bytes + len(body))

    # -- watchdog ------------------------------------------------------------------------------
    def _watchdog_loop(self) -> None:
        limit = self._watchdog
        while not self._stop.wait(min(1.0, limit / 4)):
            if not self._pending():
                self._last_durable = time.monotonic()
                continue
            stalled = time.monotonic() - self._last_durable
            if stalled >= limit and not self._closing.is_set():
                reason = (f"watchdog: {self.client_id} has made nothing durable for {stalled:.0f}s "
                          f"with messages waiting (InfluxDB down: {self._influx_down.is_set()}, "
                          f"spool {self.spool.bytes if self.spool else 0} bytes); exiting so that the "
                          f"broker hands the unacknowledged messages to the next process")
                log.critical(reason)
                self._on_stall(reason)
                return

    # -- adoption of peers' spools and sessions --------------------------------------------------
    def _adopt_loop(self) -> None:
        after = self.settings.collector.adopt_after
        free_since: dict[str, float] = {}
        while not self._stop.wait(max(0.5, min(10.0, after / 3))):
            try:
                peers = peer_directories(self.settings.spool_path, self.client_id)
            except SpoolError as exc:
                log.warning("cannot look for peers' spools: %s", exc)
                continue
            for directory in peers:
                if self._stop.is_set():
                    return
                if (directory / RETIRED_MARK).exists() and not any(directory.glob("*.lp")):
                    free_since.pop(directory.name, None)
                    continue  # retired and drained: nothing to adopt
                lock = InstanceLock(directory)
                try:
                    if not lock.try_acquire():
                        free_since.pop(directory.name, None)
                        continue
                except SpoolError as exc:
                    log.warning("cannot probe %s: %s", directory, exc)
                    continue
                first = free_since.setdefault(directory.name, time.monotonic())
                if time.monotonic() - first < after:
                    lock.release()
                    continue
                free_since.pop(directory.name, None)
                try:
                    self.adopt(directory.name, lock)
                except Exception:
                    log.exception("adopting %s failed; will try again", directory.name)
                finally:
                    lock.release()

    def adopt(self, peer: str, lock: InstanceLock) -> bool:
        """Empty and end the broker session of ``peer`` and drain its spool, holding its lock.

        Standard MQTT 5 only: connect with the peer's client id without clean start,
        drop its subscriptions, take what the broker had queued for it (made durable
        and acknowledged like our own), disconnect with Session Expiry Interval 0."""
        log.warning("adopting %s: its lock has been free for %.0fs; draining its spool and ending "
                    "its broker session", peer, self.settings.collector.adopt_after)
        other = Collector(self.settings, client_id=peer, writer=None, subscribe=False, adopt=False,
                          watchdog=0, instance_lock=lock)
        other.start(lock_timeout=0)
        if not other.connected.wait(max(10.0, self.settings.mqtt.connection_timeout)):
            log.warning("adopting %s: broker not reachable; will try again", peer)
            other.stop()
            return False
        done = other.retire()
        log.info("adopted %s: session %s, %d points drained from its spool", peer,
                 "ended" if done else "kept", other.metrics.drained_points)
        return done

    # -- self-metrics ----------------------------------------------------------------------------
    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.settings.collector.metrics_interval):
            self._write_metrics()

    def _write_metrics(self) -> None:
        spool = self.spool
        point = self.metrics.point(spool_bytes=spool.bytes if spool else 0,
                                   spool_batches=len(spool) if spool else 0)
        with self._lock:
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch(opened=time.monotonic())
            batch.lines.append(point)

    # -- introspection -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "collector": self.client_id,
            "connected": self.connected.is_set(),
            "influxdb_down": self._influx_down.is_set(),
            **self.metrics.snapshot(spool_bytes=self.spool.bytes if self.spool else 0,
                                    spool_batches=len(self.spool) if self.spool else 0, reset=False),
        }


def _exit_stalled(reason: str) -> None:
    """The watchdog's default: end the process at once, status ``EXIT_STALLED``.  A stuck
    thread could make a graceful stop hang; nothing unacknowledged is lost, the broker
    redelivers it to the next process (systemd's ``Restart=on-failure``)."""
    logging.shutdown()
    os._exit(EXIT_STALLED)
