"""The collector's batching, acknowledgements and retries with fakes: no broker, no InfluxDB.

The real ones are covered end to end in test_collector.py; here each promise is checked in
milliseconds by calling the paho callbacks and the writer step the threads would call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import orjson

from connectors.collector import Collector
from connectors.config import CollectorConfig
from connectors.errors import DeadLetterError, WriteRetryable
from connectors.influx import WriteResult
from connectors.spool import Spool
from core.settings import CollectorSettings, InfluxSettings, MqttSettings

NOW = 1_790_000_000


@dataclass
class FakeClient:
    acks: list[int] = field(default_factory=list)
    subscriptions: list[object] = field(default_factory=list)

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def subscribe(self, topics: object) -> None:
        self.subscriptions.append(topics)


@dataclass
class FakeWriter:
    down: bool = False
    bodies: list[bytes] = field(default_factory=list)

    def write(self, body: bytes) -> WriteResult:
        if self.down:
            raise WriteRetryable("InfluxDB unreachable (fake)")
        self.bodies.append(body)
        return WriteResult(lines=body.count(b"\n") + 1)

    def ping(self) -> bool:
        return not self.down


@dataclass
class FakeDeadLetters:
    broken: bool = False
    letters: list[object] = field(default_factory=list)

    def contains(self, topic: str | None, payload: bytes) -> bool:
        return False

    def add_many(self, letters: list[object]) -> int:
        if self.broken:
            raise DeadLetterError("disk full (fake)")
        self.letters.extend(letters)
        return len(letters)


def _collector(tmp_path, *, batch_size: int = 3, writer=None, dead_letters=None):
    settings = CollectorConfig(  # the sections a collector reads, and nothing else
        mqtt=MqttSettings(servers=["tcp://127.0.0.1:1"], client_id="unit"),
        collector=CollectorSettings(batch_size=batch_size), influxdb=InfluxSettings(),
        spool_path=tmp_path / "state" / "spool", dead_letter_path=tmp_path / "state" / "rejected.sqlite")
    client, writer = FakeClient(), writer or FakeWriter()
    c = Collector(settings, client=client, writer=writer, clock=lambda: float(NOW),
                  spool=Spool(tmp_path / "spool", max_bytes=10**6, fsync=False),
                  dead_letters=dead_letters or FakeDeadLetters())
    return c, client, writer


def _message(mid: int, *, ok: bool = True, dup: bool = False):
    body = {"ts": NOW - 60 + mid, "mains_ok": True} if ok else {"ts": NOW, "mains_ok": "junk"}
    return SimpleNamespace(topic="sites/S1/tower", payload=orjson.dumps(body), qos=1, mid=mid,
                           dup=dup)


def _three(c: Collector, client: FakeClient, oks: tuple[bool, ...] = (True, True, True)):
    """Messages 1, 2 and 3 received: the batch they fill, as the sealer would queue it."""
    for mid, ok in enumerate(oks, start=1):
        c._on_message(client, None, _message(mid, ok=ok))
    return c._queue.get_nowait()


def _connect(c: Collector, client: FakeClient, *, resumed: bool) -> None:
    c._on_connect(client, None, SimpleNamespace(session_present=resumed),
                  SimpleNamespace(is_failure=False), None)


def test_a_batch_is_sealed_at_batch_size_and_acked_only_once_durable(tmp_path):
    c, client, writer = _collector(tmp_path)
    _connect(c, client, resumed=False)
    for mid in (1, 2):
        c._on_message(client, None, _message(mid))
    assert c._queue.empty()
    c._on_message(client, None, _message(3))
    batch = c._queue.get_nowait()
    assert len(batch.lines) == 3 and [m for m, _ in batch.acks] == [1, 2, 3]
    assert client.acks == []  # nothing acknowledged before InfluxDB has it
    c._make_durable(batch)
    assert client.acks == [1, 2, 3]
    assert writer.bodies[0].count(b"\n") == 2 and c.metrics.written_points == 3


def test_acks_of_an_earlier_session_are_dropped(tmp_path):
    c, client, _writer = _collector(tmp_path)
    _connect(c, client, resumed=False)
    batch = _three(c, client)
    _connect(c, client, resumed=False)  # a new session: its message ids name other messages
    c._make_durable(batch)
    assert client.acks == []
    c._make_durable(_three(c, client))
    assert client.acks == [1, 2, 3]


def test_a_resumed_session_keeps_its_acks(tmp_path):
    c, client, _writer = _collector(tmp_path)
    _connect(c, client, resumed=False)
    batch = _three(c, client)
    _connect(c, client, resumed=True)
    c._make_durable(batch)
    assert client.acks == [1, 2, 3]


def test_influxdb_down_spools_acks_and_the_drain_replays(tmp_path):
    c, client, writer = _collector(tmp_path, writer=FakeWriter(down=True))
    _connect(c, client, resumed=False)
    c._make_durable(_three(c, client))
    assert client.acks == [1, 2, 3]  # durable in the spool is durable
    assert c.metrics.spooled_points == 3 and writer.bodies == []
    assert c.spool is not None and c.spool.batches == 1
    assert c.drain_once() == 0  # still down: the batch stays
    writer.down = False
    assert c.drain_once() == 1
    assert c.spool.batches == 0 and c.metrics.drained_points == 3
    assert writer.bodies[0].count(b"\n") == 2


def test_a_rejected_message_is_dead_lettered_and_acked(tmp_path):
    store = FakeDeadLetters()
    c, client, writer = _collector(tmp_path, dead_letters=store)
    _connect(c, client, resumed=False)
    c._make_durable(_three(c, client, (False, True, True)))
    assert [letter.reason for letter in store.letters] == ["schema"]
    assert client.acks == [1, 2, 3] and c.metrics.rejected_by_reason["schema"] == 1
    assert writer.bodies[0].count(b"\n") == 1


def test_a_failing_dead_letter_store_never_holds_back_valid_readings(tmp_path):
    c, client, writer = _collector(tmp_path, dead_letters=FakeDeadLetters(broken=True))
    _connect(c, client, resumed=False)
    batch = _three(c, client, (False, True, True))
    started = time.monotonic()
    c._make_durable(batch)
    assert time.monotonic() - started < 1.0
    assert client.acks == [1, 2, 3] and writer.bodies
    assert c.metrics.dead_letter_failed == 1


def test_with_several_writers_a_batch_durable_first_waits_for_the_earlier_ones_acks(tmp_path):
    """MQTT 5 section 4.6: PUBACKs in the order the PUBLISHes came, whichever writer finishes
    first."""
    c, client, _writer = _collector(tmp_path, batch_size=2)
    _connect(c, client, resumed=False)
    c._on_publish_batch([("sites/S1/tower", _message(mid).payload, mid, False) for mid in range(1, 7)])
    first, second, third = (c._queue.get_nowait() for _ in range(3))
    assert [b.seq for b in (first, second, third)] == [0, 1, 2]
    c._make_durable(third)
    c._make_durable(second)
    assert client.acks == [] and c._pending()  # durable, but the first is still being written
    c._make_durable(first)
    assert client.acks == [1, 2, 3, 4, 5, 6] and c.metrics.written_points == 6


def test_a_read_of_many_publishes_is_batched_like_single_messages(tmp_path):
    """The scanner's path (one call per socket read) seals at batch_size mid-read and keeps
    rejected messages with their DUP flag, as paho's one-message path does."""
    c, client, _writer = _collector(tmp_path, batch_size=3)
    _connect(c, client, resumed=False)
    good = [("sites/S1/tower", _message(mid).payload, mid, False) for mid in (1, 2, 4, 5)]
    junk = ("sites/S1/tower", _message(3, ok=False).payload, 3, True)
    c._on_publish_batch([*good[:2], junk, *good[2:]])
    batch = c._queue.get_nowait()
    assert [m for m, _ in batch.acks] == [1, 2, 3] and len(batch.lines) == 2
    assert [(letter.reason, dup) for letter, dup in batch.letters] == [("schema", True)]
    assert c._batch is not None and [m for m, _ in c._batch.acks] == [4, 5]
    c._make_durable(batch)
    assert client.acks == [1, 2, 3] and c.metrics.received_msgs == 5
