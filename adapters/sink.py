"""The one way out of every adapter: validate like the collector, dead-letter, publish at QoS 1.

``offer`` runs ``connectors.reading.parse_message`` - the collector's own check -
on one reading document, so a reading an adapter lets through is one the
collector accepts, and one it refuses is kept in the dead-letter store with
the same reason codes (``sitetwin rejected list --source pm``).  Each reading
is checked alone: one bad cell of a PM file does not take its site's other
cells with it, as it would inside one MQTT array (a message is all or
nothing).  ``commit`` publishes the accepted readings - one JSON array per
site and stream, at most 5 000 readings or 256 KiB a message, the simulator's
backlog shape - and returns only once the broker acknowledged every one;
only then are the refusals written to the dead-letter store, so a retried
file or request does not store its refusals twice.

The broker's acknowledgement is the promise: the collector takes it from
there (durable in InfluxDB or its spool before it acknowledges the broker).
A ``PublishError`` from ``commit`` (no acknowledgement in time) leaves the
messages in the publisher, which sends them again after reconnecting; the
caller calls ``commit`` again rather than offering the readings twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from connectors.deadletter import DeadLetter, DeadLetterStore
from connectors.publisher import Publisher, WirePublisher
from connectors.reading import Rejection, parse_message
from core.settings import DeadLetterSettings, MqttSettings

__all__ = ["Commit", "ReadingSink"]

log = logging.getLogger(__name__)

MAX_MESSAGE_READINGS = 5000
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Commit:
    """What one ``commit`` made durable: readings acknowledged, messages, refusals stored."""

    readings: int
    messages: int
    refused: int


class ReadingSink:
    """Validated readings out through one QoS 1 publisher; see the module docstring.

    Not thread-safe by itself: callers that share one sink hold ``lock`` around
    their ``offer`` calls and the ``commit`` that follows.

    ``broker``: the ``[mqtt]`` section (the publisher's broker, and ``max_payload_bytes``);
    ``dead_letter`` and ``dead_letter_path``: the ``[dead_letter]`` section and where its
    store is (``Settings.dead_letter_path``), unless ``dead_letters`` is given.
    """

    def __init__(
        self,
        broker: MqttSettings,
        *,
        dead_letter: DeadLetterSettings,
        dead_letter_path: Path,
        source: str,
        client_id: str | None = None,
        publisher: Publisher | None = None,
        dead_letters: DeadLetterStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.source = source
        self.publisher = publisher or WirePublisher(
            broker, client_id=client_id or f"sitetwin-{source}-{time.time_ns() % 10**9}",
            max_inflight=1000)
        self._own_store = dead_letters is None
        self.dead_letters = dead_letters or DeadLetterStore(
            dead_letter_path, max_payload_bytes=dead_letter.max_payload_bytes)
        self.clock = clock
        self.lock = threading.RLock()
        self.max_message_bytes = min(MAX_MESSAGE_BYTES, broker.max_payload_bytes // 2)
        self._pending: dict[str, list[bytes]] = {}
        self._pending_readings = 0
        self._letters: list[DeadLetter] = []
        self._unflushed = 0  # published readings whose acknowledgements are awaited
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self.connected = False

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self, timeout_s: float | None = None) -> None:
        """Connect the publisher (``PublishError`` if no broker answers)."""
        self.publisher.connect(timeout_s)
        self.connected = True

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            if self.connected:
                self.publisher.close(timeout_s)
        finally:
            if self._own_store:
                self.dead_letters.close()

    # -- readings -----------------------------------------------------------------------

    def offer(self, site_id: str, stream: str, doc: dict, *, raw: bytes | None = None,
              now: float | None = None) -> Rejection | None:
        """Queue one reading if the collector would accept it; else queue its dead letter.

        ``raw`` is what the producer sent (a line of line protocol, a file's name),
        kept with a refusal instead of the document built from it.
        """
        topic = f"sites/{site_id}/{stream}"
        payload = orjson.dumps(doc)
        parsed = parse_message(topic, payload, self.clock() if now is None else now,
                               max_payload_bytes=self.broker.max_payload_bytes)
        if parsed.rejection is not None:
            self.refuse(parsed.rejection, raw if raw is not None else payload, topic=topic)
            return parsed.rejection
        self._pending.setdefault(topic, []).append(payload)
        self._pending_readings += 1
        return None

    def refuse(self, rejection: Rejection, payload: bytes, *, topic: str | None = None) -> None:
        """Queue a dead letter (written at the next successful ``commit``)."""
        self.refused[rejection.reason] += 1
        self._letters.append(DeadLetter(reason=rejection.reason, detail=rejection.detail,
                                        payload=payload, topic=topic, source=self.source,
                                        received_at=self.clock()))

    @property
    def pending(self) -> int:
        """Readings offered and not yet published."""
        return self._pending_readings

    def _messages(self):
        cap = self.max_message_bytes
        for topic, items in self._pending.items():
            batch: list[bytes] = []
            size = 2
            for item in items:
                if batch and (len(batch) >= MAX_MESSAGE_READINGS or size + len(item) + 1 > cap):
                    yield topic, b"[" + b",".join(batch) + b"]", len(batch)
                    batch, size = [], 2
                batch.append(item)
                size += len(item) + 1
            if batch:
                yield topic, b"[" + b",".join(batch) + b"]", len(batch)

    def commit(self, timeout_s: float = 60.0) -> Commit:
        """Publish what was offered and wait for the broker's acknowledgements.

        Raises ``PublishError`` if they do not all come within ``timeout_s``; the
        messages stay with the publisher (resent after a reconnect): call
        ``commit`` again, do not offer them again.
        """
        readings = messages = 0
        for topic, payload, n in self._messages():
            self.publisher.publish(topic, payload)
            readings += n
            messages += 1
        self._pending.clear()
        self._pending_readings = 0
        self._unflushed += readings
        self.publisher.flush(timeout_s)
        done, self._unflushed = self._unflushed, 0
        self.accepted += done
        letters, self._letters = self._letters, []
        if letters:
            self.dead_letters.add_many(letters)
        return Commit(readings=done, messages=messages, refused=len(letters))
