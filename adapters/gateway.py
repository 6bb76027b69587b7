"""The device gateway: poll Modbus and DL/T 645 devices on a schedule, buffer on disk, publish.

Three kinds of thread, so that nothing waits on anything slower than itself:

- **the scheduler** (``run``'s thread) hands every device that is due to a pool
  of ``workers`` threads - never a device whose previous poll is still going -
  and every ``flush_interval`` moves the polled readings to the buffer;
- **pollers** (the pool) each read one device: one attempt plus ``retries``
  (DL/T 645 meters behind one serial-to-TCP converter share its connection and
  are read one at a time: an RS-485 bus is half-duplex),
  each bounded by the device's ``timeout``.  A dead or slow device holds one
  worker for at most ``(retries + 1) x timeout`` and delays no other device
  while fewer devices than ``workers`` are failing at once; after ``n`` failed
  polls in a row its next poll waits ``interval x 2^(n-1)`` (at most
  ``backoff_max``), so dead devices stop crowding the pool;
- **the publisher** drains the buffer oldest first: every reading of a batch is
  offered to the ``ReadingSink`` (the collector's validation; refusals
  dead-lettered with ``source`` ``gateway``) and the batch file is deleted only
  once the broker acknowledged all of it.  While the broker is away the same
  batch is waited on (the MQTT publisher resends its unacknowledged messages
  after reconnecting) and new batches pile up on disk: polling goes on and
  nothing is lost; nothing is sent twice except after a crash between the
  acknowledgement and the deletion, and then as identical points (same
  ``ts``), which InfluxDB overwrites in place.

The buffer is ``connectors.spool.Spool`` (one fsynced file per batch, atomic
rename): a reading polled is on disk within ``flush_interval`` and survives a
restart.  A reading's ``ts`` is when its poll finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from adapters.device import Device, Profile
from adapters.dlt645 import Dlt645Bus, Dlt645Reader
from adapters.errors import DeviceError
from adapters.modbus import ModbusReader
from adapters.sink import ReadingSink
from connectors.errors import PublishError, SpoolError
from connectors.spool import Spool
from core.settings import GatewayAdapterSettings

__all__ = ["DeviceStatus", "Gateway"]

log = logging.getLogger(__name__)


@dataclass
class DeviceStatus:
    """What the gateway knows about one device."""

    device: Device
    profile: Profile
    reader: Callable[[], dict]
    interval_s: float
    retries: int
    next_due: float = 0.0
    failures: int = 0  # failed polls in a row
    polls_ok: int = 0
    polls_failed: int = 0
    attempts_failed: int = 0
    last_error: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    busy: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"device": self.device.name, "site_id": self.device.site_id,
                "polls_ok": self.polls_ok, "polls_failed": self.polls_failed,
                "attempts_failed": self.attempts_failed, "failures_in_a_row": self.failures,
                "errors": dict(self.errors), "last_error": self.last_error}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Gateway:
    """Polls devices and publishes their readings; see the module docstring."""

    def __init__(
        self,
        cfg: GatewayAdapterSettings,
        sink: ReadingSink,
        devices: list[tuple[Device, Profile]],
        *,
        state_dir: Path,
        buffer_max_bytes: int,
        buffer_dir: str | Path | None = None,
        reader_factory: Callable[[Device, Profile, float], Callable[[], dict]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``cfg``: the ``[adapters.gateway]`` section; the buffer goes to ``buffer_dir``, else
        the section's, else ``state_dir/gateway-buffer``, and holds ``buffer_max_bytes``
        (``[spool] max_bytes``)."""
        self.sink = sink
        self.clock = clock
        self.flush_interval_s = cfg.flush_interval
        self.backoff_max_s = cfg.backoff_max
        self.commit_timeout_s = 5.0
        path = Path(buffer_dir or cfg.buffer_dir or state_dir / "gateway-buffer")
        self.buffer = Spool(path.expanduser(), max_bytes=buffer_max_bytes, fsync=cfg.fsync)
        self._readers: list[ModbusReader | Dlt645Reader] = []

        buses: dict[tuple[str, int], Dlt645Bus] = {}

        def connect(device: Device, profile: Profile, timeout_s: float) -> Callable[[], dict]:
            reader: ModbusReader | Dlt645Reader
            if device.protocol == "dlt645-tcp":
                bus = buses.setdefault((device.host, device.port),
                                       Dlt645Bus(device.host, device.port))
                reader = Dlt645Reader(device, profile, timeout_s=timeout_s, bus=bus)
            else:
                reader = ModbusReader(device, profile, timeout_s=timeout_s)
            self._readers.append(reader)
            return reader.read

        make = reader_factory or connect
        self.devices = [
            DeviceStatus(device=d, profile=p,
                         reader=make(d, p, d.timeout if d.timeout is not None else cfg.timeout),
                         interval_s=d.interval if d.interval is not None else cfg.interval,
                         retries=d.retries if d.retries is not None else cfg.retries)
            for d, p in devices
        ]
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="poll")
        self._lock = threading.Lock()
        self._polled: list[tuple[str, str, dict]] = []
        self._inflight: Path | None = None
        self.readings_polled = 0
        self.readings_published = 0
        self.readings_refused = 0

    # -- polling --------------------------------------------------------------------------

    def _poll(self, status: DeviceStatus) -> None:
        """One poll of one device (in a worker thread)."""
        device = status.device
        error: DeviceError | None = None
        for _attempt in range(status.retries + 1):
            try:
                fields = status.reader()
            except DeviceError as exc:
                error = exc
                status.attempts_failed += 1
                continue
            finished = self.clock()
            doc: dict = {"ts": _iso(finished), **fields}
            if status.profile.stream == "power":
                doc["meter_id"] = device.meter_id
            with self._lock:
                self._polled.append((device.site_id, status.profile.stream, doc))
                self.readings_polled += 1
            status.polls_ok += 1
            status.failures = 0
            status.next_due += status.interval_s
            if status.next_due <= finished:  # behind (a slow poll, a late start): skip slots
                status.next_due = finished + status.interval_s
            status.busy = False
            return
        assert error is not None
        status.polls_failed += 1
        status.failures += 1
        status.errors[error.reason] = status.errors.get(error.reason, 0) + 1
        status.last_error = str(error)
        wait = min(status.interval_s * 2 ** (status.failures - 1),
                   max(self.backoff_max_s, status.interval_s))
        status.next_due = self.clock() + wait
        log.warning("device %s (%s:%d unit %d): %s; %d failed polls in a row, next in %.1fs",
                    device.name, device.host, device.port, device.unit, error, status.failures,
                    wait)
        status.busy = False

    def _submit_due(self, now: float) -> list[Future]:
        out = []
        for status in self.devices:
            if not status.busy and status.next_due <= now:
                status.busy = True
                out.append(self._pool.submit(self._poll, status))
        return out

    # -- buffer and publishing ------------------------------------------------------------

    def flush_to_buffer(self) -> int:
        """Move the polled readings to the on-disk buffer as one batch; returns how many."""
        with self._lock:
            polled, self._polled = self._polled, []
        if not polled:
            return 0
        body = b"\n".join(orjson.dumps(item) for item in polled)
        try:
            self.buffer.put(body)
        except SpoolError as exc:
            with self._lock:  # keep them in memory and try again at the next flush
                self._polled[:0] = polled
            log.error("cannot buffer %d readings: %s", len(polled), exc)
            return 0
        return len(polled)

    def publish_buffer(self, stop: threading.Event | None = None) -> int:
        """Publish buffered batches, oldest first, until the buffer is empty, the broker
        does not acknowledge within the commit timeout, or ``stop`` is set."""
        sent = 0
        sink = self.sink
        while stop is None or not stop.is_set():
            oldest = self.buffer.oldest()
            if oldest is None:
                break
            path, body = oldest
            with sink.lock:
                if self._inflight != path:
                    for line in body.split(b"\n"):
                        site_id, stream, doc = orjson.loads(line)
                        if sink.offer(site_id, stream, doc) is not None:
                            self.readings_refused += 1
                    self._inflight = path
                try:
                    done = sink.commit(self.commit_timeout_s)
                except PublishError as exc:
                    log.warning("buffer: %s; %d batches (%d bytes) waiting", exc,
                                self.buffer.batches, self.buffer.bytes)
                    break
            self.buffer.remove(path)
            self._inflight = None
            self.readings_published += done.readings
            sent += done.readings
        return sent

    def _publish_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.publish_buffer(stop) == 0:
                with self.sink.lock:
                    self.sink.publisher.idle(0.2)  # keep-alive, late acknowledgements

    # -- running --------------------------------------------------------------------------

    def poll_once(self) -> None:
        """Poll every device once (in parallel), buffer and publish; for ``--once`` and tests."""
        now = self.clock()
        for status in self.devices:
            status.next_due = min(status.next_due, now)
        for future in self._submit_due(now):
            future.result()
        self.flush_to_buffer()
        self.publish_buffer()

    def run(self, stop: threading.Event) -> None:
        """Poll on schedule until ``stop`` is set; then buffer what was polled and publish
        what the broker takes within the commit timeout (the rest stays on disk)."""
        publisher = threading.Thread(target=self._publish_loop, args=(stop,), name="gw-publish",
                                     daemon=True)
        publisher.start()
        next_flush = time.monotonic() + self.flush_interval_s
        try:
            while not stop.is_set():
                self._submit_due(self.clock())
                if time.monotonic() >= next_flush:
                    self.flush_to_buffer()
                    next_flush = time.monotonic() + self.flush_interval_s
                stop.wait(0.05)
        finally:
            self._pool.shutdown(wait=True)
            self.flush_to_buffer()
            # A publisher blocked on an absent broker is left behind: the buffer keeps its
            # batches for the next start.
            publisher.join(self.commit_timeout_s + 5)
            if not publisher.is_alive():
                self.publish_buffer()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for reader in self._readers:
            reader.close()

    def status(self) -> dict[str, object]:
        return {"readings_polled": self.readings_polled,
                "readings_published": self.readings_published,
                "readings_refused": self.readings_refused,
                "buffered_batches": self.buffer.batches,
                "devices": [s.as_dict() for s in self.devices]}
